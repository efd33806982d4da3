"""benchmarks/check_continuous.py

Whether continuous batching (`share4v.inference.continuous`, the engine's queue) writes every request's answer
alone where it matters most, on a GPU: inductor's compiled step under CUDA graphs ("reduce-overhead", the engine's
default there), the fused projections, and the host reading tokens two steps late. The tiny checkpoint of the tests
(fp32), so the answers are exact. `--requests` chats (text-only, one image, two images) with budgets of 3 to 24
tokens are submitted to the engine's queue at once: the first batch takes those queued when the model is free, and
the others join it as rows end. Each answer must equal the request's answer alone (`Share4VEngine.complete`) where
the same requests as one fixed batch do (on a GPU, kernels chosen by batch size round differently, and a near-tie
of the random tiny model can flip: `fixed_batch_differing` and, with the queue's longer cache,
`fixed_batch_longer_cache_differing` list those), and the queue must run fewer steps than
the answers one after another.

`--sampled-neighbours N` also queues N sampled requests (temperature 1.0, top-p 0.9), one after each of the first N
greedy ones: the batches then mix greedy and sampled rows, and a step with any sampled row runs the step that
returns the logits and takes the greedy rows' arg-max outside it. The greedy answers must still equal their answers
alone (the sampled ones are only counted).

`--stops` gives each request a stop string: three characters from the second half of its answer without one (where
it has a second half), so that answers end on the text check the host runs as it reads each token (two steps late
on a GPU) instead of their budget. The answers alone then run the fixed-batch loop with that check, and
`generate_differing` lists the requests whose answer from `generate` (compiled decoding off: its own text check)
differs from theirs. A fixed batch of the first requests (up to `MAX_BATCH_SIZE`) with the first four of those stop
strings also runs on both (`fixed_batch_with_stops_differing`): there the host stops rows while the device goes on.

    python benchmarks/check_continuous.py --out $OUT/continuous.json     # GPU: a minute, most of it compiling
    python benchmarks/check_continuous.py --sampled-neighbours 12 --out $OUT/continuous-mixed.json
    python benchmarks/check_continuous.py --cpu                          # the same on the CPU (eager graphs)

Exits 1 when an answer differs where the fixed batch's does not.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CompileConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import results_path, write_results

from share4v.inference.continuous import JOIN_ROOM
from share4v.inference.engine import MAX_BATCH_SIZE, Chat, GenerationParams, Share4VEngine
from share4v.model.builder import load_pretrained_model
from share4v.testing.make_tiny_checkpoint import make_tiny_checkpoint


class CountingStep:
    """The engine's greedy step, counting its calls."""

    def __init__(self, step):
        self.step, self.calls = step, 0

    def __getattr__(self, name):
        return getattr(self.step, name)

    def __call__(self, *inputs):
        self.calls += 1
        return self.step(*inputs)


