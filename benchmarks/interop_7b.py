"""benchmarks/interop_7b.py

The export check of docs/Interop.md at the released 7B shape (random weights): a share4v checkpoint exported with
`share4v.convert.to_hf` and loaded by transformers' own `LlavaForConditionalGeneration` gives the same greedy tokens
as share4v for 3 prompts with images in fp32, and logits within bf16 tolerance in bf16.

    python benchmarks/train_multigpu_7b.py make-world /tmp/world --rows 8     # a random 7B share4v checkpoint
    python benchmarks/interop_7b.py /tmp/world --out benchmarks/results/interop_7b.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoProcessor, LlavaForConditionalGeneration

from share4v.conversation import get_conv_template
from share4v.convert.to_hf import export_to_hf
from share4v.mm_utils import process_images, tokenizer_image_token
from share4v.model.builder import load_pretrained_model
from tests.helpers import random_image

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU runs it on a tiny world (a smoke test)
QUESTIONS = ["What is in the picture?", "Describe the image in detail.", "How many objects are there?"]


def _inputs(tokenizer, image_processor, config, processor, question, seed):
    image = random_image(seed, (400 + 50 * seed, 300))
    conv = get_conv_template("vicuna_v1")
    conv.append_message(conv.roles[0], "<image>\n" + question)
    conv.append_message(conv.roles[1], None)
    ours = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None].to(DEVICE)
    pixels = process_images([image], image_processor, config).to(DEVICE)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True,
    )
    theirs = processor(text=text, images=[image], add_special_tokens=False, return_tensors="pt").to(DEVICE)
    assert torch.equal(theirs["pixel_values"], pixels)
    return ours, pixels, theirs


@torch.no_grad()
def check(world: Path, out: Path, new_tokens: int) -> dict:
    exported = Path("/tmp/share4v-7b-hf")
    started = time.perf_counter()
    export_to_hf(world, exported, overwrite=True)
    export_s = time.perf_counter() - started
    processor = AutoProcessor.from_pretrained(exported, backend="pil")
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    result = {"export_seconds": round(export_s, 1), "gpu": gpu, "prompts": len(QUESTIONS)}
    default_backend = AutoProcessor.from_pretrained(exported)  # torchvision when installed: resizes differently
    image = random_image(0, (400, 300))
    pil_pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    default_pixels = default_backend.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    result["default_backend"] = type(default_backend.image_processor).__name__
    result["default_backend_max_pixel_diff"] = (pil_pixels - default_pixels).abs().max().item()
    for dtype in (torch.float32, torch.bfloat16):
        tokenizer, ours, image_processor, _ = load_pretrained_model(str(world), None, None, device=DEVICE, dtype=dtype)
        theirs = LlavaForConditionalGeneration.from_pretrained(exported, dtype=dtype, device_map=DEVICE).eval()
        greedy_equal, max_diff, max_logit = [], 0.0, 0.0
        for seed, question in enumerate(QUESTIONS):
            ids, pixels, encoding = _inputs(tokenizer, image_processor, ours.config, processor, question, seed)
            pixels = pixels.to(dtype)
            a = ours(ids, images=pixels).logits.float()
            b = theirs(**{**encoding, "pixel_values": pixels}).logits.float()[..., : a.shape[-1]]
            max_diff, max_logit = max(max_diff, (a - b).abs().max().item()), max(max_logit, a.abs().max().item())
            generated_ours = ours.generate(ids, images=pixels, max_new_tokens=new_tokens, do_sample=False)
            generated = theirs.generate(**{**encoding, "pixel_values": pixels}, max_new_tokens=new_tokens,
                                        do_sample=False)[:, encoding["input_ids"].shape[1]:]  # fmt: skip
            greedy_equal.append(generated_ours.tolist() == generated.tolist())
        name = str(dtype).removeprefix("torch.")
        result[name] = {"greedy_tokens_equal": greedy_equal, "max_abs_logit_diff": max_diff, "max_abs_logit": max_logit}
        print(json.dumps({name: result[name]}), flush=True)
        del ours, theirs
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("world", type=Path, help="a share4v checkpoint folder (train_multigpu_7b.py make-world)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/interop_7b.json"))
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    check(args.world, args.out, args.new_tokens)


if __name__ == "__main__":
    main()
