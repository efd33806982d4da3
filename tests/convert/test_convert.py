"""Interop with the transformers llava format: exact logits and greedy text in transformers' own Llava, the same
token ids through the exported chat template, bit-exact round trips, and clear errors with nothing half-written."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from share4v.constants import IMAGE_TOKEN_INDEX
from share4v.conversation import get_conv_template
from share4v.convert import folders, from_hf, to_hf
from share4v.convert.folders import staged_folder
from share4v.convert.from_hf import import_from_hf
from share4v.convert.to_hf import export_to_hf
from share4v.mm_utils import process_images, tokenizer_image_token
from share4v.model.builder import load_pretrained_model
from tests.helpers import file_modes, folder_modes, random_image, umask


@pytest.fixture(scope="module")
def exported(tiny_ckpt, tmp_path_factory):
    return export_to_hf(tiny_ckpt, tmp_path_factory.mktemp("hf") / "share4v-tiny-hf")


@pytest.fixture(scope="module")
def hf_model(exported):
    return LlavaForConditionalGeneration.from_pretrained(exported, dtype=torch.float32).eval()


def collapse_image_tokens(ids, image_token_id):
    """llava's run of image tokens → share4v's single -200 placeholder."""
    out = []
    for token in ids:
        if token == image_token_id:
            if not out or out[-1] != IMAGE_TOKEN_INDEX:
                out.append(IMAGE_TOKEN_INDEX)
        else:
            out.append(token)
    return out


def _attach(content, images):
    """Chat content parts with the PIL images in the image parts."""
    images = iter(images)
    return [{"type": "image", "image": next(images)} if part["type"] == "image" else part for part in content]


def our_prompt(turns):
    conv = get_conv_template("vicuna_v1")
    for i, turn in enumerate(turns):
        conv.append_message(conv.roles[i % 2], turn)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


@pytest.mark.parametrize(
    "turns",
    [
        ["<image>\nWhat is in the picture?"],
        ["<image>\nWhat is in the picture?", "A red circle 12.", "And the colour of the sky?"],
        ["<image>\n<image>\nCompare the two."],
    ],
    ids=["one-turn", "two-turns", "two-images"],
)
def test_chat_template_gives_our_token_ids(exported, tiny, turns):
    processor = AutoProcessor.from_pretrained(exported, backend="pil")
    messages = []
    for i, turn in enumerate(turns):
        images = turn.count("<image>")
        text = turn.replace("<image>\n", "")
        content = [{"type": "image"}] * images + [{"type": "text", "text": text}]
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": content})
    images = [random_image(i) for i in range(turns[0].count("<image>"))]
    ours = tokenizer_image_token(our_prompt(turns), tiny[0])
    image_token_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    # as vLLM does: render, then tokenize without adding special tokens (the template starts with <s>)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    hf_ids = processor(text=text, images=images, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    assert hf_ids.tolist().count(image_token_id) == 16 * len(images)
    assert collapse_image_tokens(hf_ids.tolist(), image_token_id) == ours
    # as transformers' apply_chat_template(tokenize=True) does
    with_images = [{**m, "content": _attach(m["content"], images)} for m in messages]
    tokenized = processor.apply_chat_template(with_images, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = tokenized["input_ids"][0] if isinstance(tokenized["input_ids"][0], list) else tokenized["input_ids"]
    assert collapse_image_tokens(list(ids), image_token_id) == ours


def test_transformers_llava_gives_our_logits_and_greedy_text(exported, hf_model, tiny):
    tokenizer, model, image_processor, _ = tiny
    processor = AutoProcessor.from_pretrained(exported, backend="pil")
    image = random_image(5, (90, 50))
    pixels = process_images([image], image_processor, model.config)
    assert torch.equal(processor.image_processor(images=[image], return_tensors="pt")["pixel_values"], pixels)
    ours_ids = tokenizer_image_token(our_prompt(["<image>\nDescribe the image."]), tokenizer, return_tensors="pt")[None]
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}],
        add_generation_prompt=True,
    )
    encoding = processor(text=text, images=[image], add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        ours = model(ours_ids, images=pixels).logits
        theirs = hf_model(**encoding).logits
    vocab = ours.shape[-1]
    assert theirs.shape[:2] == ours.shape[:2] and theirs.shape[-1] == vocab + 1
    assert torch.allclose(theirs[..., :vocab], ours, atol=1e-5)
    assert torch.equal(theirs[..., vocab], theirs[..., tokenizer.unk_token_id])  # <image>'s logit ties with <unk>
    new_ours = model.generate(ours_ids, images=pixels, max_new_tokens=12, do_sample=False)
    new_theirs = hf_model.generate(**encoding, max_new_tokens=12, do_sample=False)[:, encoding["input_ids"].shape[1] :]
    assert new_ours.tolist() == new_theirs.tolist()


def test_round_trip_is_bit_exact(exported, tiny_ckpt, tmp_path):
    back = import_from_hf(exported, tmp_path / "back")
    for name in ("model.safetensors", "vision_tower/model.safetensors"):
        original, again = load_file(tiny_ckpt / name), load_file(back / name)
        assert original.keys() == again.keys()
        assert all(torch.equal(original[k], again[k]) and original[k].dtype == again[k].dtype for k in original)
    config, original = (
        json.loads((back / "config.json").read_text()),
        json.loads((tiny_ckpt / "config.json").read_text()),
    )
    for key in ("mm_projector_type", "mm_vision_select_layer", "mm_vision_select_feature", "image_aspect_ratio",
                "mm_hidden_size", "vocab_size", "hidden_size", "num_hidden_layers"):  # fmt: skip
        assert config[key] == original[key], key
    text = "USER: hello <image> there</s> 12 ünï"
    assert (
        AutoTokenizer.from_pretrained(back)(text).input_ids == AutoTokenizer.from_pretrained(tiny_ckpt)(text).input_ids
    )
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 40, 41, 42]])
    pixels = torch.randn(1, 3, 56, 56)
    _, a, _, _ = load_pretrained_model(str(tiny_ckpt), None, None, device="cpu")
    _, b, _, _ = load_pretrained_model(str(back), None, None, device="cpu")
    assert torch.equal(a(ids, images=pixels).logits, b(ids, images=pixels).logits)


@pytest.fixture(scope="module")
def foreign_llava(tiny, tmp_path_factory):
    """A llava-hf folder made by transformers itself (not by to_hf): square images, <image> in the vocabulary."""
    folder = tmp_path_factory.mktemp("llava-hf") / "tiny-llava-hf"
    tokenizer = AutoTokenizer.from_pretrained(tiny[0].name_or_path)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=56, patch_size=14, projection_dim=32)  # fmt: skip
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, initializer_range=0.1)  # fmt: skip
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=len(tokenizer) - 1,
                         vision_feature_layer=-2, image_seq_length=16)  # fmt: skip
    torch.manual_seed(3)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)  # fmt: skip
    processor.save_pretrained(folder)
    return folder


def test_a_foreign_llava_checkpoint_imports_with_its_logits(foreign_llava, tmp_path):
    imported = import_from_hf(foreign_llava, tmp_path / "imported")
    tokenizer, model, image_processor, _ = load_pretrained_model(str(imported), None, None, device="cpu")
    assert model.config.image_aspect_ratio == "square" and model.config.mm_vision_select_layer == -2
    llava = LlavaForConditionalGeneration.from_pretrained(foreign_llava, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(foreign_llava, backend="pil")
    image = random_image(7, (70, 50))
    encoding = processor(text="USER: <image>\nWhat is it? ASSISTANT:", images=[image], return_tensors="pt")
    pixels = process_images([image], image_processor, model.config)
    assert torch.equal(pixels, encoding["pixel_values"])
    ids = torch.tensor([collapse_image_tokens(encoding["input_ids"][0].tolist(), llava.config.image_token_id)])
    with torch.no_grad():
        assert torch.allclose(model(ids, images=pixels).logits, llava(**encoding).logits, atol=1e-5)
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings  # <image> kept, nothing resized


def test_bad_inputs_name_the_problem_and_leave_nothing(tiny_ckpt, exported, tmp_path):
    dst = tmp_path / "out"
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="names no vision tower"):
        export_to_hf(tmp_path / "bert", dst)
    with pytest.raises(ValueError, match="'bert'.*not a transformers llava checkpoint"):
        import_from_hf(tmp_path / "bert", dst)
    with pytest.raises(ValueError, match="original LLaVA/share4v checkpoint: use share4v.convert.to_hf"):
        import_from_hf(tiny_ckpt, dst)
    with pytest.raises(FileExistsError, match="overlaps the input"):
        export_to_hf(tiny_ckpt, tiny_ckpt, overwrite=True)
    with pytest.raises(FileExistsError, match="overlaps the input"):
        export_to_hf(tiny_ckpt, tiny_ckpt / "vision_tower", overwrite=True)
    assert (tiny_ckpt / "vision_tower" / "model.safetensors").is_file() and (tiny_ckpt / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="already in the transformers llava format"):
        export_to_hf(exported, dst)
    moved = tmp_path / "no-tower"
    shutil.copytree(tiny_ckpt, moved, ignore=shutil.ignore_patterns("vision_tower"))
    with pytest.raises(FileNotFoundError, match="vision tower 'vision_tower'"):
        export_to_hf(moved, dst)
    other_tower = tmp_path / "wide-tower"
    shutil.copytree(tiny_ckpt / "vision_tower", other_tower)
    config = json.loads((other_tower / "config.json").read_text())
    (other_tower / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
    with pytest.raises(ValueError, match="48 wide but the checkpoint's projector takes mm_hidden_size=32"):
        export_to_hf(tiny_ckpt, dst, vision_tower=str(other_tower))
    start_end = tmp_path / "start-end"
    shutil.copytree(tiny_ckpt, start_end)
    config = json.loads((start_end / "config.json").read_text())
    (start_end / "config.json").write_text(json.dumps({**config, "mm_use_im_start_end": True}))
    with pytest.raises(ValueError, match="<im_start>/<im_end>, which llava cannot"):
        export_to_hf(start_end, dst)
    linear = tmp_path / "linear"
    shutil.copytree(tiny_ckpt, linear)
    config = json.loads((linear / "config.json").read_text())
    (linear / "config.json").write_text(json.dumps({**config, "mm_projector_type": "linear"}))
    with pytest.raises(ValueError, match="'linear' cannot be written in the llava format"):
        export_to_hf(linear, dst)
    assert not dst.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failure_while_writing_leaves_nothing(tiny_ckpt, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(to_hf, "write_safetensors_shards", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_to_hf(tiny_ckpt, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a checkpoint"):
        export_to_hf(tiny_ckpt, tmp_path / "keep", overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        export_to_hf(tiny_ckpt, tmp_path / "other")
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"


def test_clis(tiny_ckpt, tmp_path):
    for module in (to_hf, from_hf):
        result = subprocess.run([sys.executable, "-m", module.__name__, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage:" in result.stdout
    ok = subprocess.run([sys.executable, "-m", "share4v.convert.to_hf", str(tiny_ckpt), str(tmp_path / "hf")],
                        capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0 and (tmp_path / "hf" / "config.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "share4v.convert.from_hf", str(tiny_ckpt), str(tmp_path / "x")],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "not a transformers llava" in bad.stderr


def test_a_whole_clip_model_as_tower_exports_its_vision_side_only(tiny_ckpt, tmp_path):
    from transformers import CLIPConfig, CLIPModel

    vision = json.loads((tiny_ckpt / "vision_tower" / "config.json").read_text())
    clip = CLIPModel(CLIPConfig(vision_config=vision, text_config={"hidden_size": 16, "intermediate_size": 32,
                                "num_hidden_layers": 1, "num_attention_heads": 2}, projection_dim=8))  # fmt: skip
    tower_state = load_file(tiny_ckpt / "vision_tower" / "model.safetensors")
    clip.vision_model.load_state_dict({k.removeprefix("vision_model."): v for k, v in tower_state.items()})
    clip.save_pretrained(tmp_path / "clip")
    shutil.copy(tiny_ckpt / "vision_tower" / "preprocessor_config.json", tmp_path / "clip")
    exported = export_to_hf(tiny_ckpt, tmp_path / "hf", vision_tower=str(tmp_path / "clip"))
    names = set(load_file(exported / "model.safetensors"))
    assert not any("text_model" in n or "projection" in n or "logit_scale" in n for n in names)
    _, info = LlavaForConditionalGeneration.from_pretrained(exported, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]


def test_files_older_readers_need(exported):
    config = json.loads((exported / "config.json").read_text())
    assert config["torch_dtype"] == config["dtype"] == "float32"
    tokenizer_config = json.loads((exported / "tokenizer_config.json").read_text())
    assert tokenizer_config["extra_special_tokens"] == {"image_token": "<image>"}
    assert (exported / "preprocessor_config.json").is_file() and (exported / "chat_template.jinja").is_file()
    assert AutoTokenizer.from_pretrained(exported).image_token == "<image>"


def test_import_with_another_aspect_ratio(exported, tmp_path):
    back = import_from_hf(exported, tmp_path / "square", image_aspect_ratio="square")
    assert json.loads((back / "config.json").read_text())["image_aspect_ratio"] == "square"


def test_checkpoints_without_the_projector_or_lm_head_are_refused(tiny_ckpt, exported, tmp_path):
    """A config that names a tower over weights of another kind (a text-only LLM) once exported a llava folder whose
    projector transformers then initialised at random."""
    no_projector = _copy_without(tiny_ckpt, tmp_path / "no-projector", "mm_projector")
    with pytest.raises(ValueError, match=r"lacks model\.mm_projector\.0\.weight, model\.mm_projector\.2\.weight"):
        export_to_hf(no_projector, tmp_path / "out")
    no_head = _copy_without(exported, tmp_path / "no-head-hf", "lm_head")
    with pytest.raises(ValueError, match=r"lacks lm_head\.weight"):
        import_from_hf(no_head, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _copy_without(source, folder, fragment: str):
    """A copy of checkpoint `source` in `folder` whose weights lack every tensor named with `fragment`."""
    shutil.copytree(source, folder)
    state = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in state.items() if fragment not in k}, folder / "model.safetensors")
    return folder


def _tied_copy(source, folder, nested: bool = True):
    """A copy of `source` without lm_head.weight whose config ties the head to the embeddings (at the top, and with
    `nested` in its text_config too), as transformers saves a model with tied embeddings."""
    _copy_without(source, folder, "lm_head")
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = True
    if nested and "text_config" in config:
        config["text_config"]["tie_word_embeddings"] = True
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("nested", [True, False], ids=["text-config-tied", "only-the-top-tied"])
def test_checkpoints_with_tied_embeddings_convert_both_ways(tiny_ckpt, exported, tmp_path, nested):
    """A model whose output head is its input embeddings has no lm_head tensor: from_hf keeps the tie, to_hf gives
    the llava copy the embeddings as its head."""
    back = import_from_hf(_tied_copy(exported, tmp_path / "tied-hf", nested), tmp_path / "back")
    assert "lm_head.weight" not in load_file(back / "model.safetensors")
    _, model, _, _ = load_pretrained_model(str(back), None, None, device="cpu")
    assert torch.equal(model.lm_head.weight, model.get_input_embeddings().weight)
    out = export_to_hf(_tied_copy(tiny_ckpt, tmp_path / "tied"), tmp_path / "tied-out")
    state = load_file(out / "model.safetensors")
    head, embed = state["language_model.lm_head.weight"], state["language_model.model.embed_tokens.weight"]
    assert torch.equal(head, embed)


def test_unreadable_inputs_fail_with_one_line_naming_the_file(tiny_ckpt, exported, tmp_path, capsys):
    """A corrupt config.json, a truncated weights file or a missing tokenizer: exit 2 and one line, no traceback."""
    bad_config = tmp_path / "bad-config"
    shutil.copytree(tiny_ckpt, bad_config)
    (bad_config / "config.json").write_text('{"model_type": "share4v",')
    truncated = tmp_path / "truncated-hf"
    shutil.copytree(exported, truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_ckpt, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    cases = [
        (to_hf, bad_config, f"{bad_config / 'config.json'} is not valid JSON"),
        (from_hf, bad_config, f"{bad_config / 'config.json'} is not valid JSON"),
        (from_hf, truncated, f"{truncated / 'model.safetensors'} is not a readable safetensors file"),
        (to_hf, no_tokenizer, f"{no_tokenizer}: cannot load the tokenizer"),
    ]
    for module, src, expected in cases:
        assert module.main([str(src), str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {expected}") and "\n" not in err, (module.__name__, err)
    assert not (tmp_path / "out").exists()


def test_a_lora_adapter_or_a_projector_only_checkpoint_is_named_as_such(tiny_ckpt, tmp_path, capsys):
    """Both name a tower in their config.json but hold no whole model: the error says which kind it is."""
    lora = tmp_path / "lora"
    lora.mkdir()
    shutil.copy(tiny_ckpt / "config.json", lora)
    (lora / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    save_file({"x": torch.zeros(1)}, lora / "adapter_model.safetensors")
    projector_only = tmp_path / "projector-only"
    projector_only.mkdir()
    shutil.copy(tiny_ckpt / "config.json", projector_only)
    state = load_file(tiny_ckpt / "model.safetensors")
    save_file({k: v for k, v in state.items() if "mm_projector" in k}, projector_only / "mm_projector.safetensors")
    tower = str(tiny_ckpt / "vision_tower")
    for src, expected in ((lora, "is a LoRA adapter (adapter_config.json): merge it"),
                          (projector_only, "holds only the projector (mm_projector.safetensors")):  # fmt: skip
        for extra in ([], ["--vision-tower", tower]):  # the kind is named before the tower is looked for
            assert to_hf.main([str(src), str(tmp_path / "out"), *extra]) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"error: {src} {expected}") and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_source_that_is_not_a_folder_is_named_as_such(tmp_path, capsys):
    """A hub id (or a mistyped path) was told "has no config.json: not a checkpoint folder"; from_hf's own usage line
    showed a hub id as its source, which it never downloads."""
    for module in (to_hf, from_hf):
        src = tmp_path / "llava-hf" / "llava-1.5-7b-hf"
        assert module.main([str(src), str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {src} is not a folder: conversions read local folders") and "\n" not in err
    assert "from_hf llava-hf/" not in from_hf.__doc__


_KILLED_RUN = """
import os, shutil, signal, sys
from share4v.convert import to_hf