def image(seed: int) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (rng.randint(30, 90), rng.randint(30, 90), 3), dtype=np.uint8))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--requests", type=int, default=24, help="chats submitted (default: %(default)s)")
    parser.add_argument("--sampled-neighbours", type=int, default=0, help="sampled requests queued among them")
    parser.add_argument("--stops", action="store_true", help="each request with a stop string from its answer")
    parser.add_argument("--cpu", action="store_true", help="on the CPU, compiled as eager graphs")
    parser.add_argument("--out", type=Path, help="write the results here (JSON)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda:0"  # one GPU, not spread over several
    importlib.import_module("torch._inductor.cudagraph_trees")  # torch < 2.13: CUDA-graph state for this thread
    rng = random.Random(0)
    chats, budgets = [], []
    for index in range(args.requests):
        images = [image(index * 2 + k) for k in range(rng.choice([0, 1, 1, 2]))]
        chats.append(Chat.single(f"Question {index}: " + " ".join(["tell me more"] * rng.randint(1, 6)), images))
        budgets.append(rng.randint(3, 24))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_tiny_checkpoint(Path(tmp) / "tiny")
        tokenizer, model, processor, context = load_pretrained_model(str(checkpoint), None, "tiny", device=device)
    compile_config = CompileConfig(backend="eager") if device == "cpu" else True
    engine = Share4VEngine(tokenizer, model, processor, context, compile_decode=compile_config)
    params = [GenerationParams(temperature=0, max_new_tokens=budget) for budget in budgets]
    generate_differing, stopped, fixed_stops_differing, fixed_stops_ended = [], 0, [], 0
    if args.stops:
        unstopped = [engine.complete([chat], settings)[0] for chat, settings in zip(chats, params, strict=True)]
        params = [replace(settings, stop=(c.text[len(c.text) // 2 :][:3],)) if c.text[len(c.text) // 2 :].strip()
                  else settings for settings, c in zip(params, unstopped, strict=True)]  # fmt: skip
    alone = [engine.complete([chat], settings)[0] for chat, settings in zip(chats, params, strict=True)]
    if args.stops:
        plain = Share4VEngine(tokenizer, model, processor, context, compile_decode=False)  # generate's text check
        by_generate = [plain.complete([chat], settings)[0] for chat, settings in zip(chats, params, strict=True)]
        generate_differing = [index for index, (a, b) in enumerate(zip(alone, by_generate, strict=True))
                              if (a.text, a.token_ids, a.finish_reason)
                              != (b.text, b.token_ids, b.finish_reason)]  # fmt: skip
        stopped = sum(len(a.token_ids) < len(u.token_ids) for a, u in zip(alone, unstopped, strict=True))
        # a fixed batch of several rows with stop strings (the first four), where the host stops rows as it reads
        # their tokens (two steps late on a GPU), against generate's text check on the same batch
        rows = min(MAX_BATCH_SIZE, args.requests)
        first_stops = tuple(dict.fromkeys(stop for settings in params for stop in settings.stop))[:4]
        shared = GenerationParams(temperature=0, max_new_tokens=max(budgets[:rows]), stop=first_stops)
        looped, by_generate = engine.complete(chats[:rows], shared), plain.complete(chats[:rows], shared)
        fixed_stops_differing = [index for index, (a, b) in enumerate(zip(looped, by_generate, strict=True))
                                 if (a.text, a.token_ids, a.finish_reason)
                                 != (b.text, b.token_ids, b.finish_reason)]  # fmt: skip
        fixed_stops_ended = sum(a.finish_reason == "stop" for a in looped)
    alone_steps = sum(max(len(c.token_ids), 1) - 1 for c in alone)  # at most; an answer that ended early took fewer
    # the same first rows as one fixed batch (`fast_greedy.greedy_decode`), to tell batching's own rounding (on a GPU,
    # kernels differ with the batch size) from the queue: each answer cut to the answer alone (greedy answers are
    # prefixes, and a stop string only ends one earlier)
    first = min(MAX_BATCH_SIZE, args.requests)
    fixed = engine.complete(chats[:first], GenerationParams(temperature=0, max_new_tokens=max(budgets[:first])))
    fixed_differing = [index for index in range(first) if not _begins(fixed[index], alone[index])]
    # ... and with a cache as long as the queue's first batch gets (`JOIN_ROOM` more positions): attention then runs
    # over more (masked) positions, which on a GPU also rounds differently
    room = GenerationParams(temperature=0, max_new_tokens=max(budgets[:first]) + JOIN_ROOM)
    fixed_room = engine.complete(chats[:first], room)
    room_differing = [index for index in range(first) if not _begins(fixed_room[index], alone[index])]
    engine._make_greedy_step()
    engine._greedy_step = step = CountingStep(engine._greedy_step)
    requests = [engine.encode(chat) for chat in chats]
    futures, neighbours = [], []
    for index, (request, settings) in enumerate(zip(requests, params, strict=True)):
        futures.append(engine.submit(request, settings))
        if index < args.sampled_neighbours:  # a sampled request right behind it in the queue
            sampled = GenerationParams(temperature=1.0, top_p=0.9, max_new_tokens=budgets[-1 - index])
            neighbours.append(engine.submit(engine.encode(chats[-1 - index]), sampled))
    answers = [future.result(timeout=600) for future in futures]
    sampled_answers = [future.result(timeout=600) for future in neighbours]
    equal = [(a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason)
             for a, b in zip(answers, alone, strict=True)]  # fmt: skip
    results = {
        "device": torch.cuda.get_device_name() if device == "cuda:0" else "cpu",
        "requests": args.requests,
        "budgets": budgets,
        "answers_equal": sum(equal),
        "differing": [index for index, ok in enumerate(equal) if not ok],
        "fixed_batch_differing": fixed_differing,  # of the first rows, as one fixed batch (no queue)
        "fixed_batch_longer_cache_differing": room_differing,  # the same with the queue's cache length
        "joined_differing": [index for index, ok in enumerate(equal) if not ok and index >= first],
        "stops": [list(settings.stop) for settings in params] if args.stops else None,
        "ended_by_stop_string": stopped,  # answers alone that their stop string made shorter
        "generate_differing": generate_differing,  # answers alone that generate's text check ends otherwise
        "fixed_batch_with_stops_differing": fixed_stops_differing,  # rows of a fixed batch with stops, loop vs generate
        "fixed_batch_with_stops_ended": fixed_stops_ended,
        "sampled_neighbours": args.sampled_neighbours,
        "sampled_answers_written": sum(bool(answer.token_ids) for answer in sampled_answers),
        "queue_steps": step.calls,
        "alone_steps_at_most": alone_steps,
        "tokens": sum(len(a.token_ids) for a in answers),
        "seconds": round(time.perf_counter() - started, 1),
        "versions": {"torch": torch.__version__, "transformers": importlib.import_module("transformers").__version__},
    }
    print(json.dumps(results))
    write_results(results_path(args.out, torch.device(device), "continuous"), results)
    unexplained = [index for index in results["differing"] if index not in fixed_differing + room_differing]
    if unexplained:
        raise SystemExit(f"answers differ from the answers alone for requests {unexplained}")
    if generate_differing or fixed_stops_differing:
        raise SystemExit(f"answers with stop strings differ from generate's for requests {generate_differing} "
                         f"(alone) and rows {fixed_stops_differing} (one fixed batch)")  # fmt: skip
    return results


def _begins(answer, alone) -> bool:
    """Whether `answer`'s tokens begin with those of the answer `alone`."""
    return answer.token_ids[: len(alone.token_ids)] == alone.token_ids


if __name__ == "__main__":
    main()
