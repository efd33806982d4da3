"""benchmarks/check_quantized.py

The bitsandbytes paths, which need a CUDA GPU (CI has none: there only the missing-package error is tested), on a
small random model (Llama hidden 256, 2 layers; the tiny CLIP tower), on one GPU:

- loading: `load_pretrained_model(..., load_8bit=True)` / `load_4bit=True` quantize the LLM's decoder layers and
  nothing else (the projector, lm_head and the tower stay as loaded); their teacher-forced logits on a prompt with an
  image stay close to the bf16 model's (cosine similarity, top-1 agreement);
- the engine on a quantized model: a greedy batch (image and text-only chats) equals the same chats one by one;
- QLoRA (`share4v.train.train --bits 4 --lora_enable True`, and `--bits 8`), bf16: finite losses that go down, only
  the adapters and the projector trained, the LoRA layout saved; `scripts/merge_lora_weights.py` merges the adapter
  into the bf16 base and passes its own logit check; the merged checkpoint captions, also loaded in 4 bits;
- the same runs with fp32 compute (`--bf16 False`), resumed from the step-3 checkpoint, end with exactly the
  uninterrupted run's adapters (LoRA dropout on, so the restored random streams matter); a second uninterrupted
  bf16 run's distance from the first is recorded (0.0 when the kernels are deterministic).

    python benchmarks/check_quantized.py --out results.json
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import report_checks
from training_check import merge_lora, run_training

from share4v.testing.make_tiny_checkpoint import TinySpec, make_tiny_checkpoint
from share4v.testing.tiny_training import make_tiny_dataset

SPEC = TinySpec(hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4, initializer_range=0.02)
STEPS = 6
LORA_FILES = {"adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.safetensors"}


def _quantized_modules(model: torch.nn.Module) -> list[str]:
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return sorted(name for name, module in model.named_modules() if isinstance(module, kinds))


def _probe(model: torch.nn.Module, tokenizer, image_size: int) -> torch.Tensor:
    from share4v.model.merge_lora import probe_logits

    return probe_logits(model, tokenizer, image_size)[0]


def check_loading(ckpt: Path) -> dict:
    from share4v.model.builder import load_pretrained_model

    tokenizer, reference, processor, _ = load_pretrained_model(str(ckpt), None, None, device="cuda",
                                                               dtype=torch.bfloat16)  # fmt: skip
    size = processor.crop_size["height"]
    expected = _probe(reference, tokenizer, size)
    del reference
    result = {}
    for flag in ("load_8bit", "load_4bit"):
        tokenizer, model, _, _ = load_pretrained_model(str(ckpt), None, None, device="cuda", dtype=torch.bfloat16,
                                                       **{flag: True})  # fmt: skip
        quantized = _quantized_modules(model)
        logits = _probe(model, tokenizer, size)
        cosine = torch.nn.functional.cosine_similarity(logits, expected, dim=-1)
        result[flag] = {
            "quantized_modules": len(quantized),
            "only_decoder_layers": bool(quantized) and all(name.startswith("model.layers.") for name in quantized),
            "every_decoder_projection": len(quantized) == 7 * SPEC.num_layers,
            "smallest_cosine_to_bf16": cosine.min().item(),
            "top1_agreement_with_bf16": (logits.argmax(-1) == expected.argmax(-1)).float().mean().item(),
        }
        del model
        torch.cuda.empty_cache()
    return result


def check_engine_batch(ckpt: Path, image: Path) -> dict:
    from share4v.inference.engine import Chat, GenerationParams, Share4VEngine

    engine = Share4VEngine.from_pretrained(str(ckpt), load_4bit=True, dtype=torch.bfloat16)
    chats = [Chat.single("Describe the image.", images=[str(image)]), Chat.single("Tell me a story."),
             Chat.single("What is in the picture?", images=[str(image)])]  # fmt: skip
    params = GenerationParams(temperature=0.0, max_new_tokens=16)
    batched = [c.text for c in engine.complete(chats, params)]
    alone = [engine.complete([chat], params)[0].text for chat in chats]
    return {"batch_equals_single": batched == alone, "compile_decode": bool(engine.compile_decode),
            "answers": batched}  # fmt: skip


def _train(root: Path, out: Path, bits: int, bf16: bool, *extra: str) -> list[float]:
    data = root / "data" / "data.json"
    args = [
        "--model_name_or_path", str(root / "ckpt"), "--version", "v1", "--data_path", str(data),
        "--image_folder", str(data.parent), "--image_aspect_ratio", "pad", "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-2", "--mm_use_im_patch_token", "False", "--bits", str(bits),
        "--lora_enable", "True", "--lora_r", "16", "--lora_alpha", "32", "--bf16", str(bf16),
        "--max_steps", str(STEPS), "--per_device_train_batch_size", "4", "--learning_rate", "2e-3",
        "--save_steps", "3", "--report_to", "none", "--logging_steps", "1", "--dataloader_num_workers", "0",
        "--seed", "0", "--gradient_checkpointing", "True", "--output_dir", str(out), *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SHARE4V_CACHE": str(root / "cache")}
    return run_training([sys.executable, "-m", "share4v.train.train", *args], out, env)


def _adapter_difference(a: Path, b: Path) -> float:
    first, second = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    if first.keys() != second.keys():
        raise SystemExit(f"{a} and {b} hold different adapters")
    return max((first[k].float() - second[k].float()).abs().max().item() for k in first)


def _caption(folder: Path, image: Path, **load: bool) -> dict:
    from share4v.inference.engine import Chat, GenerationParams, Share4VEngine

    engine = Share4VEngine.from_pretrained(str(folder), dtype=torch.bfloat16, **load)
    [completion] = engine.complete([Chat.single("Describe the image.", images=[str(image)])],
                                   GenerationParams(temperature=0.0, max_new_tokens=16))  # fmt: skip
    return {"text": completion.text, "finish_reason": completion.finish_reason}


def check_qlora(root: Path, bits: int, image: Path) -> dict:
    run = root / f"qlora{bits}"
    losses = _train(root, run, bits, bf16=True)
    again = root / f"qlora{bits}-again"
    _train(root, again, bits, bf16=True)
    fp32 = root / f"qlora{bits}-fp32"
    fp32_losses = _train(root, fp32, bits, bf16=False)
    resumed = root / f"qlora{bits}-fp32-resumed"
    resumed.mkdir()
    shutil.copytree(fp32 / "checkpoint-3", resumed / "checkpoint-3")
    resumed_losses = _train(root, resumed, bits, bf16=False)
    saved = sorted(p.name for p in run.iterdir() if p.is_file())
    trainables = load_file(run / "non_lora_trainables.safetensors")
    merge_status, merge_line = merge_lora(run, root / "ckpt", "--device", "cuda", "--dtype", "bfloat16")
    merged = root / f"{run.name}-merged"
    return {
        "losses": losses,
        "bf16_repeat_adapter_difference": _adapter_difference(run, again),
        "fp32_losses": fp32_losses,
        "fp32_resumed_from_3_losses": resumed_losses,
        "saved_files": saved,
        "non_lora_trainables": len(trainables),
        "non_lora_trainables_are_the_projector": bool(trainables) and all(".mm_projector." in k for k in trainables),
        "fp32_resumed_vs_uninterrupted_adapter_difference": _adapter_difference(fp32, resumed),
        "merge_exit_status": merge_status,
        "merge_report": merge_line,
        "merged_caption": _caption(merged, image) if merge_status == 0 else None,
        "merged_caption_4bit": _caption(merged, image, load_4bit=True) if merge_status == 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=Path("/tmp/share4v-quantized-check"))
    args = parser.parse_args()
    import bitsandbytes

    root = args.root
    shutil.rmtree(root, ignore_errors=True)
    make_tiny_checkpoint(root / "ckpt", SPEC)
    make_tiny_dataset(root / "data", "instruct", num_samples=24)
    image = next((root / "data" / "images").iterdir())
    result = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "bitsandbytes": bitsandbytes.__version__,
        "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__,
        "loading": check_loading(root / "ckpt"),
        "engine_4bit": check_engine_batch(root / "ckpt", image),
        "qlora": {bits: check_qlora(root, bits, image) for bits in (4, 8)},
    }  # fmt: skip

    checks = {}
    for flag, entry in result["loading"].items():
        checks[f"{flag}_quantizes_the_decoder_layers_only"] = entry["only_decoder_layers"]
        checks[f"{flag}_quantizes_every_projection"] = entry["every_decoder_projection"]
        checks[f"{flag}_logits_close_to_bf16"] = entry["smallest_cosine_to_bf16"] >= 0.95
    checks["engine_4bit_batch_equals_single"] = result["engine_4bit"]["batch_equals_single"]
    for bits, entry in result["qlora"].items():
        losses = entry["losses"]
        checks[f"qlora{bits}_losses_finite_and_falling"] = (
            len(losses) == STEPS and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
        )
        checks[f"qlora{bits}_saves_the_lora_layout"] = LORA_FILES <= set(entry["saved_files"])
        checks[f"qlora{bits}_trains_the_projector_beside_the_adapters"] = entry["non_lora_trainables_are_the_projector"]
        checks[f"qlora{bits}_resume_restores_the_run"] = (
            entry["fp32_resumed_vs_uninterrupted_adapter_difference"] <= 1e-6
            and entry["fp32_resumed_from_3_losses"] == entry["fp32_losses"]
        )
        checks[f"qlora{bits}_merges_and_captions"] = entry["merge_exit_status"] == 0 and all(
            (entry[key] or {}).get("finish_reason") in ("stop", "length")
            for key in ("merged_caption", "merged_caption_4bit")
        )
    result["checks"] = checks
    report_checks(args.out, result)


if __name__ == "__main__":
    main()
