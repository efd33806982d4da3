"""benchmarks/check_compile_default.py

On a GPU: the trainer's default compiles the decoder layers (`--compile_decoder_layers` unset, training on one CUDA
GPU), trains through `share4v.train.train`, and follows the losses of the same run with the layers eager. A tiny
world from `train_multigpu_7b.py make-world --tiny`, bf16, 6 steps each; writes both runs' losses, whether the layers
were compiled, and their wall time (the compiled run's includes compiling).

    PYTHONPATH=$PWD python benchmarks/check_compile_default.py --out $OUT/auto-compile.json   # GPU, about a minute
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from share4v.train.train import train


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--world", type=Path, default=Path("/tmp/share4v-tiny-compile-world"), help="made if missing")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    args = parser.parse_args(argv)
    world = args.world
    if not (world / "data.json").exists():
        script = Path(__file__).with_name("train_multigpu_7b.py")
        subprocess.run([sys.executable, str(script), "make-world", str(world), "--tiny", "--rows", "64"], check=True)
    common = [
        "--model_name_or_path", str(world), "--version", "v1", "--data_path", str(world / "data.json"),
        "--image_folder", str(world), "--vision_tower", str(world / "vision_tower"), "--mm_projector_type",
        "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False", "--mm_use_im_patch_token",
        "False", "--image_aspect_ratio", "pad", "--bf16", "True", "--per_device_train_batch_size", "4",
        "--max_steps", str(args.steps), "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
        "--learning_rate", "1e-4", "--seed", "0", "--dataloader_num_workers", "0",
    ]  # fmt: skip
    results = {}
    for name, extra in (("default", []), ("eager", ["--compile_decoder_layers", "False"])):
        start = time.time()
        trainer = train(argv=[*common, "--output_dir", str(world / f"out-{name}"), *extra])
        layers = trainer.model.get_model().layers
        results[name] = {
            "compiled": all(layer._compiled_call_impl is not None for layer in layers),
            "seconds": round(time.time() - start, 1),
            "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        }
        print(json.dumps({"run": name, **results[name]}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
