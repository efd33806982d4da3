"""benchmarks/matvec_options.py

The batch-1 decode step's projections at ShareGPT4V-7B shape (fused q/k/v, attention output, fused gate/up, down,
output head), one row against each weight, bf16: cuBLAS (`F.linear`) against `share4v.inference.matvec`'s Triton
kernel, at the configuration `launch_config` picks and at other configurations. Each runs over 32 distinct weights
(4 for the output head), so that no weight is read from the L2 cache, inside a CUDA graph (as the decode step runs),
timed over 50 replays. Reports microseconds a product, the weight-read rate, and the largest difference from
`F.linear`'s output.

    PYTHONPATH=$PWD python3 benchmarks/matvec_options.py --out $OUT/matvec-options.json   # GPU, about a minute
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import MATVEC_SHAPES
from results_file import results_path, write_results

from share4v.inference import matvec

# (weight rows a program, columns a loop step, warps, stages), beside `launch_config`'s choice
CONFIGS = ((16, 1024, 8, 3), (16, 1024, 8, 4), (8, 1024, 8, 3), (32, 256, 8, 2), (32, 512, 8, 3), (64, 256, 8, 3))


def graph_time_us(products: Callable[[], list[torch.Tensor]], count: int, replays: int = 50) -> float:
    """Microseconds a product: `products()` (count products) captured in a CUDA graph, replayed `replays` times."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            products()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        products()
    for _ in range(5):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / replays / count


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--out", type=Path, help="results JSON to write")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or matvec.triton is None:
        raise SystemExit("error: matvec_options.py needs a CUDA GPU and Triton")
    torch.manual_seed(0)
    device = torch.device("cuda")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": {}}
    for name, (rows, columns) in MATVEC_SHAPES.items():
        count = 4 if name == "lm_head" else 32
        weights = [torch.randn(rows, columns, device=device, dtype=torch.bfloat16) * 0.02 for _ in range(count)]
        x = torch.randn(columns, device=device, dtype=torch.bfloat16)
        reference = F.linear(x[None], weights[0])[0].float()
        chosen = matvec.launch_config(rows, columns)
        timed = {"cublas": graph_time_us(lambda x=x, weights=weights: [F.linear(x[None], w) for w in weights], count)}
        errors = {"op": (matvec.linear(x[None], weights[0])[0].float() - reference).abs().max().item()}
        for config in dict.fromkeys((chosen, *CONFIGS)):
            key = "x".join(map(str, config))
            products = lambda config=config, x=x, weights=weights: [matvec.run_kernel(x, w, config) for w in weights]  # noqa: E731
            timed[key] = graph_time_us(products, count)
            errors[key] = (matvec.run_kernel(x, weights[0], config).float() - reference).abs().max().item()
        results["shapes"][name] = {
            "rows": rows, "columns": columns, "launch_config": "x".join(map(str, chosen)),
            "us_per_product": {key: round(us, 2) for key, us in timed.items()},
            "tb_per_s": {key: round(rows * columns * 2 / (us * 1e-6) / 1e12, 3) for key, us in timed.items()},
            "max_abs_difference": errors, "largest_output": reference.abs().max().item(),
        }  # fmt: skip
        print(name, results["shapes"][name], flush=True)
        del weights
        torch.cuda.empty_cache()
    write_results(results_path(args.out, device, "matvec-options"), results)
    return results


if __name__ == "__main__":
    main()
