"""benchmarks/time_warm_up.py

How long `Share4VEngine.warm_up` takes at ShareGPT4V-7B shape (`bench_generate`'s random model, bf16, compiled
decoding) and what the first requests wait after it: the server and the demo run the warm-up before they take
requests, so that no request waits for the compiler.

After the warm-up, each request of `REQUESTS` (shapes the warm-up did not run: images, other batch sizes, longer
answers; greedy and sampled) runs twice; `first_s` against `again_s` is what its first call still waits for (a CUDA
graph recorded for a new cache length, say), where a compile would take 20-60 s. Text comes from the shipped
miniature tokenizer (its ids are valid rows of the 7B vocabulary).

    PYTHONPATH=$PWD python benchmarks/time_warm_up.py --out $OUT/warm-up.json      # GPU, ~5 min at 7B
    PYTHONPATH=$PWD python benchmarks/time_warm_up.py --smoke                      # CPU, tiny shapes, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import _environment, build_share4v, emit, save_tower, shape_and_device, synchronize
from PIL import Image
from results_file import results_path, write_results
from transformers import AutoTokenizer, CLIPImageProcessor, CompileConfig

from share4v.inference.engine import Chat, GenerationParams, Share4VEngine

TOKENIZER = Path(__file__).resolve().parents[1] / "share4v" / "assets" / "share4v-miniature"
# (name, rows, temperature, new tokens, with an image)
REQUESTS = (
    ("greedy, 1 row, image", 1, 0.0, 64, True),
    ("greedy, 5 rows, image", 5, 0.0, 128, True),
    ("sampled, 1 row, image", 1, 1.0, 64, True),
    ("sampled, 4 rows, text", 4, 1.0, 200, False),
    ("greedy, 16 rows, image", 16, 0.0, 128, True),
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, fp32, on the CPU: checks the script")
    parser.add_argument("--out", type=Path, help="write the results here (JSON)")
    args = parser.parse_args(argv)
    importlib.import_module("torch._inductor.cudagraph_trees")  # on the main thread before the engine's (torch 2.11)
    shape, device = shape_and_device(args.smoke)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    if args.smoke:  # the tiny shape's vocabulary must hold the tokenizer's ids
        shape = dataclasses.replace(shape, vocab=len(tokenizer))
    with tempfile.TemporaryDirectory() as tmp:
        save_tower(shape, Path(tmp) / "clip", device)
        model = build_share4v(shape, Path(tmp) / "clip", device, torch.float32 if args.smoke else torch.bfloat16)
    size = shape.image_size
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    # on the CPU (--smoke): dynamo's graph capture without inductor's code generation, seconds rather than minutes
    compile_decode = CompileConfig(backend="eager") if args.smoke else True
    engine = Share4VEngine(tokenizer, model, processor, context_len=4096, compile_decode=compile_decode)
    results = {**_environment(device), "requests": []}
    start = time.perf_counter()
    results["warm_up_generations"] = engine.warm_up()
    synchronize(device)
    results["warm_up_s"] = round(time.perf_counter() - start, 1)
    emit({"warm_up_s": results["warm_up_s"], "generations": results["warm_up_generations"]})
    image = Image.new("RGB", (400, 300), (120, 30, 200))
    for name, rows, temperature, new_tokens, with_image in REQUESTS:
        chat = Chat.single("Describe the image in detail.", [image] if with_image else [])
        params = GenerationParams(temperature=temperature, max_new_tokens=new_tokens)
        seconds, failed = [], []
        for _ in range(2):
            start = time.perf_counter()
            completions = engine.complete([chat] * rows, params)
            synchronize(device)
            seconds.append(round(time.perf_counter() - start, 2))
            failed += [completion.error for completion in completions if completion.error]
        record = {"request": name, "first_s": seconds[0], "again_s": seconds[1], "errors": failed}
        results["requests"].append(record)
        emit(record)
        write_results(results_path(args.out, device, "warm-up"), results)
    write_results(results_path(args.out, device, "warm-up"), results)
    return results


if __name__ == "__main__":
    main()
