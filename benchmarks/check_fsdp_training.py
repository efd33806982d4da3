"""benchmarks/check_fsdp_training.py

share4v's training entry sharded over two GPUs, under FSDP2 (`--fsdp --fsdp_config scripts/fsdp2.json`, the default)
or DeepSpeed (`--sharding zero3` / `zero2`: `--deepspeed scripts/zero3.json`, the recipe's default), against the
same run under DDP, on a tiny model. transformers' Trainer runs FSDP on GPUs only (CI checks the sharded model on
the CPU without the Trainer: tests/train/test_fsdp.py); CI runs DeepSpeed on the CPU (tests/train/test_deepspeed.py,
ZeRO-3 over two gloo processes too), not with NCCL. Stage-1 trainable set (LLM, projector, the tower's later layers),
fp32, 4 steps with a checkpoint at step 2:

- the sharded run's losses and final weights equal the DDP run's;
- a run resumed from the sharded run's step-2 checkpoint ends with the same weights as the uninterrupted one;
- every output folder is in the released layout (the tower's folder included) and loads through the builder;
- a bf16 run trains (finite losses) and saves a loadable checkpoint;
- a run started from a projector file (`--pretrain_mm_mlp_adapter`, learning rate 0) saves that projector: every
  rank loaded it (under ZeRO-3, rank 0 loads it into the gathered weights and the others receive it);
- DeepSpeed only (LoRA under FSDP is refused): a LoRA run's losses equal DDP's, and the adapter merges through
  `scripts/merge_lora_weights.py` into a checkpoint that loads.

    python benchmarks/check_fsdp_training.py --out results.json
    python benchmarks/check_fsdp_training.py --sharding zero3 --out results.json   # needs deepspeed
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import report_checks
from training_check import REPO, merge_lora, run_training

from share4v.testing.make_tiny_checkpoint import make_tiny_checkpoint
from share4v.testing.tiny_training import make_tiny_dataset

SHARDING = {
    "fsdp2": ["--fsdp", "--fsdp_config", str(REPO / "scripts" / "fsdp2.json")],
    "zero3": ["--deepspeed", str(REPO / "scripts" / "zero3.json")],
    "zero2": ["--deepspeed", str(REPO / "scripts" / "zero2.json")],
}
LORA = ["--lora_enable", "True", "--lora_r", "8", "--lora_alpha", "16"]
LEARNING_RATE = 1e-3
# How far the sharded run's weights may end from DDP's: 2 % of one AdamW step (about the learning rate per weight).
# Adam divides each gradient by its own running size, so the reduction-order noise of a gradient near zero (but not
# zero) becomes a move of that order: on 2 x H200 under ZeRO-3 (2026-11-28) the vision tower's key bias, whose true
# gradient is zero, was moved 4.1e-6 by DDP and ended 6.5e-6 from that, and one MLP weight 1.5e-5 from DDP's.
WEIGHT_TOLERANCE = 0.02 * LEARNING_RATE


def _train(root: Path, out: Path, *flags: str) -> list[float]:
    data = root / "data" / "data.json"
    args = [
        "--model_name_or_path", str(root / "ckpt"), "--version", "v1", "--data_path", str(data),
        "--image_folder", str(data.parent), "--image_aspect_ratio", "pad", "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-2", "--mm_use_im_patch_token", "False", "--tune_entire_model", "True",
        "--tune_vit_from_layer", "1", "--max_steps", "4", "--per_device_train_batch_size", "2",
        "--learning_rate", str(LEARNING_RATE), "--save_steps", "2", "--report_to", "none", "--logging_steps", "1",
        "--dataloader_num_workers", "0", "--seed", "0", "--ddp_timeout", "120", "--output_dir", str(out),
        "--compile_decoder_layers", "False",  # the trainer compiles under FSDP by default, not under DDP: compare
        *flags,                               # the sharding alone (compiled layers are checked on their own)
    ]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # not TORCH_DISTRIBUTED_DEBUG=DETAIL: its wrapped process group lacks the coalesced all-gather that gathering a
    # sharded state dict for saving needs; a hang ends at --ddp_timeout instead
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SHARE4V_CACHE": str(root / "cache")}
    return run_training([*command, "-m", "share4v.train.train", *args], out, env)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{name}:{key}": value.float() for name in ("model.safetensors", "vision_tower/model.safetensors")
            for key, value in load_file(folder / name).items()}  # fmt: skip


def _differences(a: Path, b: Path) -> dict[str, float]:
    first, second = _weights(a), _weights(b)
    if first.keys() != second.keys():
        raise SystemExit(f"{a} and {b} hold different tensors")
    return {key: (first[key] - second[key]).abs().max().item() for key in first}


def _largest_difference(a: Path, b: Path) -> float:
    return max(_differences(a, b).values())


def _where_they_differ(ddp: Path, sharded: Path, initial: Path, count: int = 3) -> list[dict]:
    """The tensors where the sharded run's weights differ most from DDP's: the element, and how far DDP's training
    moved that element and the whole tensor at most (see WEIGHT_TOLERANCE)."""
    differences, trained, other, start = _differences(ddp, sharded), _weights(ddp), _weights(sharded), _weights(initial)
    rows = []
    for key in sorted(differences, key=differences.get, reverse=True)[:count]:
        element = int((trained[key] - other[key]).abs().argmax())
        moved = (trained[key] - start[key]).flatten() if key in start else None
        row = {"tensor": key, "difference": differences[key], "element": element}
        if moved is not None:
            row |= {"ddp_moved_the_element_by": moved[element].abs().item(),
                    "ddp_moved_the_tensor_by_at_most": moved.abs().max().item()}  # fmt: skip
        rows.append(row)
    return rows


def _loads(folder: Path) -> bool:
    from share4v.model.builder import load_pretrained_model

    _, model, _, _ = load_pretrained_model(str(folder), None, None, device="cpu")
    return model.config.mm_vision_tower == "vision_tower"


def _projector_file(root: Path) -> Path:
    """The tiny checkpoint's projector, moved by 0.1 so that it differs from the one the run would start from."""
    weights = {k: v + 0.1 for k, v in load_file(root / "ckpt" / "model.safetensors").items() if "mm_projector." in k}
    save_file(weights, root / "projector.safetensors")
    return root / "projector.safetensors"


