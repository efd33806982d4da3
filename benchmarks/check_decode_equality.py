"""benchmarks/check_decode_equality.py

Whether the engine's fast decoding (`compile_decode`: a static KV cache and a compiled decode step) computes what its
eager path (dynamic cache, no compilation) computes, at ShareGPT4V-7B shape on the GPU (random weights, the prompts
and builders of `bench_generate.py`):

- bf16, teacher-forced: both paths decode the same tokens (the eager path's own greedy answer, forced by a logits
  processor) and the logits each computes at every position are compared with the other's and with the same model's
  fp32 logits on those tokens (eager, full precision: the reference): top-1 agreement (the share of positions where
  two put the same token first) and absolute differences, next to the logits' spread. Random bf16 weights give flat,
  near-tied logits, so bf16 rounding alone moves many top-1 choices; the fast path passes when it stays as close to
  the fp32 reference as the eager path does (`--tolerance`).
- bf16, the prompt pass: the last position's logits of `--prompt-rows` prompts from the greedy loop's prompt pass
  (the fused layers, compiled for any batch and length: `fused_prompt`) and from the model's own forward, each
  compared with the model's fp32 forward; the fused pass passes when it stays as close to fp32 as the model's own
  bf16 forward does (`--tolerance`). Where the engine runs the pass in row groups (`fused_llama.
  PROMPT_GROUP_POSITIONS`; and with `--smoke`), the same pass also runs over the whole batch at once with its keys
  and values written by the cache's own `update`, as before the pass wrote its row groups' into the cache itself:
  the logits are compared, and the caches by `cache_digest` (`cache_equal_to_one_group_update`; a failure where
  the logits are equal bit for bit and the caches are not).
- fp32, free-running: the greedy tokens of both paths for `--fp32-rows` prompts, which must be equal (the fast path
  here is the engine's own greedy loop, `share4v.inference.fast_greedy`, with its default fused q/k/v and gate/up
  step and fused prompt pass; `--unfused-projections`: with the model's own forward for both).

`--kv-cache-dtype fp8` adds the engine's own loop, teacher-forced on the same tokens (prompt pass, then the compiled
step), once over its default cache and once over an fp8 one (`share4v.inference.fp8_cache`): how much further from
fp32 rounding keys and values to e4m3 takes the logits (`teacher_forced.loop_vs_fp32`, `loop_fp8_kv_vs_fp32`);
reported, not a pass criterion.

    python benchmarks/check_decode_equality.py --out benchmarks/results/   # GPU: DATE-GPU-decode-equality.json
    python benchmarks/check_decode_equality.py --smoke                     # tiny shapes on the CPU, in seconds

Exits 1 when the fast path is further from the fp32 reference than the eager path, the fused prompt pass further
than the model's own bf16 forward, or an fp32 row differs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import CompileConfig, LogitsProcessor, StaticCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import (
    IdTokenizer,
    _environment,
    build_share4v,
    emit,
    free_memory,
    save_tower,
    shape_and_device,
    share4v_requests,
)
from results_file import results_path, write_results

from share4v.inference.engine import GenerationParams, Share4VEngine
from share4v.inference.fp8_cache import KV_CACHE_DTYPES
from share4v.inference.fused_llama import PROMPT_GROUP_POSITIONS


class ForceTokens(LogitsProcessor):
    """Makes generate() pick `tokens[:, step]` at each step, whatever the model's logits (which `output_logits`
    still returns as computed)."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens, self.step = tokens, 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, self.tokens[:, self.step : self.step + 1].to(scores.device), 0.0)
        self.step += 1
        return forced


