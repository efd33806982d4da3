"""benchmarks/check_second_gpu.py

The engine on a GPU other than the first (`device="cuda:1"`: its Triton kernels, CUDA graphs and pinned copies must
follow the model's device, not the current one), with the KV cache in the model's dtype and in fp8, and the batch
captioner under torchrun with two processes (each on its LOCAL_RANK's GPU), on a small random model in fp16:

- the engine's greedy answers on cuda:1 (batched, one at a time, streamed) equal those on cuda:0, for each cache
  (on cuda:0 the batch's answers equal the answers alone with the fp16 cache; with the fp8 cache that is reported,
  not checked: the random model's near-ties can flip with the batch's padding);
- a process that used only cuda:1 holds no memory on GPU 0 (nvidia-smi lists it on GPU 1 only);
- torchrun's two captioning shards, merged, give the one-process job's captions (batch size 1: the same numbers).

    python benchmarks/check_second_gpu.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import report_checks

from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.testing.make_tiny_checkpoint import TinySpec, make_tiny_checkpoint
from share4v.testing.tiny_training import make_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
SPEC = TinySpec(hidden_size=256, intermediate_size=512, num_layers=4, num_heads=4, initializer_range=0.05)
CACHES = ("auto", "fp8")
ANSWER_KINDS = ("batched", "one_at_a_time", "streamed")
IMAGES = 8


def chats(images: list[Path]) -> list[Chat]:
    return [Chat.single("Describe the image.", images=[str(images[0])]), Chat.single("Tell me a story."),
            Chat.single("What is in the picture?", images=[str(images[1])])]  # fmt: skip


def gpus_of_this_process() -> list[str]:
    """The GPUs (by index) on which nvidia-smi lists this process."""
    indices = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    index_of = {uuid.strip(): index.strip() for index, uuid in (line.split(",") for line in indices.splitlines())}
    apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid", "--format=csv,noheader"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    return sorted(index_of[uuid.strip()] for pid, uuid in (line.split(",") for line in apps.splitlines())
                  if int(pid) == os.getpid())  # fmt: skip


def engine_answers(root: Path, device: str) -> dict:
    """Run in a process of its own (`--engine-on DEVICE`): the answers for each cache, and where the process is."""
    images = sorted((root / "data" / "images").iterdir())
    params = GenerationParams(temperature=0.0, max_new_tokens=32)
    result: dict = {}
    for cache in CACHES:
        engine = Share4VEngine.from_pretrained(str(root / "ckpt"), device=device, kv_cache_dtype=cache)
        result[cache] = {
            "compiles_decoding": bool(engine.compile_decode),
            "batched": [completion.text for completion in engine.complete(chats(images), params)],
            "one_at_a_time": [engine.complete([chat], params)[0].text for chat in chats(images)],
            "streamed": ["".join(engine.stream(chat, params)) for chat in chats(images)],
        }
        del engine
    result["gpus_of_process"] = gpus_of_this_process()
    result["memory_allocated_on_gpu0"] = torch.cuda.memory_allocated(0) if device != "cuda:0" else None
    return result


def in_subprocess(root: Path, device: str) -> dict:
    out = root / f"engine-{device.replace(':', '')}.json"
    subprocess.run([sys.executable, __file__, "--root", str(root), "--engine-on", device, "--out", str(out)],
                   check=True)  # fmt: skip
    return json.loads(out.read_text())


def caption(root: Path, name: str, launcher: list[str], cache: str) -> list[dict]:
    save = root / name / "captions.json"
    flags = ["--model-path", str(root / "ckpt"), "--images-file", str(root / "data" / "images"), "--save-path",
             str(save), "--batch-size", "1", "--max-new-tokens", "24", "--kv-cache-dtype", cache]  # fmt: skip
    script = str(REPO / "tools" / "share-cap_batch_infer.py")
    subprocess.run([*launcher, script, *flags], check=True)
    if len(launcher) > 1:  # torchrun: merge the shards
        subprocess.run([sys.executable, script, *flags, "--merge"], check=True)
    return json.loads(save.read_text())


def as_dict(rows: list[dict]) -> dict[str, str]:
    """The captioner's final JSON (`[{path: caption}, ...]`) as one mapping."""
    return {path: text for row in rows for path, text in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=Path("/tmp/share4v-second-gpu-check"))
    parser.add_argument("--engine-on", default=None, help=argparse.SUPPRESS)  # the script's own subprocesses
    args = parser.parse_args()
    if args.engine_on:
        args.out.write_text(json.dumps(engine_answers(args.root, args.engine_on)))
        return
    if torch.cuda.device_count() < 2:
        raise SystemExit("needs two GPUs")
    shutil.rmtree(args.root, ignore_errors=True)
    make_tiny_checkpoint(args.root / "ckpt", SPEC)
    make_tiny_dataset(args.root / "data", "caption", num_samples=IMAGES)

    first, second = in_subprocess(args.root, "cuda:0"), in_subprocess(args.root, "cuda:1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    captions = {
        cache: {"one_process": caption(args.root, f"one-{cache}", [sys.executable], cache),
                "torchrun": caption(args.root, f"torchrun-{cache}", torchrun, cache)}
        for cache in CACHES
    }  # fmt: skip
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "cuda0": first, "cuda1": second,
              "captions": captions}  # fmt: skip
    checks = {"cuda1_only_on_gpu1": second["gpus_of_process"] == ["1"] and second["memory_allocated_on_gpu0"] == 0}
    for cache in CACHES:
        on_first, on_second = first[cache], second[cache]
        checks[f"{cache}_compiled_on_both"] = on_first["compiles_decoding"] and on_second["compiles_decoding"]
        checks[f"{cache}_cuda1_equals_cuda0"] = all(on_second[key] == on_first[key] for key in ANSWER_KINDS)
        alone_equal_batched = all(on_first[key] == on_first["batched"] for key in ANSWER_KINDS)
        if cache == "auto":
            checks["auto_batch_equals_single_on_cuda0"] = alone_equal_batched
        else:  # e4m3 keys of a random fp16 model: near-ties flip with the batch's padding (2026-11-28: one answer)
            result[f"{cache}_batch_equals_single_on_cuda0"] = alone_equal_batched
        one, two = (as_dict(captions[cache][name]) for name in ("one_process", "torchrun"))
        checks[f"{cache}_torchrun_captions_equal_one_process"] = len(one) == IMAGES and one == two
    result["checks"] = checks
    report_checks(args.out, result)


if __name__ == "__main__":
    main()
