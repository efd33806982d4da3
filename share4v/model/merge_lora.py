"""model/merge_lora.py

Merge a LoRA checkpoint (adapter + non-LoRA trainables, as training writes it) into its base and save a full
checkpoint in the released layout, then check it: the saved model, loaded back, must give the logits of the
adapter model on a probe input (a prompt with an image) within `--atol`.

    python scripts/merge_lora_weights.py --model-path checkpoints/share4v-7b-lora \\
        --model-base checkpoints/share4v-7b_pretrained --save-model-path checkpoints/share4v-7b-merged
"""

from __future__ import annotations

import argparse
import sys

import torch

from share4v.mm_utils import tokenizer_image_token
from share4v.model.builder import load_pretrained_model

PROBE_PROMPT = "A chat. USER: <image>\nDescribe the image in detail. ASSISTANT: The image shows"


@torch.no_grad()
def probe_logits(model: torch.nn.Module, tokenizer, image_size: int) -> torch.Tensor:
    """Logits `[1, L, V]` for a fixed prompt and a fixed pseudo-random image, in float32."""
    device = model.get_input_embeddings().weight.device
    ids = tokenizer_image_token(PROBE_PROMPT, tokenizer, return_tensors="pt")[None].to(device)
    pixels = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    return model(ids, images=pixels).logits.float()


def merge_lora_checkpoint(
    model_path: str, model_base: str, save_model_path: str, device: str = "cpu", dtype: str | None = None
) -> float:
    """Merge, save and reload; returns the largest absolute logit difference against the adapter model."""
    tokenizer, adapted, image_processor, _ = load_pretrained_model(
        model_path, model_base, None, device=device, dtype=dtype, merge_lora=False
    )
    image_size = image_processor.crop_size["height"]
    expected = probe_logits(adapted, tokenizer, image_size)
    merged = adapted.merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(save_model_path)
    tokenizer.save_pretrained(save_model_path)
    del adapted, merged
    tokenizer, reloaded, _, _ = load_pretrained_model(save_model_path, None, None, device=device, dtype=dtype)
    return (probe_logits(reloaded, tokenizer, image_size) - expected).abs().max().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/merge_lora_weights.py",
        description="Merge a share4v LoRA checkpoint into its base, save it, and check its logits.",
    )
    parser.add_argument("--model-path", required=True, help="the LoRA checkpoint folder (adapter_config.json)")
    parser.add_argument("--model-base", required=True, help="the model the LoRA run started from")
    parser.add_argument("--save-model-path", required=True, help="where to write the merged checkpoint")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: float32 on CPU)")
    parser.add_argument(
        "--atol", type=float, default=None, help="largest logit difference accepted (default 1e-3 fp32, 0.5 half)"
    )
    args = parser.parse_args(argv)
    try:
        diff = merge_lora_checkpoint(args.model_path, args.model_base, args.save_model_path, args.device, args.dtype)
    except (OSError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    half = args.dtype in ("float16", "fp16", "half", "bfloat16", "bf16")
    atol = args.atol if args.atol is not None else (0.5 if half else 1e-3)
    verdict = "ok" if diff <= atol else "MISMATCH"
    print(
        f"merged model saved to {args.save_model_path}; max |logit difference| vs the adapter model = {diff:.3g} "
        f"(atol {atol:g}): {verdict}"
    )
    return 0 if diff <= atol else 1


if __name__ == "__main__":
    sys.exit(main())