def kill(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[1] == "while-writing":
    to_hf.write_safetensors_shards = kill
else:  # while removing the checkpoint it replaced, the new one already in place
    rmtree = shutil.rmtree
    shutil.rmtree = lambda path, *a, **k: kill() if ".replaced-" in str(path) else rmtree(path, *a, **k)
to_hf.main(sys.argv[2:])
"""


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _killed_conversion(when, *args):
    """Run `to_hf.main(args)` in a process killed with SIGKILL (as `kill -9`) at `when`: its staging is left."""
    run = subprocess.run([sys.executable, "-c", _KILLED_RUN, when, *map(str, args)], capture_output=True, text=True)
    assert run.returncode == -9, run.stderr


def _age(folder, seconds):
    """Set the modification times of `folder` and everything in it `seconds` back."""
    when = time.time() - seconds
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (when, when), follow_symlinks=False)


def test_the_next_conversion_removes_what_a_killed_one_left(tiny_ckpt, tmp_path, caplog):
    """`kill -9` leaves the staging folder (or the checkpoint being replaced) beside the destination; the next
    conversion to it removes those of dead processes on this machine unchanged for an hour, and nothing that is not
    provably that."""
    dst = tmp_path / "out"
    _killed_conversion("while-writing", tiny_ckpt, dst)
    (stale,) = _hidden(tmp_path)
    host, pid = stale.removeprefix(".out.staging-").split("-")[:2]
    assert not dst.exists() and int(pid) != os.getpid()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a finished (reaped) process: no longer running
    others = [
        f".out.staging-{host}-{os.getpid()}-abcd1234",  # a live conversion (this process)
        f".out.staging-another_host-{dead.pid}-abcd1234",  # another machine's, on a shared file system
        f".out2.staging-{host}-{dead.pid}-abcd1234",  # another destination's
        ".out.abcd1234",  # an older version's name: nothing tells whether its writer lives
        f".out.staging-{host}-9999999999-abcd1234",  # a number no process can have (os.kill overflows): left alone
        f".out.staging-{host}-99999999999-abcd1234",  # more digits than a PID: not this scheme's name
    ]
    for name in others:
        (tmp_path / name).mkdir()
        _age(tmp_path / name, 2 * folders.STALE_AFTER_SECONDS)
    # changed in the last hour: a writer in another PID namespace under this machine's name may still be at work
    with caplog.at_level(logging.WARNING, "share4v.convert"):
        assert to_hf.main([str(tiny_ckpt), str(dst)]) == 0
    assert (dst / "config.json").is_file() and _hidden(tmp_path) == sorted([*others, stale])
    assert f"kept {stale} (changed in the last 60 minutes)" in caplog.text
    shutil.rmtree(dst)
    _age(tmp_path / stale, folders.STALE_AFTER_SECONDS + 60)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "share4v.convert"):
        assert to_hf.main([str(tiny_ckpt), str(dst)]) == 0
    assert (dst / "config.json").is_file() and _hidden(tmp_path) == sorted(others)
    assert f"removed {stale} in {tmp_path}, left by a killed conversion" in caplog.text
    for name in others:
        (tmp_path / name).rmdir()

    _killed_conversion("while-replacing", tiny_ckpt, dst, "--overwrite")
    (moved_aside,) = _hidden(tmp_path)
    assert moved_aside.startswith(f".out.replaced-{host}-") and (dst / "config.json").is_file()
    _age(tmp_path / moved_aside, folders.STALE_AFTER_SECONDS + 60)
    assert to_hf.main([str(tiny_ckpt), str(dst), "--overwrite"]) == 0
    assert _hidden(tmp_path) == []
    # killed between its two renames: the earlier checkpoint, moved aside, is the only one there is, and stays
    dst.rename(tmp_path / moved_aside)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "share4v.convert"):
        assert to_hf.main([str(tiny_ckpt), str(dst)]) == 0
    assert (dst / "config.json").is_file() and _hidden(tmp_path) == [moved_aside]
    assert f"kept {moved_aside} (the earlier checkpoint, moved aside)" in caplog.text


@pytest.mark.parametrize("name", ["x" * 250, "é" * 125, "模型" * 41 + "v2"], ids=["ascii", "two-byte", "three-byte"])
def test_a_destination_name_too_long_for_the_full_staging_name_stages_under_a_shortened_one(tmp_path, name):
    """`.NAME.staging-HOST-PID-RANDOM` of a name of some 250 bytes is over the file system's 255 (mkdir failed with
    "File name too long"): NAME is cut at a character boundary, with a hash of the whole, and the name fits."""
    dst = tmp_path / name
    assert len(os.fsencode(dst.name)) >= 248
    for overwrite in (False, True):  # staging, then replacing (the checkpoint moved aside is named alike)
        with staged_folder(dst, overwrite=overwrite) as staging:
            assert len(staging.name.encode("utf-8")) <= 255  # encodes: no character split by the cut
            fields = f".staging-{folders._host()}-{os.getpid()}-"
            assert staging.name.startswith(f".{name[:40]}") and fields in staging.name
            (staging / "config.json").write_text("{}")
        assert (dst / "config.json").is_file() and _hidden(tmp_path) == []


def test_a_killed_conversion_to_a_long_name_is_removed_by_the_next_to_that_name_only(tiny_ckpt, tmp_path, caplog):
    """The shortened staging names of two long destinations that share a prefix differ (the hash of the whole name):
    a conversion to one leaves the other's leftovers alone, and the next conversion to its own removes them."""
    common = "checkpoint-" + "模型" * 40  # 251 bytes
    dst, other = tmp_path / f"{common}-a", tmp_path / f"{common}-b"
    _killed_conversion("while-writing", tiny_ckpt, dst)
    (stale,) = _hidden(tmp_path)
    assert len(os.fsencode(stale)) <= 255 and ".staging-" in stale
    _age(tmp_path / stale, folders.STALE_AFTER_SECONDS + 60)
    assert to_hf.main([str(tiny_ckpt), str(other)]) == 0
    assert (other / "config.json").is_file() and _hidden(tmp_path) == [stale]
    with caplog.at_level(logging.WARNING, "share4v.convert"):
        assert to_hf.main([str(tiny_ckpt), str(dst)]) == 0
    assert (dst / "config.json").is_file() and _hidden(tmp_path) == []
    assert f"removed {stale} in {tmp_path}, left by a killed conversion" in caplog.text

    _killed_conversion("while-replacing", tiny_ckpt, dst, "--overwrite")
    (moved_aside,) = _hidden(tmp_path)
    assert ".replaced-" in moved_aside and len(os.fsencode(moved_aside)) <= 255
    _age(tmp_path / moved_aside, folders.STALE_AFTER_SECONDS + 60)
    assert to_hf.main([str(tiny_ckpt), str(other), "--overwrite"]) == 0
    assert _hidden(tmp_path) == [moved_aside]
    assert to_hf.main([str(tiny_ckpt), str(dst), "--overwrite"]) == 0
    assert (dst / "config.json").is_file() and _hidden(tmp_path) == []


