"""benchmarks/profile_decode_step.py

Where the time of one greedy decode step goes: the engine's compiled fused step (`share4v.inference.fast_greedy`,
`share4v.inference.fused_llama`) on `bench_generate`'s random ShareGPT4V-7B model (bf16, SDPA) and prompts (one
image + 36..44 text tokens a row), in a 768-position static cache.

For each batch size and variant it writes one JSON line with
- the step's time: a 128-token greedy call minus a 1-token call (the prompt pass), over 127 steps (median of 3);
- a kernel-time table of `--profile-steps` steps alone (torch's profiler, after the prompt pass), each kernel in one
  of the groups of `GROUPS` (matrix products, attention, element-wise and norm kernels, copies, other), in
  microseconds a step, and the rate at which the matrix products read the LLM's weights (meaningful at batch 1,
  where the step reads each weight once and little else). The step's time less its kernels' is the gaps between
  kernels plus the greedy loop's own few kernels a step (padding ended rows, copying the tokens out), which the
  table leaves out;
- the prompt pass (the step's `prompt`: the fused layers over the prompt's embeddings, into the cache): its time
  (`prompt_s`, from the 1-token call), the same groups for one pass (`prompt_groups_us`, its kernels in
  `prompt_kernels`), and the time of the embeddings that feed it (vision tower, projector, splicing:
  `embeddings_s`);
- with `--prompt-compile static` (or `dynamic static`, each in turn), the prompt pass is compiled for the run's
  shapes (`dynamic=False`) rather than as the engine compiles it (one graph for every batch size and length: those
  two sizes dynamic, `fused_llama.compile_prompt_layer`); `all-dynamic` compiles it with every size dynamic
  (`dynamic=True`, the engine's earlier compile): whether dynamic shapes slow its element-wise kernels;
- with `--attention NAME...`, the step runs with each formulation of `decode_attention_options.py` in turn in
  place of `cache_attention.decode_attention` (replaced for the run, restored after; `own`: the step's own). Inductor
  writes the `reduction` formulation as its own kernels, which the table counts as element-wise work.
`common_prefix` counts the greedy tokens a run shares with the first run at its batch size (list `own` first to
compare the others with the step's own attention; bf16 rounding parts them on random weights).

    PYTHONPATH=$PWD python benchmarks/profile_decode_step.py --out $OUT/decode-step.json    # GPU, ~2 min a batch size
    PYTHONPATH=$PWD python benchmarks/profile_decode_step.py --attention own flex --batch-sizes 1
    PYTHONPATH=$PWD python benchmarks/profile_decode_step.py --smoke                          # CPU, tiny shapes
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import (
    PAD_ID,
    IdTokenizer,
    _environment,
    build_share4v,
    emit,
    llm_weight_bytes,
    save_tower,
    shape_and_device,
    share4v_requests,
    synchronize,
)
from decode_attention_options import FORMULATIONS
from results_file import results_path, write_results
from transformers import CompileConfig, StaticCache

from share4v.inference import cache_attention
from share4v.inference.engine import Share4VEngine
from share4v.inference.fast_greedy import GreedyStep, begin, greedy_decode
from share4v.inference.fused_llama import prompt_layer

CACHE_LEN, NEW_TOKENS, TEXT_TOKENS = 768, 128, 36
OWN = "own"  # the step's own attention
# how the prompt pass compiles: as the engine does (compile_prompt_layer), or torch.compile(dynamic=True / False)
PROMPT_COMPILES = ("dynamic", "all-dynamic", "static")
# a kernel goes to the group of the first entry one of whose words its lower-cased name holds: inductor's templates
# (`triton_tem_...`) are flex attention or matrix products, its other kernels (triton on a GPU, C++ on the CPU)
# element-wise or norm work even where their names list the attention they feed
GROUPS = (
    ("attention", ("triton_tem_fused_flex", "flex_attention")),
    ("matrix products", ("triton_tem_",)),
    ("element-wise and norms", ("triton_", "cpp_fused")),
    ("attention", ("attention", "sdpa", "fmha", "flash", "cudnn", "flex")),
    ("matrix products", ("gemm", "gemv", "nvjet", "cutlass", "splitk", "aten::mm", "aten::addmm", "aten::bmm")),
    ("copies", ("memcpy", "memset", "copy", "multi_tensor_apply")),
    ("element-wise and norms", ("elementwise", "reduce_kernel", "at::native::")),
)


def group_of(kernel: str) -> str:
    name = kernel.lower()
    return next((group for group, words in GROUPS if any(word in name for word in words)), "other")


@contextlib.contextmanager
def attention_replaced(name: str):
    """`cache_attention.decode_attention` as `decode_attention_options.FORMULATIONS[name]` (`own`: unchanged)
    inside."""
    own = cache_attention.decode_attention
    if name != OWN:
        cache_attention.decode_attention = FORMULATIONS[name]
    try:
        yield
    finally:
        cache_attention.decode_attention = own


def profiled(call, repeats: int, device: torch.device, per: str) -> list[dict]:
    """Each kernel of `repeats` calls of `call`: its group, time (`us_per_<per>`) and calls a call, longest first.
    On a GPU only device activity is recorded, so the table holds kernels alone (with operators recorded too, an
    operator's device time would count its kernels' again); on the CPU, operators' self times."""
    from torch.profiler import ProfilerActivity, profile

    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    synchronize(device)
    with profile(activities=[activity]) as profiler:
        for _ in range(repeats):
            call()
        synchronize(device)
    table = []
    for event in profiler.key_averages():
        spent = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        if spent > 0:
            times = {f"us_per_{per}": round(spent / repeats, 2), f"calls_per_{per}": round(event.count / repeats, 2)}
            table.append({"kernel": event.key[:120], "group": group_of(event.key), **times})
    return sorted(table, key=lambda row: -row[f"us_per_{per}"])


