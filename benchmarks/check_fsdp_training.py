"""benchmarks/check_fsdp_training.py

share4v's training entry under FSDP2 (`--fsdp --fsdp_config scripts/fsdp2.json`) on two GPUs,
against the same run under DDP, on a tiny model (transformers' Trainer runs FSDP on GPUs only, so CI checks the
sharded model on the CPU without the Trainer: tests/train/test_fsdp.py). Stage-1 trainable set (LLM, projector, the
tower's later layers), fp32, 4 steps with a checkpoint at step 2:

- the FSDP run's losses and final weights equal the DDP run's;
- a run resumed from the FSDP run's step-2 checkpoint ends with the same weights as the uninterrupted one;
- every output folder is in the released layout (the tower's folder included) and loads through the builder;
- a bf16 run trains (finite losses) and saves a loadable checkpoint.

    python benchmarks/check_fsdp_training.py --out results.json
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
from training_check import REPO, run_training

from share4v.testing.make_tiny_checkpoint import make_tiny_checkpoint
from share4v.testing.tiny_training import make_tiny_dataset

FSDP = ["--fsdp", "--fsdp_config", str(REPO / "scripts" / "fsdp2.json")]


def _train(root: Path, out: Path, *flags: str) -> list[float]:
    data = root / "data" / "data.json"
    args = [
        "--model_name_or_path", str(root / "ckpt"), "--version", "v1", "--data_path", str(data),
        "--image_folder", str(data.parent), "--image_aspect_ratio", "pad", "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-2", "--mm_use_im_patch_token", "False", "--tune_entire_model", "True",
        "--tune_vit_from_layer", "1", "--max_steps", "4", "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3", "--save_steps", "2", "--report_to", "none", "--logging_steps", "1",
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


def _largest_difference(a: Path, b: Path) -> float:
    first, second = _weights(a), _weights(b)
    if first.keys() != second.keys():
        raise SystemExit(f"{a} and {b} hold different tensors")
    return max((first[k] - second[k]).abs().max().item() for k in first)


def _loads(folder: Path) -> bool:
    from share4v.model.builder import load_pretrained_model

    _, model, _, _ = load_pretrained_model(str(folder), None, None, device="cpu")
    return model.config.mm_vision_tower == "vision_tower"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=Path("/tmp/share4v-fsdp-check"))
    args = parser.parse_args()
    root = args.root
    shutil.rmtree(root, ignore_errors=True)
    make_tiny_checkpoint(root / "ckpt")
    make_tiny_dataset(root / "data", "instruct", num_samples=24)

    ddp_losses = _train(root, root / "ddp")
    fsdp_losses = _train(root, root / "fsdp", *FSDP)
    (root / "resumed").mkdir()
    shutil.copytree(root / "fsdp" / "checkpoint-2", root / "resumed" / "checkpoint-2")
    resumed_losses = _train(root, root / "resumed", *FSDP)
    bf16_losses = _train(root, root / "fsdp-bf16", *FSDP, "--bf16", "True")
    result = {
        "gpu": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "accelerate": __import__("accelerate").__version__,
        "losses": {"ddp": ddp_losses, "fsdp": fsdp_losses, "fsdp_resumed_from_2": resumed_losses,
                   "fsdp_bf16": bf16_losses},
        "fsdp_vs_ddp_largest_weight_difference": _largest_difference(root / "ddp", root / "fsdp"),
        "resumed_vs_uninterrupted_largest_weight_difference": _largest_difference(root / "fsdp", root / "resumed"),
        "fsdp_checkpoint_2_vs_ddp": _largest_difference(root / "ddp" / "checkpoint-2", root / "fsdp" / "checkpoint-2"),
        "loadable": {name: _loads(root / name) for name in ("ddp", "fsdp", "resumed", "fsdp-bf16",
                                                            "fsdp/checkpoint-2")},
    }  # fmt: skip

    def same(a: list[float], b: list[float]) -> bool:
        return len(a) == len(b) and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b, strict=True))

    result["checks"] = {
        "fsdp_losses_equal_ddp": same(ddp_losses, fsdp_losses),
        "fsdp_weights_equal_ddp": result["fsdp_vs_ddp_largest_weight_difference"] <= 1e-5,
        "resume_restores_the_run": result["resumed_vs_uninterrupted_largest_weight_difference"] <= 1e-5
        and same(resumed_losses[-2:], fsdp_losses[-2:]),
        "bf16_losses_finite": all(math.isfinite(loss) for loss in bf16_losses),
        "fsdp_checkpoint_2_equals_ddp": result["fsdp_checkpoint_2_vs_ddp"] <= 1e-5,
        "all_load": all(result["loadable"].values()),
    }
    report_checks(args.out, result)


if __name__ == "__main__":
    main()