def step_logits(engine: Share4VEngine, batch, new_tokens: int, forced: torch.Tensor | None = None):
    """The engine's own generate() call for `batch` (greedy), returning its tokens [B, T] and raw logits [B, T, V];
    with `forced`, the tokens are those."""
    kwargs = engine._generate_kwargs(batch, GenerationParams(temperature=0, max_new_tokens=new_tokens))
    kwargs.update(output_logits=True, return_dict_in_generate=True)
    if forced is not None:
        kwargs["logits_processor"] = [ForceTokens(forced)]
    output = engine._generate(kwargs).result()
    return output.sequences[:, -new_tokens:].cpu(), torch.stack(output.logits, dim=1).float().cpu()


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> dict:
    """Top-1 agreement and absolute differences of two [B, T, V] logits tensors."""
    difference = (logits - reference).abs()
    return {
        "top1_agreement": round((logits.argmax(-1) == reference.argmax(-1)).float().mean().item(), 5),
        "max_abs_logit_difference": round(difference.max().item(), 4),
        "mean_abs_logit_difference": round(difference.mean().item(), 5),
    }


def cache_digest(cache, length: int, rows_at_once: int = 16) -> list[int]:
    """Two integer sums of the bytes of every layer's keys and values in slots `0..length-1` (one plain, one with
    each byte weighted by its place): equal for equal caches, and a changed, missing or misplaced value changes
    them (barring a collision). Computed a few rows at a time, so that a 128-row 7B cache needs no copy of it."""
    digest = []
    for layer in cache.layers:
        for tensor in (layer.keys, layer.values):
            plain = weighted = offset = 0
            for start in range(0, tensor.shape[0], rows_at_once):
                data = tensor[start : start + rows_at_once, :, :length].contiguous().view(torch.uint8).flatten()
                data = data.to(torch.int64)
                places = (torch.arange(data.numel(), device=data.device) + offset) % 65521 + 1
                offset += data.numel()
                plain += int(data.sum())
                weighted += int((data * places).sum())
            digest += [plain, weighted]
    return digest


def prompt_logits(
    engine: Share4VEngine,
    batch,
    fused: bool,
    group_positions: int | None = PROMPT_GROUP_POSITIONS,
    allocate: bool = True,
    digests: list | None = None,
) -> torch.Tensor:
    """The last position's logits `[B, V]` of `batch`'s prompts: the greedy loop's prompt pass over the fused
    layers (`fused`, compiled as the engine runs it, in row groups of `group_positions`; None: the whole batch at
    once) or the model's own forward. The fused pass writes into a static cache allocated first, as the engine's
    loops run it (`allocate`; else the cache is allocated at its first `update`); `digests` gets that cache's
    `cache_digest`."""
    model = engine.model
    with torch.inference_mode():
        embeds, mask = engine._prompt_embeddings(batch)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        if not fused:
            output = model(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=1, use_cache=False
            )  # a 128-row fp32 cache alone would take 83 GB at 7B
            return output.logits[:, -1].float().cpu()
        engine._make_greedy_step()
        step = engine._greedy_step
        step.check_weights()
        cache = StaticCache(config=model.config, max_cache_len=mask.shape[1])
        if allocate:  # as the engine's loops do: the pass writes into its slots itself
            engine._allocate_cache(cache, mask.shape[0])
        logits = step.fused.prompt_logits(
            embeds, positions, mask, cache, step.prompt_layer, group_positions=group_positions
        )
        if digests is not None:
            digests.append(cache_digest(cache, mask.shape[1]))
        return logits.float().cpu()


def loop_logits(engine: Share4VEngine, batch, forced: torch.Tensor) -> torch.Tensor:
    """The engine's own loop's logits `[B, T, V]` over `forced` tokens `[B, T]`: its prompt pass (the fused layers)
    for the first, then its compiled step fed the forced tokens (with the engine's `kv_cache_dtype`), on the engine's
    decoding thread, where its CUDA graphs live."""
    engine._make_greedy_step()
    step = engine._greedy_step

    def work() -> torch.Tensor:
        step.check_weights()
        embeds, mask = engine._prompt_embeddings(batch)
        (rows, prompt), device = mask.shape, embeds.device
        cache = StaticCache(config=engine.model.config, max_cache_len=prompt + forced.shape[1])
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = [step.fused.prompt_logits(embeds, positions, mask, cache, step.prompt_layer, step.kv_fp8)]
        step_mask = torch.ones((rows, prompt + forced.shape[1]), dtype=mask.dtype, device=device)
        step_mask[:, :prompt] = mask
        position, at = positions[:, -1:] + 1, torch.tensor([prompt], device=device)
        for index in range(forced.shape[1] - 1):
            torch.compiler.cudagraph_mark_step_begin()
            token = forced[:, index : index + 1].to(device)
            logits.append(step.compiled_logits(token, position, at, step_mask, cache).clone())
            position += 1
            at += 1
        return torch.stack(logits, dim=1).float().cpu()

    return engine._on_decoding_thread(work).result()


