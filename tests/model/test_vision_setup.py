"""The original's model-side training names, as thin wrappers: initialize_vision_modules, get_vision_tower,
initialize_vision_tokenizer, prepare_inputs_labels_for_multimodal."""

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from share4v.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from share4v.model import Share4VConfig, Share4VLlamaForCausalLM
from share4v.model.vision_setup import load_projector_weights


@pytest.fixture
def attached(world):
    """A plain Llama checkpoint turned multimodal the way third-party training code does it."""
    model = Share4VLlamaForCausalLM.from_pretrained(world["llm"], config=Share4VConfig.from_pretrained(world["llm"]))
    assert model.get_model().get_vision_tower() is None
    model_args = SimpleNamespace(
        vision_tower=str(world["tower"]), mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", pretrain_mm_mlp_adapter=str(world["projector"]),
    )  # fmt: skip
    model.get_model().initialize_vision_modules(model_args)
    return model


def test_initialize_vision_modules(attached, world):
    tower = attached.get_model().get_vision_tower()
    assert (
        tower is attached.get_vision_tower()
        and tower.is_loaded
        and not any(p.requires_grad for p in tower.parameters())
    )
    config = attached.config
    assert (config.mm_vision_tower, config.mm_hidden_size, config.mm_projector_type) == (
        str(world["tower"]), 32, "mlp2x_gelu"
    )  # fmt: skip
    expected = load_file(world["projector"])
    for name, param in attached.get_model().mm_projector.named_parameters():
        assert torch.equal(param, expected[f"model.mm_projector.{name}"]) and param.requires_grad


def test_projector_file_that_does_not_fit(attached, tmp_path):
    from safetensors.torch import save_file

    save_file({"model.mm_projector.0.weight": torch.zeros(3, 3)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="do not fit the projector"):
        load_projector_weights(attached.get_model().mm_projector, tmp_path / "bad.safetensors")


def test_prepare_inputs_labels_for_multimodal(attached):
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5, 6, 7], [1, IMAGE_TOKEN_INDEX, 8, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, 8, 9, IGNORE_INDEX]])
    images = torch.randn(2, 3, 56, 56)
    input_ids, attention_mask, past, embeds, new_labels = attached.prepare_inputs_labels_for_multimodal(
        ids, mask, None, labels, images
    )
    merged = attached.prepare_multimodal_inputs(ids, images, mask, labels)
    assert input_ids is None and past is None
    assert torch.equal(embeds, merged.inputs_embeds) and embeds.shape == (2, 4 + 16, 64)
    assert torch.equal(attention_mask, merged.attention_mask) and torch.equal(new_labels, merged.labels)
    assert attached.prepare_inputs_labels_for_multimodal(ids, mask, None, labels, None)[3] is None


def test_initialize_vision_tokenizer(attached, world):
    tokenizer = AutoTokenizer.from_pretrained(world["llm"])
    old = attached.get_input_embeddings().weight.detach().clone()
    model_args = SimpleNamespace(
        mm_use_im_patch_token=True, mm_use_im_start_end=True, tune_mm_mlp_adapter=True, pretrain_mm_mlp_adapter=None
    )
    attached.initialize_vision_tokenizer(model_args, tokenizer)
    weight = attached.get_input_embeddings().weight
    assert weight.shape[0] == len(tokenizer) == old.shape[0] + 3
    assert tokenizer.convert_tokens_to_ids("<im_start>") >= old.shape[0]
    assert torch.allclose(weight[-3:], old.mean(dim=0, keepdim=True).expand(3, -1))
    assert weight.requires_grad and not attached.get_output_embeddings().weight.requires_grad
