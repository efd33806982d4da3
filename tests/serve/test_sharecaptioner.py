"""ShareCaptioner behind --trust-remote-code: a checkpoint that ships its own model code (a tiny stand-in with the
real one's interface) runs only when asked, captions as the original script's recipe computes it, and goes through
the same fault-tolerant, resumable loop as share4v models."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers import random_image
from tests.serve.fake_sharecaptioner import write_fake_sharecaptioner

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = [sys.executable, str(ROOT / "tools" / "share-cap_batch_infer.py")]
INSTRUCTION = "Analyze the image in a comprehensive and detailed manner."


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    return write_fake_sharecaptioner(tmp_path_factory.mktemp("sharecaptioner"))


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        random_image(index).save(folder / f"good{index}.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return folder


def original_recipe(checkpoint: Path, image: Path, new_tokens: int) -> str:
    """What the original tools/share-cap_batch_infer.py computes for one image, greedy instead of beam-sampled."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True).eval()
    model.tokenizer = tokenizer
    with torch.no_grad():
        seg_emb1 = model.encode_text("<|User|>:", add_special_tokens=True)
        seg_emb2 = model.encode_text(INSTRUCTION + model.eoh + "\n<|Bot|>:", add_special_tokens=False)
        img_embeds = model.encode_img(model.vis_processor(Image.open(image).convert("RGB"))[None])
        embeds = torch.cat([seg_emb1, img_embeds, seg_emb2], dim=1)
        out = model.internlm_model.generate(
            inputs_embeds=embeds, max_new_tokens=new_tokens, num_beams=1, min_length=1, do_sample=False,
            repetition_penalty=1.5, length_penalty=1.0, eos_token_id=tokenizer.eos_token_id, num_return_sequences=1,
        )[0]  # fmt: skip
    out[out == -1] = 2
    return model.decode_text([out])[0]


def test_captions_follow_the_original_recipe_and_resume(captioner, folder, tmp_path):
    save = tmp_path / "captions.json"
    command = [*SCRIPT, "--model-path", str(captioner), "--trust-remote-code", "--images-file", str(folder),
               "--save-path", str(save), "--temperature", "0", "--num_beams", "1", "--max-new-tokens", "6",
               "--batch-size", "2", "--num-workers", "1"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 captioned, 1 failed" in done.stdout
    captions = {path: caption for row in json.loads(save.read_text()) for path, caption in row.items()}
    assert sorted(captions) == sorted(str(p) for p in folder.glob("good*.png"))
    for path, caption in captions.items():  # batched by two, each equal to the original's one-image computation
        assert caption == original_recipe(captioner, Path(path), 6)
    (error,) = [json.loads(line) for line in Path(f"{save}.errors.jsonl").read_text().splitlines()]
    assert error["image"].endswith("corrupt.jpg") and "corrupt.jpg" in error["error"]
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0 and "0 captioned, 0 failed" in again.stdout and "4 already done" in again.stdout
    assert json.loads(save.read_text()) == [{path: caption} for path, caption in captions.items()]


def test_remote_code_runs_only_when_asked(captioner, folder, tmp_path):
    base = [*SCRIPT, "--images-file", str(folder), "--save-path", str(tmp_path / "c.json")]
    refused = subprocess.run([*base, "--model-path", str(captioner)], capture_output=True, text=True)
    assert refused.returncode == 1 and "--trust-remote-code" in refused.stderr and len(refused.stderr.splitlines()) == 1
    # the original's spelling, --model-name naming the captioner, is not taken for the default share4v model
    named = subprocess.run([*base, "--model-name", str(captioner)], capture_output=True, text=True)
    assert named.returncode == 1 and "--trust-remote-code" in named.stderr and len(named.stderr.splitlines()) == 1
    assert not (tmp_path / "c.json.jsonl").exists() or not (tmp_path / "c.json.jsonl").read_text()
    # the flag does not turn a share4v checkpoint (no model code of its own) into ShareCaptioner
    share4v = subprocess.run([*base, "--trust-remote-code"], capture_output=True, text=True)
    assert share4v.returncode == 1 and "ships no model code" in share4v.stderr and len(share4v.stderr.splitlines()) == 1
    odd = subprocess.run([*base, "--model-path", str(captioner), "--trust-remote-code", "--load-4bit"],
                         capture_output=True, text=True)  # fmt: skip
    assert odd.returncode == 1 and "--load-4bit" in odd.stderr and len(odd.stderr.splitlines()) == 1
    fp8 = subprocess.run([*base, "--model-path", str(captioner), "--trust-remote-code", "--kv-cache-dtype", "fp8"],
                         capture_output=True, text=True)  # fmt: skip
    assert fp8.returncode == 1 and "--kv-cache-dtype" in fp8.stderr and len(fp8.stderr.splitlines()) == 1
    # with consent, and the original's decoding (3 beams, sampling at temperature 1.0) by default
    ran = subprocess.run([*base, "--model-name", str(captioner), "--trust-remote-code", "--max-new-tokens", "4",
                          "--num-workers", "0"], capture_output=True, text=True)  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert len(json.loads((tmp_path / "c.json").read_text())) == 3


def test_the_command_line_defaults_to_the_original_decoding_only_for_sharecaptioner():
    import runpy

    parse_args = runpy.run_path(str(ROOT / "tools" / "share-cap_batch_infer.py"))["parse_args"]
    ours = parse_args([])
    assert (ours.temperature, ours.num_beams, ours.max_new_tokens) == (0.0, 1, 500)
    original = parse_args(["--trust-remote-code"])
    assert (original.temperature, original.num_beams, original.max_new_tokens) == (1.0, 3, 500)
    overridden = parse_args(["--num_beams", "1", "--trust-remote-code", "--temperature", "0"])
    assert (overridden.temperature, overridden.num_beams) == (0.0, 1)
    shown = subprocess.run([*SCRIPT, "--help"], capture_output=True, text=True)
    assert "--trust-remote-code" in shown.stdout and "repetition penalty 1.5" in shown.stdout


def test_the_engine_runs_remote_code_only_with_the_users_consent(captioner):
    from share4v.serve.sharecaptioner import ShareCaptionerEngine

    with pytest.raises(ValueError, match="only with --trust-remote-code"):
        ShareCaptionerEngine.from_pretrained(str(captioner), trust_remote_code=False, device="cpu")
    with pytest.raises(TypeError):  # consent is never implied by a default
        ShareCaptionerEngine.from_pretrained(str(captioner), device="cpu")