def grouped(table: list[dict], key: str) -> dict[str, float]:
    """The table's `key` (microseconds) summed by group."""
    return {group: round(sum(row[key] for row in table if row["group"] == group), 1)
            for group in [*dict.fromkeys(name for name, _ in GROUPS), "other"]}  # fmt: skip


def step_kernels(step: GreedyStep, cache, embeds, mask, steps: int, device: torch.device) -> list[dict]:
    """The kernels of `steps` decode steps; the prompt pass runs before the profiler starts."""
    full_mask, positions, token = begin(step, cache, CACHE_LEN, embeds, mask)
    position, cache_position = positions[:, -1:] + 1, torch.tensor([mask.shape[1]], device=device)
    last = [token]

    def one_step() -> None:
        last[0] = step(last[0], position, cache_position, full_mask, cache)
        position.add_(1)
        cache_position.add_(1)

    return profiled(one_step, steps, device, "step")


def prompt_kernels(step: GreedyStep, cache, embeds, mask, device: torch.device) -> list[dict]:
    """The kernels of one prompt pass (the step's `prompt`, into the reset cache)."""
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)

    def one_pass() -> None:
        cache.reset()
        step.prompt(embeds, mask, positions, cache)

    return profiled(one_pass, 1, device, "pass")


def measure(engine, step, rows: int, shape, device, profile_steps: int, reference: dict) -> dict:
    """One run's record (see the module docstring) for `rows` of bench_generate's prompts; `reference` holds the
    first run's tokens at each batch size."""
    batch = engine.collate(share4v_requests(rows, shape, TEXT_TOKENS))
    with torch.inference_mode():
        embeds, mask = engine._prompt_embeddings(batch)
        cache = StaticCache(config=engine.model.config, max_cache_len=CACHE_LEN)

        def timed(new_tokens: int) -> tuple[float, list[list[int]]]:
            synchronize(device)
            start = time.perf_counter()
            tokens = greedy_decode(step, cache, CACHE_LEN, embeds, mask, new_tokens, None, PAD_ID)
            synchronize(device)
            return time.perf_counter() - start, tokens.tolist()

        start = time.perf_counter()
        for _ in range(2):  # compiles, then records the CUDA graphs
            timed(NEW_TOKENS)
        compile_s = time.perf_counter() - start
        runs = [timed(NEW_TOKENS) for _ in range(3)]
        prompt_s = statistics.median(timed(1)[0] for _ in range(3))
        embeddings_s = statistics.median(_seconds(lambda: engine._prompt_embeddings(batch), device) for _ in range(3))
        steps = step_kernels(step, cache, embeds, mask, profile_steps, device)
        prompt = prompt_kernels(step, cache, embeds, mask, device)
    step_s = (statistics.median(run[0] for run in runs) - prompt_s) / (NEW_TOKENS - 1)
    tokens = runs[0][1]
    first = reference.setdefault(rows, tokens)
    groups = grouped(steps, "us_per_step")
    products_s = groups["matrix products"] / 1e6
    return {
        "rows": rows, "step_ms": round(step_s * 1e3, 3), "decode_tok_s": round(rows / step_s, 1),
        "prompt_s": round(prompt_s, 4), "embeddings_s": round(embeddings_s, 4), "compile_s": round(compile_s, 1),
        "common_prefix": statistics.mean(_common(ours, theirs) for ours, theirs in zip(tokens, first, strict=True)),
        "kernel_us_per_step": round(sum(groups.values()), 1), "groups_us_per_step": groups,
        "weights_read_tb_per_s_in_products": round(llm_weight_bytes(engine.model) / products_s / 1e12, 3)
        if products_s else None,
        "prompt_groups_us": grouped(prompt, "us_per_pass"),
        "kernels": steps[:30], "prompt_kernels": prompt[:20],
    }  # fmt: skip