def free_running(fast: Share4VEngine, eager: Share4VEngine, batch, new_tokens: int) -> dict:
    params = GenerationParams(temperature=0, max_new_tokens=new_tokens)
    ours = [c.token_ids for c in fast.run(batch, params)]
    theirs = [c.token_ids for c in eager.run(batch, params)]
    prefixes = []
    for a, b in zip(ours, theirs, strict=True):
        prefixes.append(next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))))
    return {
        "rows": len(ours),
        "rows_equal": sum(a == b for a, b in zip(ours, theirs, strict=True)),
        "common_prefix": prefixes,
        "fast_path_static_cache": fast._cache_shape,
    }


def engines(model, compile_config, fused: bool = True) -> tuple[Share4VEngine, Share4VEngine]:
    fast = Share4VEngine(
        IdTokenizer(), model, None, context_len=4096, compile_decode=compile_config, fused_projections=fused
    )
    return fast, Share4VEngine(IdTokenizer(), model, None, context_len=4096, compile_decode=False)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--rows", type=int, default=8, help="bf16 teacher-forced batch (default: %(default)s)")
    parser.add_argument("--prompt-rows", type=int, default=64, help="bf16 prompt passes (default: %(default)s)")
    parser.add_argument("--fp32-rows", type=int, default=3, help="fp32 free-running prompts (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per row (default: 128)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="fail when the fast path's top-1 agreement with fp32 is this far under the eager path's",
    )
    parser.add_argument(
        "--unfused-projections", action="store_true", help="the fast path's greedy loop runs the model's forward"
    )
    parser.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES,
                        help="fp8: also the engine's loop over an fp8 cache, teacher-forced (reported)")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (fp32 both times)")
    parser.add_argument("--out", type=Path, help="results JSON, or a folder for DATE-GPU-decode-equality.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    shape, device = shape_and_device(args.smoke)
    new_tokens = args.new_tokens or (8 if args.smoke else 128)
    compile_config = CompileConfig(backend="eager") if args.smoke else True
    results = {"shape": shape.__dict__, "new_tokens": new_tokens, "fused_projections": not args.unfused_projections,
               "environment": _environment(device)}  # fmt: skip

    def batch_of(engine: Share4VEngine, rows: int):
        return engine.collate(share4v_requests(rows, shape, 10 if args.smoke else 36))

    with tempfile.TemporaryDirectory() as tmp:
        tower_dir = Path(tmp) / "clip"
        save_tower(shape, tower_dir, device)
        # the low-precision model is the fp32 one rounded, so that fp32 below is the same model at full precision
        low = torch.float32 if args.smoke else torch.bfloat16
        model = build_share4v(shape, tower_dir, device, torch.float32).to(low)
        fast, eager = engines(model, compile_config)
        tokens, eager_logits = step_logits(eager, batch_of(eager, args.rows), new_tokens)
        forced, fast_logits = step_logits(fast, batch_of(fast, args.rows), new_tokens, forced=tokens)
        assert torch.equal(forced, tokens), "the forced path did not follow the given tokens"
        prompts = batch_of(fast, args.prompt_rows)
        digests = []
        fused_prompt = prompt_logits(fast, prompts, fused=True, digests=digests)
        own_prompt = prompt_logits(fast, prompts, fused=False)
        # the same fused pass over the whole batch at once, its keys and values written by the cache's own `update`
        # (the engine's way before the pass wrote them itself): where the engine's pass runs in row groups, or --smoke
        grouped = prompts.input_ids.shape[0] * prompts.prompt_len > PROMPT_GROUP_POSITIONS
        whole_prompt = None
        if grouped or args.smoke:
            whole_prompt = prompt_logits(fast, prompts, True, group_positions=None, allocate=False, digests=digests)
        cache_shape = fast._cache_shape
        loops = {}
        if args.kv_cache_dtype == "fp8":  # the loop over each cache, fed the same tokens
            loops["loop"] = loop_logits(fast, batch_of(fast, args.rows), tokens)
            fp8 = Share4VEngine(IdTokenizer(), model, None, context_len=4096, compile_decode=compile_config,
                                kv_cache_dtype="fp8")  # fmt: skip
            loops["loop_fp8_kv"] = loop_logits(fp8, batch_of(fp8, args.rows), tokens)
            del fp8
        del model, fast, eager
        free_memory(device)

        model = build_share4v(shape, tower_dir, device, torch.float32)
        fast, eager = engines(model, compile_config, not args.unfused_projections)
        _, reference = step_logits(eager, batch_of(eager, args.rows), new_tokens, forced=tokens)
        results["teacher_forced"] = {
            "dtype": str(low).removeprefix("torch."), "rows": args.rows, "positions": int(tokens.numel()),
            "fast_vs_eager": agreement(fast_logits, eager_logits),
            "eager_vs_fp32": agreement(eager_logits, reference),
            "fast_vs_fp32": agreement(fast_logits, reference),
            "logit_std": round(reference.std().item(), 4), "fast_path_static_cache": cache_shape,
            **{f"{name}_vs_fp32": agreement(logits, reference) for name, logits in loops.items()},
        }  # fmt: skip
        emit({"measurement": "teacher_forced", **results["teacher_forced"]})
        prompt_reference = prompt_logits(eager, batch_of(eager, args.prompt_rows), fused=False)
        results["prompt_pass"] = {
            "dtype": str(low).removeprefix("torch."), "rows": args.prompt_rows,
            "fused_vs_model": agreement(fused_prompt, own_prompt),
            "model_vs_fp32": agreement(own_prompt, prompt_reference),
            "fused_vs_fp32": agreement(fused_prompt, prompt_reference),
            **({} if whole_prompt is None else {
                "fused_one_group_vs_fp32": agreement(whole_prompt, prompt_reference),
                "fused_vs_fused_one_group": agreement(fused_prompt, whole_prompt),
                "cache_equal_to_one_group_update": digests[0] == digests[1],
            }),
            "logit_std": round(prompt_reference.std().item(), 4),
        }  # fmt: skip
        emit({"measurement": "prompt_pass", **results["prompt_pass"]})
        results["free_running"] = {
            "dtype": "float32",
            **free_running(fast, eager, batch_of(eager, args.fp32_rows), new_tokens),
        }
        emit({"measurement": "free_running", **results["free_running"]})
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    write_results(results_path(args.out, device, "decode-equality"), results)
    failures = []
    forced, free = results["teacher_forced"], results["free_running"]
    fast_top1, eager_top1 = forced["fast_vs_fp32"]["top1_agreement"], forced["eager_vs_fp32"]["top1_agreement"]
    if fast_top1 < eager_top1 - args.tolerance:
        failures.append(f"fast path's top-1 agreement with fp32 {fast_top1} < the eager path's {eager_top1}")
    fused_top1 = results["prompt_pass"]["fused_vs_fp32"]["top1_agreement"]
    own_top1 = results["prompt_pass"]["model_vs_fp32"]["top1_agreement"]
    if fused_top1 < own_top1 - args.tolerance:
        failures.append(f"fused prompt pass's top-1 agreement with fp32 {fused_top1} < the model's own {own_top1}")
    one_group = results["prompt_pass"].get("fused_vs_fused_one_group")
    if (
        one_group
        and one_group["max_abs_logit_difference"] == 0
        and not results["prompt_pass"]["cache_equal_to_one_group_update"]
    ):
        failures.append("the fused prompt pass wrote other keys or values than the cache's own update, same logits")
    if free["rows_equal"] < free["rows"]:
        differing = free["rows"] - free["rows_equal"]
        failures.append(f"fp32 greedy tokens differ in {differing} of {free['rows']} rows")
    if failures:
        raise SystemExit("; ".join(failures))
    return results


if __name__ == "__main__":
    main()