def test_a_parent_that_cannot_be_listed_or_a_replaced_checkpoint_that_stays_do_not_fail_the_conversion(
    tiny_ckpt, tmp_path, monkeypatch, caplog
):
    dst = tmp_path / "out"
    listing = type(tmp_path).iterdir

    def unlistable(folder):  # as a parent this process may write into but not read (tests run as root)
        if folder == tmp_path:
            raise PermissionError(13, "Permission denied", str(folder))
        return listing(folder)

    monkeypatch.setattr(type(tmp_path), "iterdir", unlistable)
    with caplog.at_level(logging.WARNING, "share4v.convert"):
        assert to_hf.main([str(tiny_ckpt), str(dst)]) == 0
    assert (dst / "config.json").is_file()
    assert f"cannot look for a killed conversion's leftovers in {tmp_path}" in caplog.text
    monkeypatch.undo()

    rmtree = shutil.rmtree

    def refusing(path, *args, **kwargs):  # the replaced checkpoint cannot be removed (another user's files, say)
        if ".replaced-" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", refusing)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "share4v.convert"):
        assert to_hf.main([str(tiny_ckpt), str(dst), "--overwrite"]) == 0  # the new checkpoint is in place
    (left,) = _hidden(tmp_path)
    assert (dst / "config.json").is_file() and left.startswith(".out.replaced-")
    assert f"the new checkpoint is in place, but {tmp_path / left} (the one it replaced) stays" in caplog.text


