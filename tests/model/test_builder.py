"""load_pretrained_model on every kind of checkpoint folder, decided by files, not names."""

import importlib.util
import json
import shutil

import pytest
import torch

from share4v.mm_utils import process_images, tokenizer_image_token
from share4v.model.builder import load_pretrained_model
from share4v.model.multimodal_encoder.builder import VisionTowerNotFoundError
from share4v.testing.make_tiny_checkpoint import TinySpec, make_tiny_checkpoint
from tests.helpers import plain_llama_like, random_image

HUB_TOWER = "Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12"


def _logits(loaded, prompt="USER: <image>\nWhat? ASSISTANT:"):
    tokenizer, model, processor, _ = loaded
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None]
    with torch.no_grad():
        return model(ids, images=process_images([random_image(7)], processor, model.config)).logits


def _load(path, base=None, **kwargs):
    return load_pretrained_model(str(path), str(base) if base else None, None, device="cpu", **kwargs)


def test_full_checkpoint(tiny):
    tokenizer, model, processor, context_len = tiny
    assert type(model).__name__ == "Share4VLlamaForCausalLM" and model.dtype == torch.float32
    assert processor is not None and context_len == 2048
    assert len(tokenizer) == model.config.vocab_size == 512  # no image tokens added (released config)
    assert not model.training


@pytest.mark.parametrize(("weight_format", "shards"), [("safetensors", 3), ("bin", 1), ("bin", 2)])
def test_sharded_and_pickled_weights_load_the_same(tiny, tmp_path, weight_format, shards):
    path = make_tiny_checkpoint(tmp_path / "x", weight_format=weight_format, shards=shards)
    index = list(path.glob("*.index.json"))
    assert len(index) == (1 if shards > 1 else 0)
    assert torch.equal(_logits(_load(path)), _logits(tiny))


def test_released_layout_with_hub_tower_name(tiny_ckpt, tiny, tmp_path):
    """A folder named by nothing, a config naming its tower by hub id, the tower copied elsewhere."""
    folder = tmp_path / "a1b2c3"
    shutil.copytree(tiny_ckpt, folder, ignore=shutil.ignore_patterns("vision_tower"))
    shutil.copytree(tiny_ckpt / "vision_tower", tmp_path / "my-vit")
    config = json.loads((folder / "config.json").read_text())
    config["mm_vision_tower"] = HUB_TOWER
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(VisionTowerNotFoundError, match=rf"vision tower '{HUB_TOWER}' .* --vision-tower") as info:
        _load(folder)
    assert "\n" not in str(info.value)
    loaded = _load(folder, vision_tower=str(tmp_path / "my-vit"))
    assert torch.equal(_logits(loaded), _logits(tiny))