def _saved_projector_difference(run: Path, projector: Path) -> float:
    saved, expected = load_file(run / "model.safetensors"), load_file(projector)
    return max((saved[k].float() - v.float()).abs().max().item() for k, v in expected.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sharding", choices=list(SHARDING), default="fsdp2")
    parser.add_argument("--root", type=Path, default=Path("/tmp/share4v-sharded-check"))
    args = parser.parse_args()
    root, sharding = args.root, SHARDING[args.sharding]
    shutil.rmtree(root, ignore_errors=True)
    make_tiny_checkpoint(root / "ckpt")
    make_tiny_dataset(root / "data", "instruct", num_samples=24)
    projector = _projector_file(root)

    ddp_losses = _train(root, root / "ddp")
    sharded_losses = _train(root, root / "sharded", *sharding)
    (root / "resumed").mkdir()
    shutil.copytree(root / "sharded" / "checkpoint-2", root / "resumed" / "checkpoint-2")
    resumed_losses = _train(root, root / "resumed", *sharding)
    bf16_losses = _train(root, root / "sharded-bf16", *sharding, "--bf16", "True")
    adapter_flags = ["--pretrain_mm_mlp_adapter", str(projector), "--learning_rate", "0", "--max_steps", "1"]
    _train(root, root / "from-projector", *sharding, *adapter_flags)
    outputs = ["ddp", "sharded", "resumed", "sharded-bf16", "sharded/checkpoint-2", "from-projector"]
    result = {
        "sharding": args.sharding, "gpu": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(),
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "accelerate": __import__("accelerate").__version__,
        "losses": {"ddp": ddp_losses, "sharded": sharded_losses, "sharded_resumed_from_2": resumed_losses,
                   "sharded_bf16": bf16_losses},
        "sharded_vs_ddp_largest_weight_difference": _largest_difference(root / "ddp", root / "sharded"),
        "resumed_vs_uninterrupted_largest_weight_difference": _largest_difference(root / "sharded", root / "resumed"),
        "sharded_checkpoint_2_vs_ddp": _largest_difference(root / "ddp" / "checkpoint-2",
                                                           root / "sharded" / "checkpoint-2"),
        "saved_projector_vs_the_file": _saved_projector_difference(root / "from-projector", projector),
        "largest_differences_to_ddp": _where_they_differ(root / "ddp", root / "sharded", root / "ckpt"),
    }  # fmt: skip

    def same(a: list[float], b: list[float]) -> bool:
        return len(a) == len(b) and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b, strict=True))

    checks = {
        "sharded_losses_equal_ddp": same(ddp_losses, sharded_losses),
        "sharded_weights_equal_ddp": result["sharded_vs_ddp_largest_weight_difference"] <= WEIGHT_TOLERANCE,
        "resume_restores_the_run": result["resumed_vs_uninterrupted_largest_weight_difference"] <= 1e-5
        and same(resumed_losses[-2:], sharded_losses[-2:]),
        "bf16_losses_finite": all(math.isfinite(loss) for loss in bf16_losses),
        "sharded_checkpoint_2_equals_ddp": result["sharded_checkpoint_2_vs_ddp"] <= WEIGHT_TOLERANCE,
        "the_projector_file_reached_every_rank": result["saved_projector_vs_the_file"] == 0.0,
    }
    if args.sharding != "fsdp2":  # LoRA under FSDP is refused (untested)
        ddp_lora, sharded_lora = _train(root, root / "ddp-lora", *LORA), _train(root, root / "lora", *sharding, *LORA)
        result["losses"] |= {"ddp_lora": ddp_lora, "sharded_lora": sharded_lora}
        checks["lora_losses_equal_ddp"] = same(ddp_lora, sharded_lora)
        checks["lora_merges"] = merge_lora(root / "lora", root / "ckpt")[0] == 0  # the script checks what it wrote
    result["loadable"] = {name: _loads(root / name) for name in outputs}
    checks["all_load"] = all(result["loadable"].values())
    result["checks"] = checks
    report_checks(args.out, result)


if __name__ == "__main__":
    main()
