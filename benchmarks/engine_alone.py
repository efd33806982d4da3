"""benchmarks/engine_alone.py

Whether the engine's bf16 captioning batches fit a GPU and how fast they run, with no baseline run before them in
the process: `bench_generate.py`'s random ShareGPT4V-7B model and prompts (one image + 36..44 text tokens a row,
128 new tokens, greedy), the engine at each `--batch-sizes` (one untimed call, then the median of three; peak memory
allocated over the timed calls, or the out-of-memory error), then transformers' static-cache compiled `generate` at
`--baseline-batch` in the same process. In `bench_generate.py` the baseline runs first at each batch size, and one
that runs out of memory leaves the engine less room.

    PYTHONPATH=$PWD python benchmarks/engine_alone.py --out $OUT/engine-alone.json     # GPU, about 3 minutes
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_generate as bench

from share4v.inference.engine import GenerationParams, Share4VEngine
from share4v.inference.fused_llama import FusedLlama

NEW_TOKENS = 128
TEXT_TOKENS = 36


def timed_median(call, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--batch-sizes", default="128,96", help="the engine's, in run order (default: %(default)s)")
    parser.add_argument("--baseline-batch", type=int, default=96, help="the baseline's (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="write the results here (JSON)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device")
    importlib.import_module("torch._inductor.cudagraph_trees")  # torch < 2.13: CUDA-graph state for this thread
    torch._dynamo.config.recompile_limit = 64  # both models' compiled calls share one cache of compiled code
    device, dtype, shape = torch.device("cuda"), torch.bfloat16, bench.SEVEN_B
    with tempfile.TemporaryDirectory() as tmp:
        tower = Path(tmp) / "clip"
        bench.save_tower(shape, tower, device)
        model = bench.build_share4v(shape, tower, device, dtype)
        FusedLlama.of(model)  # re-laid before the baseline's twin shares the weights
    engine = Share4VEngine(bench.IdTokenizer(), model, None, context_len=4096, compile_decode=True)
    params = GenerationParams(temperature=0, max_new_tokens=NEW_TOKENS)
    results: dict = {"device": torch.cuda.get_device_name(), "engine": {}}
    for rows in (int(size) for size in args.batch_sizes.split(",")):
        batch = engine.collate(bench.share4v_requests(rows, shape, TEXT_TOKENS))
        try:
            engine.run(batch, params)
            torch.cuda.reset_peak_memory_stats()
            seconds = timed_median(lambda batch=batch: engine.run(batch, params))
            peak = torch.cuda.max_memory_allocated() / 2**30
            results["engine"][str(rows)] = {"images_per_s": round(rows / seconds, 3), "seconds": round(seconds, 4),
                                            "peak_gib": round(peak, 2)}  # fmt: skip
        except torch.cuda.OutOfMemoryError as err:
            results["engine"][str(rows)] = {"error": str(err)[:400]}
        print(json.dumps(results), flush=True)
        engine.release_cache()
        bench.free_memory(device)
    llava = bench.build_llava(model, shape, device, dtype)
    bench.free_memory(device)
    rows = args.baseline_batch
    inputs = bench.llava_inputs(rows, shape, TEXT_TOKENS, device, dtype)
    cache_len = -(-(inputs["input_ids"].shape[1] + NEW_TOKENS) // bench.CACHE_BUCKET) * bench.CACHE_BUCKET

    def baseline() -> None:
        llava.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=bench.PAD_ID,
                       cache_implementation="static", max_cache_len=cache_len)  # fmt: skip

    baseline()
    baseline()
    results["baseline"] = {str(rows): {"images_per_s": round(rows / timed_median(baseline), 3)}}
    print(json.dumps(results), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
