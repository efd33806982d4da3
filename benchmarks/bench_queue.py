"""benchmarks/bench_queue.py

What continuous batching buys a server, at ShareGPT4V-7B shape on one GPU (random weights, bf16, the builders and
prompts of `bench_generate.py`: one 336x336 image + 36-44 text tokens per request): `--requests` greedy requests
whose answers have different lengths (token budgets drawn from `--min-tokens`..`--max-tokens`; random weights never
end an answer, so each writes its whole budget) are answered two ways by the same engine:

- `queue`: all submitted at once to `Share4VEngine.submit`: batches of up to 16 rows, a waiting request taking the
  row of an answer that has ended (`share4v.inference.continuous`);
- `static`: fixed batches of 16 in arrival order through `Share4VEngine.run` (what a queue without joins does at
  best, with equal settings): a batch runs until its longest answer ends, each answer cut at its own budget.

`--sample` gives the requests a server's mix of settings instead (`SETTINGS_MIX`: greedy, and sampled at
temperatures 0.2, 0.7 with top-p 0.9, and 1.0, drawn per request): the queue seats them all in one continuous batch,
each row drawn with its own settings, where `static` runs fixed batches of equal settings (what the queue did with
sampled requests before 2026-11-27). Only greedy answers can be compared.

Each is run once untimed (compiling and recording its shapes), then timed: seconds, new tokens/s, compiled steps,
each request's latency (from the start until its answer is back: mean, median, 90th percentile), and whether both
gave every request the same tokens (bf16 on random weights: they may part; reported).

    python benchmarks/bench_queue.py --out $OUT/queue.json      # GPU: about 3 minutes
    python benchmarks/bench_queue.py --sample --out $OUT/queue-sampled.json   # the mix of settings
    python benchmarks/bench_queue.py --smoke                    # tiny shapes on the CPU, seconds
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import CompileConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import (
    IdTokenizer,
    _environment,
    build_share4v,
    emit,
    save_tower,
    shape_and_device,
    share4v_requests,
    synchronize,
)
from check_continuous import CountingStep
from results_file import results_path, write_results

from share4v.inference.engine import MAX_BATCH_SIZE, GenerationParams, Share4VEngine
from share4v.inference.fused_llama import FusedLlama

# --sample: (temperature, top_p) of each request, drawn uniformly; temperature 0 is greedy
SETTINGS_MIX = ((0.0, None), (0.2, None), (0.7, 0.9), (1.0, None))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--requests", type=int, default=64, help="requests (default: %(default)s)")
    parser.add_argument("--min-tokens", type=int, default=None, help="shortest budget (default: 16)")
    parser.add_argument("--max-tokens", type=int, default=None, help="longest budget (default: 256)")
    parser.add_argument("--sample", action="store_true", help=f"requests with a mix of settings {SETTINGS_MIX}")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, fp32, on the CPU: checks the script")
    parser.add_argument("--out", type=Path, help="write the results here (JSON)")
    args = parser.parse_args(argv)
    shape, device = shape_and_device(args.smoke)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    low, high = args.min_tokens or (2 if args.smoke else 16), args.max_tokens or (12 if args.smoke else 256)
    importlib.import_module("torch._inductor.cudagraph_trees")  # torch < 2.13: CUDA-graph state for this thread
    rng = random.Random(0)
    budgets = [rng.randint(low, high) for _ in range(args.requests)]
    mix = [rng.choice(SETTINGS_MIX) if args.sample else SETTINGS_MIX[0] for _ in range(args.requests)]
    settings = [GenerationParams(temperature=temperature, top_p=top_p, max_new_tokens=budget)
                for (temperature, top_p), budget in zip(mix, budgets, strict=True)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        save_tower(shape, Path(tmp) / "clip", device)
        model = build_share4v(shape, Path(tmp) / "clip", device, dtype)
    FusedLlama.of(model)
    compile_config = CompileConfig(backend="eager") if args.smoke else True
    engine = Share4VEngine(IdTokenizer(), model, None, context_len=4096, compile_decode=compile_config)
    requests = share4v_requests(args.requests, shape, 10 if args.smoke else 36)
    engine._make_greedy_step()
    engine._greedy_step = step = CountingStep(engine._greedy_step)

    ended: list[float] = []  # when each request's answer was there, in request order

    def queue() -> list[list[int]]:
        ended[:] = [0.0] * len(requests)
        futures = [engine.submit(request, params) for request, params in zip(requests, settings, strict=True)]
        for index, future in enumerate(futures):
            future.add_done_callback(lambda _, index=index: ended.__setitem__(index, time.perf_counter()))
        answers = [future.result(timeout=1200).token_ids for future in futures]
        return answers

    def static() -> list[list[int]]:
        answers: list[list[int]] = [[] for _ in requests]
        ended[:] = [0.0] * len(requests)
        for (temperature, top_p), members in _groups(mix):  # equal settings, in order of their first request
            for start in range(0, len(members), MAX_BATCH_SIZE):
                chunk = members[start : start + MAX_BATCH_SIZE]
                longest = max(budgets[index] for index in chunk)
                params = GenerationParams(temperature=temperature, top_p=top_p, max_new_tokens=longest)
                completions = engine.run(engine.collate([requests[index] for index in chunk]), params)
                for index, completion in zip(chunk, completions, strict=True):
                    answers[index] = completion.token_ids[: budgets[index]]
                    ended[index] = time.perf_counter()  # a fixed batch answers at its end
        return answers

    results = {"requests": args.requests, "budgets": budgets, "settings": mix, "new_tokens": sum(budgets), "runs": {},
               "environment": _environment(device)}  # fmt: skip
    tokens = {}
    for name, call in (("static", static), ("queue", queue)):
        call()  # compiles and records this way's shapes
        step.calls = 0
        synchronize(device)
        started = time.perf_counter()
        tokens[name] = call()
        synchronize(device)
        seconds = time.perf_counter() - started
        waits = sorted(end - started for end in ended)
        run = {"seconds": round(seconds, 3), "tokens_per_s": round(sum(budgets) / seconds, 1),
               "compiled_steps": step.calls, "mean_latency_s": round(sum(waits) / len(waits), 3),
               "p50_latency_s": round(waits[len(waits) // 2], 3),
               "p90_latency_s": round(waits[int(0.9 * (len(waits) - 1))], 3)}  # fmt: skip
        results["runs"][name] = run
        emit({"measurement": name, **run})
    runs = results["runs"]
    results["queue_speedup"] = round(runs["static"]["seconds"] / runs["queue"]["seconds"], 3)
    results["queue_mean_latency_ratio"] = round(runs["queue"]["mean_latency_s"] / runs["static"]["mean_latency_s"], 3)
    greedy = [index for index, (temperature, _) in enumerate(mix) if temperature == 0]
    results["greedy_answers"] = len(greedy)  # sampled answers differ by their draws: only these compare
    results["answers_equal"] = sum(tokens["queue"][index] == tokens["static"][index] for index in greedy)
    results["answers_written_in_full"] = sum(len(a) == b for a, b in zip(tokens["queue"], budgets, strict=True))
    emit({"measurement": "summary", "queue_speedup": results["queue_speedup"],
          "queue_mean_latency_ratio": results["queue_mean_latency_ratio"],
          "answers_equal": results["answers_equal"], "of": len(greedy)})  # fmt: skip
    write_results(results_path(args.out, device, "queue-sampled" if args.sample else "queue"), results)
    return results


def _groups(mix: list[tuple]) -> list[tuple[tuple, list[int]]]:
    """The indices of the requests of each setting, settings in the order of their first request."""
    groups: dict[tuple, list[int]] = {}
    for index, setting in enumerate(mix):
        groups.setdefault(setting, []).append(index)
    return list(groups.items())


if __name__ == "__main__":
    main()
