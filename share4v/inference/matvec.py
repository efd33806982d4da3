"""inference/matvec.py

The projections of a batch-1 decode step as one Triton matrix-vector kernel each, where cuBLAS is slow at one row.

At batch 1 a decode step reads every weight once and computes little, so each projection should run at the
memory's copy rate. cuBLAS's kernels for one row do not on some 7B shapes: on an H200, at 32 distinct weights a
shape in CUDA graphs (`benchmarks/matvec_options.py`), the attention output projection (4096 x 4096) read its weights
at 2.5 TB/s and the MLP's down projection (4096 x 11008) at 3.2 TB/s, against 3.3 and 3.9 TB/s here, where each
program reads a block of whole weight rows, contiguous, and sums them against the vector in fp32.

`linear(x, weight)` is `F.linear(x, weight)` (no bias) and takes the kernel only where it applies: one row in all,
on a CUDA device, bf16 or fp16, a contiguous weight in the same dtype, and Triton importable. Everything else, and
every CPU run, is `F.linear`. The kernel is a `torch.library.triton_op`, so `torch.compile` traces it into the
decode step's graph (and its CUDA graph). Sums run in another order than cuBLAS's: results agree to bf16 rounding,
not bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: `linear` is F.linear
    triton = None
if not hasattr(torch.library, "triton_op"):  # torch < 2.6 (its CUDA builds ship Triton): F.linear too
    triton = None


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`x @ weight.T` for `x` `[..., K]` and `weight` `[N, K]`: through the matrix-vector kernel where `x` holds one
    row on a GPU (see the module's docstring), else `F.linear`."""
    if not applies(x, weight):
        return F.linear(x, weight)
    return torch.ops.share4v.matvec(x.reshape(-1).contiguous(), weight).view(*x.shape[:-1], weight.shape[0])


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `linear` runs the kernel for these inputs."""
    return (
        triton is not None
        and _on_gpu(x, weight)
        and x.dtype in (torch.bfloat16, torch.float16)
        and weight.dtype == x.dtype
        and weight.dim() == 2
        and weight.is_contiguous()
        and x.shape[-1] == weight.shape[1]
        and x.numel() == weight.shape[1]
    )


def _on_gpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return x.device.type == "cuda" and weight.device == x.device


def launch_config(rows: int, columns: int) -> tuple[int, int, int, int]:
    """(weight rows a program, columns a loop step, warps, pipeline stages) for a `[rows, columns]` weight: the
    configuration whose decode step was measured at 1.63x transformers' on an H200
    (benchmarks/results/2026-11-27-h200-matvec/). `benchmarks/matvec_options.py` times it against others one
    projection at a time, where 16x1024x8x3 was 0.4 µs faster for the down projection and 32x256x8x2 up to 2 µs
    faster for the shapes of 12288 rows or more; a step with the latter ran slower (1.57x), so the table is not the
    whole story and this stays until a step measures better."""
    if columns >= 8192:  # the down projection
        return 16, 1024, 8, 4
    return 16, 1024, 8, 3


if triton is not None:

    @triton.jit
    def _matvec_kernel(weight, vector, out, rows, columns, BLOCK_ROWS: tl.constexpr, BLOCK_COLUMNS: tl.constexpr):
        first = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        total = tl.zeros((BLOCK_ROWS, BLOCK_COLUMNS), dtype=tl.float32)
        for start in range(0, columns, BLOCK_COLUMNS):
            offsets = start + tl.arange(0, BLOCK_COLUMNS)
            inside = offsets < columns
            block = tl.load(
                weight + first[:, None] * columns + offsets[None, :],
                mask=(first[:, None] < rows) & inside[None, :],
                other=0.0,
            )
            values = tl.load(vector + offsets, mask=inside, other=0.0)
            total += block.to(tl.float32) * values.to(tl.float32)[None, :]
        tl.store(out + first, tl.sum(total, axis=1).to(out.dtype.element_ty), mask=first < rows)

    @torch.library.triton_op("share4v::matvec", mutates_args=())
    def _matvec(vector: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return run_kernel(vector, weight, traced=True)


def run_kernel(
    vector: torch.Tensor,
    weight: torch.Tensor,
    config: tuple[int, int, int, int] | None = None,
    out: torch.Tensor | None = None,
    traced: bool = False,
) -> torch.Tensor:
    """`weight @ vector` `[rows]` by the kernel, at `config` (default: `launch_config`'s), into `out` (default: a
    new tensor). `traced`: launched through `torch.library.wrap_triton`, as inside the custom op."""
    rows, columns = weight.shape
    out = vector.new_empty((rows,)) if out is None else out
    block_rows, block_columns, warps, stages = config or launch_config(rows, columns)
    kernel = torch.library.wrap_triton(_matvec_kernel) if traced else _matvec_kernel
    grid = (triton.cdiv(rows, block_rows),)
    kernel[grid](weight, vector, out, rows, columns, BLOCK_ROWS=block_rows, BLOCK_COLUMNS=block_columns,
                 num_warps=warps, num_stages=stages)  # fmt: skip
    return out