def test_a_destination_that_is_a_link_is_replaced_and_its_target_left_alone(tiny_ckpt, exported, tmp_path):
    target = tmp_path / "team" / "checkpoint"
    shutil.copytree(exported, target)
    before = sorted(p.name for p in target.iterdir())
    dst = tmp_path / "out"
    dst.symlink_to(target, target_is_directory=True)
    assert to_hf.main([str(tiny_ckpt), str(dst), "--overwrite"]) == 0
    assert not dst.is_symlink() and (dst / "config.json").is_file()
    assert sorted(p.name for p in target.iterdir()) == before and _hidden(tmp_path) == []


@pytest.mark.parametrize(
    "cwd, spelling",
    [("out", "."), ("out", "./"), ("", "./out"), ("", "out/"), ("out", "../out"), ("elsewhere", None)],
    ids=["dot", "dot-slash", "dot-slash-name", "trailing-slash", "dot-dot", "absolute"],
)
def test_the_current_folder_or_a_relative_destination_is_its_absolute_path(
    tiny_ckpt, exported, tmp_path, monkeypatch, capsys, cwd, spelling
):
    """`to_hf SRC .` staged inside the destination and then could not rename `.` (it has no name): a replace failed
    with "PosixPath('.') has an empty name". Every spelling now follows the absolute path's rules: an existing folder
    needs --overwrite and must be a checkpoint, which is then replaced, leaving nothing hidden."""
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / cwd).mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path / cwd)
    dst = spelling or str(out)
    assert to_hf.main([str(tiny_ckpt), dst]) == 2
    assert capsys.readouterr().err.strip() == f"error: {out} exists; pass --overwrite to replace it"
    (out / "notes.txt").write_text("mine")
    assert to_hf.main([str(tiny_ckpt), dst, "--overwrite"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {out} exists and is not a checkpoint: refusing to replace it"
    assert (out / "notes.txt").read_text() == "mine"
    shutil.copytree(exported, out, dirs_exist_ok=True)  # now an earlier export (the same folder: cwd stays valid)
    assert to_hf.main([str(tiny_ckpt), dst, "--overwrite"]) == 0
    monkeypatch.chdir(tmp_path)  # the process's folder may have been the replaced (deleted) checkpoint
    assert (out / "config.json").is_file() and not (out / "notes.txt").exists()
    assert _hidden(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == sorted({"out", cwd} - {""})


def test_a_converted_checkpoint_gets_the_modes_of_plain_writes(tiny_ckpt, tmp_path):
    """Neither the staging folder renamed into place (tempfile's owner-only 0o700) nor the weights (safetensors'
    owner-only 0o600, safetensors/safetensors#782) keep another user (a serving process, a teammate) out."""
    with umask(0o022):
        exported = export_to_hf(tiny_ckpt, tmp_path / "out")
        imported = import_from_hf(exported, tmp_path / "back")
    for converted in (exported, imported):
        assert folder_modes(converted) == {0o755} and file_modes(converted) == {0o644}, converted
    assert len(list(imported.rglob("*.safetensors"))) == 2  # the LLM's and the vision tower's
    with umask(0o077):
        private = export_to_hf(tiny_ckpt, tmp_path / "private_export")
    assert file_modes(private, "*.safetensors") == {0o600} and folder_modes(private) == {0o700}
    with umask(0o077), staged_folder(tmp_path / "private") as staging:
        assert re.fullmatch(rf"\.private\.staging-[A-Za-z0-9._]+-{os.getpid()}-[a-z0-9_]{{8}}", staging.name)
    assert folder_modes(tmp_path / "private") == {0o700}