def _seconds(call, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def _common(ours: list[int], theirs: list[int]) -> int:
    return next((index for index, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), len(ours))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--batch-sizes", default="1,64", help="comma-separated (default: %(default)s)")
    parser.add_argument("--attention", nargs="+", default=[OWN], choices=[OWN, *FORMULATIONS],
                        help="run the step with these formulations of decode_attention_options.py, each in turn "
                        "(own: the step's own; default: %(default)s); they take as many key/value heads as query "
                        "heads, as Vicuna-7B has")  # fmt: skip
    parser.add_argument("--prompt-compile", nargs="+", default=["dynamic"], choices=list(PROMPT_COMPILES),
                        help="compile the prompt pass as the engine does (batch size and length dynamic), "
                        "with every size dynamic, or for each run's shapes, each in turn "
                        "(default: %(default)s)")  # fmt: skip
    parser.add_argument("--profile-steps", type=int, default=32, help="steps profiled (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, fp32, on the CPU: checks the script")
    parser.add_argument("--out", type=Path, help="write the results here (JSON)")
    args = parser.parse_args(argv)
    shape, device = shape_and_device(args.smoke)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    with tempfile.TemporaryDirectory() as tmp:
        save_tower(shape, Path(tmp) / "clip", device)
        model = build_share4v(shape, Path(tmp) / "clip", device, dtype)
    engine = Share4VEngine(IdTokenizer(), model, None, context_len=4096)  # prepares the prompts only
    # on the CPU (--smoke): dynamo's graph capture without inductor's code generation, seconds rather than minutes
    config = CompileConfig(backend="eager") if args.smoke else CompileConfig()
    options = {key: getattr(config, key) for key in ("fullgraph", "dynamic", "backend", "mode", "options")}
    results = {**_environment(device), "cache_len": CACHE_LEN, "new_tokens": NEW_TOKENS,
               "llm_weight_bytes": llm_weight_bytes(model), "runs": [], "errors": []}  # fmt: skip
    reference: dict[int, list[list[int]]] = {}
    for rows in (int(size) for size in args.batch_sizes.split(",")):
        for attention, prompt_compile in itertools.product(args.attention, args.prompt_compile):
            torch._dynamo.reset()  # each variant compiles afresh
            try:
                with attention_replaced(attention):
                    step = GreedyStep(model, options, fused=True)
                    if prompt_compile != "dynamic":  # the step's own compile_prompt_layer otherwise
                        every_size = prompt_compile == "all-dynamic"
                        step.prompt_layer = torch.compile(prompt_layer, dynamic=every_size, backend=options["backend"])
                    record = {"attention": attention, "prompt_compile": prompt_compile,
                              **measure(engine, step, rows, shape, device, args.profile_steps, reference)}  # fmt: skip
            except Exception as err:  # a kernel this device lacks: recorded, the others go on
                if (attention, prompt_compile) == (OWN, "dynamic"):
                    raise  # the engine's own step failed: nothing to compare with
                error = {"attention": attention, "prompt_compile": prompt_compile, "rows": rows,
                         "error": f"{type(err).__name__}: {err}"[:300]}  # fmt: skip
                results["errors"].append(error)
                emit(error)
            else:
                results["runs"].append(record)
                emit({key: value for key, value in record.items() if not key.endswith("kernels")})
            write_results(results_path(args.out, device, "decode-step"), results)
    return results


if __name__ == "__main__":
    main()