def test_old_llama_typed_multimodal_config(tiny_ckpt, tiny, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(tiny_ckpt, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"], config["architectures"] = "llama", ["LlamaForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = _load(folder)
    assert loaded[2] is not None and torch.equal(_logits(loaded), _logits(tiny))


@pytest.fixture
def base_llm(tiny, tmp_path):
    """A Vicuna-like text-only base: the tiny model's LLM weights under a plain llama config."""
    tokenizer, model, _, _ = tiny
    llama = plain_llama_like(model)
    llama.save_pretrained(tmp_path / "vicuna")
    tokenizer.save_pretrained(tmp_path / "vicuna")
    return tmp_path / "vicuna"


def test_projector_only_checkpoint(tiny_ckpt, tiny, base_llm, tmp_path):
    folder = tmp_path / "stage1-projector"
    folder.mkdir()
    shutil.copy(tiny_ckpt / "config.json", folder)
    shutil.copytree(tiny_ckpt / "vision_tower", folder / "vision_tower")
    projector = {k: v for k, v in tiny[1].state_dict().items() if "mm_projector" in k}
    torch.save(projector, folder / "mm_projector.bin")
    assert torch.equal(_logits(_load(folder, base_llm)), _logits(tiny))


def test_text_only_checkpoint(base_llm):
    _tokenizer, model, processor, context_len = _load(base_llm)
    assert processor is None and type(model).__name__ == "LlamaForCausalLM" and context_len == 2048


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft not installed")
def test_lora_checkpoint_is_merged(tiny_ckpt, tiny, base_llm, tmp_path):
    from peft import LoraConfig, get_peft_model

    _, reference, _, _ = _load(tiny_ckpt)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in reference.model.mm_projector.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # "trained" projector
    peft_model = get_peft_model(
        reference, LoraConfig(r=4, lora_alpha=8, target_modules=r"model\.layers\.\d+\.self_attn\.[qv]_proj")
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    folder = tmp_path / "share4v-lora"
    peft_model.save_pretrained(folder)
    shutil.copy(tiny_ckpt / "config.json", folder)
    shutil.copytree(tiny_ckpt / "vision_tower", folder / "vision_tower")
    non_lora = {f"base_model.model.{k}": v for k, v in reference.state_dict().items() if "mm_projector" in k}
    torch.save(non_lora, folder / "non_lora_trainables.bin")
    expected = _logits((tiny[0], peft_model.merge_and_unload(), tiny[2], 0))

    with pytest.raises(ValueError, match="is a LoRA adapter .* pass model_base"):
        _load(folder)
    loaded = _load(folder, base_llm)
    assert type(loaded[1]).__name__ == "Share4VLlamaForCausalLM"
    assert torch.allclose(_logits(loaded), expected, atol=1e-5)
    assert not torch.allclose(_logits(loaded), _logits(tiny), atol=1e-3)  # the adapter did change the model
    # the config a QLoRA run wrote before share4v left its loading out: the base's weights load as they are
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    (folder / "config.json").write_text(json.dumps(config))
    assert torch.allclose(_logits(_load(folder, base_llm)), expected, atol=1e-5)


def test_clear_errors(tiny_ckpt, tmp_path, base_llm):
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        (tmp_path / "empty").mkdir()
        _load(tmp_path / "empty")
    with pytest.raises(ValueError, match="holds neither a LoRA adapter"):
        _load(tiny_ckpt, base_llm)
    bad = tmp_path / "bad"
    shutil.copytree(tiny_ckpt, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "mm_projector_type": "mlp2x_relu"}))
    with pytest.raises(ValueError, match=r"bad/config\.json: unknown mm_projector_type 'mlp2x_relu'"):
        _load(bad)
    with pytest.raises(ValueError, match="is neither a LoRA adapter nor a projector-only one"):
        _load(base_llm, base_llm)
    towerless = tmp_path / "towerless"
    shutil.copytree(tiny_ckpt, towerless)
    (towerless / "config.json").write_text(json.dumps({**config, "mm_vision_tower": None}))
    _, model, processor, _ = _load(towerless)
    assert processor is None and model.get_vision_tower() is None  # a share4v LM without a tower is text-only
    wide = make_tiny_checkpoint(tmp_path / "wide", TinySpec(vision_hidden_size=48))
    with pytest.raises(ValueError, match=r"gives 48-wide features but .* mm_hidden_size=32: wrong --vision-tower"):
        _load(tiny_ckpt, vision_tower=str(wide / "vision_tower"))
    with pytest.raises(TypeError, match="unexpected arguments: \\['colour'\\]"):
        _load(tiny_ckpt, colour="red")


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
@pytest.mark.parametrize("flag", ["load_8bit", "load_4bit"])
def test_quantized_loading_without_bitsandbytes(tiny_ckpt, flag):
    with pytest.raises(ImportError, match=r"need bitsandbytes: pip install 'share4v\[quant\]'"):
        load_pretrained_model(str(tiny_ckpt), None, None, device="cpu", **{flag: True})


def test_quantization_converts_the_decoder_layers_only(tiny):
    # the rule transformers' bitsandbytes loading applies to each linear layer's name (no GPU needed to ask it);
    # the real loads ran on a GPU: benchmarks/check_quantized.py
    from transformers.quantizers.quantizers_utils import should_convert_module

    from share4v.model.language_model.share4v_llama import UNQUANTIZED_MODULES

    _, model, _, _ = tiny
    linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    assert any(".mm_projector." in name for name in linears) and "lm_head" in linears
    assert any(name.startswith("model.vision_tower.") for name in linears)
    converted = [name for name in linears if should_convert_module(name, UNQUANTIZED_MODULES)]
    assert converted == [name for name in linears if name.startswith("model.layers.")]
    assert len(converted) == 7 * model.config.num_hidden_layers
