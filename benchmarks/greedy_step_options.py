"""benchmarks/greedy_step_options.py

Batch-1 greedy decoding through the engine's compiled step (`share4v.inference.fast_greedy`) at Vicuna-7B shape
(random weights, bf16, SDPA; a 620-token prompt, 128 new tokens in a 768-position static cache) under several sets
of inductor options, each in its own process (inductor's settings are process-wide):

    PYTHONPATH=$PWD python benchmarks/greedy_step_options.py --out benchmarks/results/DATE-GPU-greedy-step-options.json
    PYTHONPATH=$PWD python benchmarks/greedy_step_options.py --tiny --option-sets default   # a CPU smoke run

The option sets (`OPTION_SETS`):
- `default`: the engine's (`CompileConfig()`: inductor, "reduce-overhead", i.e. CUDA graphs);
- `freezing`: `torch._inductor.config.freezing`, which folds the weights into the compiled graph as constants and
  concatenates linears that share an input (q/k/v, gate/up) into one matrix each — one larger matrix-vector
  product instead of several small ones, at the price of those copies;
- `coordinate_descent`: `torch._inductor.config.coordinate_descent_tuning` (tunes the generated kernels' launch
  parameters);
- `freezing_coordinate_descent`: both;
- `freezing_per_compile`: freezing passed in the compile's own options (with CUDA graphs), without the
  process-wide switch.

Each writes one JSON line: decode tokens/s (new tokens after the first over the time past the prompt pass), the
bandwidth that rate reads the LLM's weights at, the memory decoding added on top of the model (the freezing copies
show up here), compile time and the first 16 tokens.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OPTION_SETS = ("default", "freezing", "coordinate_descent", "freezing_coordinate_descent", "freezing_per_compile")
PROMPT, NEW_TOKENS, CACHE_LEN = 620, 128, 768


def _compile_config(option_set: str):
    """The step's `CompileConfig`, after setting the process-wide inductor switches the option set names."""
    from transformers import CompileConfig

    if option_set not in OPTION_SETS:
        raise SystemExit(f"unknown option set {option_set!r}: choose from {', '.join(OPTION_SETS)}")
    torch._inductor.config.freezing = option_set in ("freezing", "freezing_coordinate_descent")
    torch._inductor.config.coordinate_descent_tuning = "coordinate_descent" in option_set
    if option_set == "freezing_per_compile":  # torch.compile takes a mode or options, not both
        return CompileConfig(mode=None, options={"freezing": True, "triton.cudagraphs": True})
    return CompileConfig()


def measure(option_set: str, tiny: bool) -> dict:
    import torch._inductor.cudagraph_trees  # imported on the main thread first (torch 2.11)
    from transformers import LlamaConfig, LlamaForCausalLM, StaticCache

    from share4v.inference.fast_greedy import GreedyStep, greedy_decode

    config = _compile_config(option_set)
    device = torch.device("cpu" if tiny else "cuda")
    llm = LlamaConfig(
        hidden_size=64 if tiny else 4096, intermediate_size=128 if tiny else 11008,
        num_hidden_layers=2 if tiny else 32, num_attention_heads=4 if tiny else 32, vocab_size=32000,
        max_position_embeddings=4096, attn_implementation="sdpa",
    )  # fmt: skip
    new_tokens = 8 if tiny else NEW_TOKENS
    torch.manual_seed(0)
    dtype = torch.float32 if tiny else torch.bfloat16
    with torch.device(device):
        torch.set_default_dtype(dtype)
        model = LlamaForCausalLM(llm).eval()
        torch.set_default_dtype(torch.float32)
    model_bytes = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    ids = torch.randint(3, llm.vocab_size, (1, PROMPT), device=device, generator=torch.Generator(device).manual_seed(1))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        embeds, mask = model.get_input_embeddings()(ids), torch.ones_like(ids)
        cache = StaticCache(config=llm, max_cache_len=CACHE_LEN)
        step = GreedyStep.for_model(model, config)

        def timed(count: int) -> tuple[float, torch.Tensor]:
            sync()
            start = time.perf_counter()
            tokens = greedy_decode(step, cache, CACHE_LEN, embeds, mask, count, None, 0)
            sync()
            return time.perf_counter() - start, tokens

        start = time.perf_counter()
        for _ in range(2):  # compiles, then records the CUDA graph
            timed(new_tokens)
        compile_s = time.perf_counter() - start
        decoding_bytes = (torch.cuda.memory_allocated() if device.type == "cuda" else 0) - model_bytes
        prompt_s = min(timed(1)[0] for _ in range(3))
        runs = [timed(new_tokens) for _ in range(3)]
    seconds = min(run[0] for run in runs)
    rate = (new_tokens - 1) / (seconds - prompt_s)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weight_bytes -= model.get_input_embeddings().weight.numel() * model.get_input_embeddings().weight.element_size()
    return {
        "option_set": option_set, "compile_s": round(compile_s, 1), "prompt_s": round(prompt_s, 4),
        "seconds": round(seconds, 4), "decode_tokens_per_s": round(rate, 1),
        "weights_read_tb_per_s": round(weight_bytes * rate / 1e12, 3),
        "model_gib": round(model_bytes / 2**30, 2), "added_by_decoding_gib": round(decoding_bytes / 2**30, 2),
        "first_tokens": runs[0][1][0, :16].tolist(),
    }  # fmt: skip


def _failure(done: subprocess.CompletedProcess) -> str:
    """Why a child run failed: its exit status and its exception's line (else the last line it wrote to stderr:
    warnings print their source lines there, so the last line alone can say nothing)."""
    lines = done.stderr.strip().splitlines()
    raised = [line for line in lines if re.match(r"[\w.]*(Error|Exception|Interrupt)\b", line)]
    return f"exit status {done.returncode}: {(raised or lines or ['no output'])[-1][:500]}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--option-sets", nargs="+", default=list(OPTION_SETS), choices=OPTION_SETS)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer fp32 model on the CPU (a smoke run)")
    parser.add_argument("--out", type=Path, help="write the results here (JSON)")
    parser.add_argument("--one", choices=OPTION_SETS, help=argparse.SUPPRESS)  # the child process's option set
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.tiny)), flush=True)
        return {}
    results = {"torch": torch.__version__, "device": "cpu" if args.tiny else torch.cuda.get_device_name(),
               "prompt": PROMPT, "cache_len": CACHE_LEN, "runs": [], "errors": []}  # fmt: skip
    for option_set in args.option_sets:
        command = [sys.executable, __file__, "--one", option_set, *(["--tiny"] if args.tiny else [])]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode < 0:  # killed by a signal (no traceback): once more, and the first death is kept
            results.setdefault("retried", []).append({"option_set": option_set, "error": _failure(done)})
            print(f"{option_set}: {_failure(done)}; running it again", file=sys.stderr)
            done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            results["errors"].append({"option_set": option_set, "error": _failure(done)})
            print(f"{option_set}: failed: {_failure(done)}", file=sys.stderr)
            continue
        results["runs"].append(json.loads(lines[-1]))
        print(lines[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
