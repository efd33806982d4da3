"""`share4v.inference.matvec`: the Triton matrix-vector kernel computes `weight @ vector` (run by Triton's
interpreter on the CPU, in a subprocess: the interpreter is chosen when Triton is imported), including rows and
columns that do not fill its blocks; off the GPU, `linear` is `F.linear`."""

import textwrap

import pytest
import torch
import torch.nn.functional as F
from transformers import StaticCache

from share4v.inference import matvec
from tests.helpers import run_in_triton_interpreter

KERNEL_CHECK = textwrap.dedent(
    """
    import torch
    from share4v.inference import matvec

    torch.manual_seed(0)
    configs = [None, (16, 1024, 8, 3), (8, 256, 4, 2), (32, 512, 8, 4)]
    for rows, columns in ((37, 1500), (16, 1024), (5, 3000), (4096 + 3, 300), (1, 11008)):
        weight, vector = torch.randn(rows, columns), torch.randn(columns)
        for config in configs:
            out = matvec.run_kernel(vector, weight, config, out=torch.full((rows,), float("nan")))
            error = (out.double() - weight.double() @ vector.double()).abs().max().item()
            assert error < 1e-3, (rows, columns, config, error)
    print("kernel ok")
    """
)


def test_the_kernel_computes_the_product_where_blocks_overhang():
    pytest.importorskip("triton")
    run_in_triton_interpreter(KERNEL_CHECK, "kernel ok")


def test_off_the_gpu_linear_is_f_linear():
    x, weight = torch.randn(1, 1, 64, dtype=torch.bfloat16), torch.randn(96, 64, dtype=torch.bfloat16)
    assert not matvec.applies(x, weight)
    assert torch.equal(matvec.linear(x, weight), F.linear(x, weight))


def test_the_kernel_takes_one_row_only(monkeypatch):
    """Several rows (a batch, or a prompt) stay with cuBLAS's matrix products, whatever the device."""
    weight = torch.empty(96, 64, dtype=torch.bfloat16, device="meta")
    one, several = (torch.empty(*shape, dtype=torch.bfloat16, device="meta") for shape in ((1, 1, 64), (2, 1, 64)))
    monkeypatch.setattr(matvec, "_on_gpu", lambda x, weight: True)  # decide as on a GPU
    assert matvec.applies(one, weight) is (matvec.triton is not None)
    assert not matvec.applies(several, weight)
    assert not matvec.applies(one, weight.float())  # another dtype than the input's


def test_every_projection_of_the_fused_step_goes_through_linear(monkeypatch):
    """The decode step's five projections a layer (fused q/k/v, attention output, fused gate/up, down) and the output
    head all reach `matvec.linear`, the function that takes the kernel at batch 1 on a GPU; the logits are the
    same as before."""
    from share4v.inference import fused_llama
    from share4v.inference.fused_llama import FusedLlama
    from tests.inference.test_fused_llama import left_padded, text_model

    model = text_model(kv_heads=2)
    embeds, mask = left_padded(model)
    fused = FusedLlama.of(model)
    shapes: list[tuple[int, int]] = []

    def counted(x, weight):
        shapes.append(tuple(weight.shape))
        return matvec.linear(x, weight)

    def one_step() -> torch.Tensor:  # the prompt into a new cache, then one decode step
        cache_len = mask.shape[1] + 4
        with torch.inference_mode():
            cache = StaticCache(config=model.config, max_cache_len=cache_len)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            fused.prompt_logits(embeds, positions, mask, cache)
            step_mask = torch.ones((3, cache_len), dtype=mask.dtype)
            step_mask[:, : mask.shape[1]] = mask
            tokens, at = torch.tensor([[5], [6], [7]]), torch.tensor([mask.shape[1]])
            return fused.logits(tokens, positions[:, -1:] + 1, at, step_mask, cache)

    expected = one_step()
    monkeypatch.setattr(fused_llama, "linear", counted)
    logits = one_step()
    config = model.config
    per_layer = [(config.hidden_size + 2 * 2 * config.head_dim, config.hidden_size),
                 (config.hidden_size, config.hidden_size), (2 * config.intermediate_size, config.hidden_size),
                 (config.hidden_size, config.intermediate_size)]  # fmt: skip
    assert shapes == per_layer * config.num_hidden_layers + [(config.vocab_size, config.hidden_size)]
    assert torch.allclose(logits, expected, atol=1e-5)
