"""`share4v.inference.cache_attention`: the decode step's attention over a static cache. The Triton kernel (run by
Triton's interpreter in a subprocess on the CPU) computes SDPA's masked attention over keys and values in the
query's dtype (fp32, fp16, bf16) or as e4m3 bytes, reading no slot past the last one written; compiled code does not
recompile for its launch choice; the kernel runs where it is meant to (not at batch 1 over a cache in the model's
dtype); on a GPU the operator, eager and compiled, gives the fp32 reference."""

import textwrap

import pytest
import torch

from share4v.inference import cache_attention, fp8_cache
from tests.helpers import run_in_triton_interpreter

KERNEL_CHECK = textwrap.dedent(
    """
    import torch
    from share4v.inference import cache_attention, fp8_cache

    def reference(query, keys, values, visible, scale):
        # fp32 SDPA over the cache's values, grouped heads repeated
        if keys.dtype == torch.uint8:
            keys, values = fp8_cache.from_bytes(keys, torch.float32), fp8_cache.from_bytes(values, torch.float32)
        groups = query.shape[1] // keys.shape[1]
        keys, values = (t.float().repeat_interleave(groups, dim=1) for t in (keys, values))
        return torch.nn.functional.scaled_dot_product_attention(query.float(), keys, values, attn_mask=visible,
                                                                scale=scale)

    torch.manual_seed(0)
    shapes = ((3, 4, 2, 150, 32, 130), (2, 4, 4, 64, 16, 63), (1, 2, 1, 200, 64, 5))
    for stored, tolerance in (("fp8", 1e-5), (torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)):
        for rows, heads, kv_heads, slots, dim, last in shapes:
            dtype = torch.float32 if stored == "fp8" else stored
            query = torch.randn(rows, heads, 1, dim).to(dtype)
            keys, values = torch.randn(rows, kv_heads, slots, dim) * 3, torch.randn(rows, kv_heads, slots, dim)
            keys, values = (fp8_cache.to_bytes(t) if stored == "fp8" else t.to(dtype) for t in (keys, values))
            # slots past the last written one hold NaN, which the kernel must never read (e4m3's NaN: byte 127)
            garbage = slice(last + 1, None)
            nan = 127 if stored == "fp8" else float("nan")
            keys[:, :, garbage], values[:, :, garbage] = nan, nan
            mask = torch.ones(rows, slots, dtype=torch.long)
            mask[0, : min(70, last)] = 0  # left padding longer than a block of the kernel
            mask[-1, :2] = 0
            at = torch.tensor([last])
            visible = mask.bool()[:, None, None, :] & (torch.arange(slots) <= at)[None, None, None, :]
            clean = [t.clone() for t in (keys, values)]
            clean[0][:, :, garbage], clean[1][:, :, garbage] = 0, 0
            expected = reference(query, *clean, visible, 0.17)
            # the kernel is shown slots past the last written one as visible: it must stop reading at `at` itself
            shown = mask.bool().contiguous()
            for config in (None, (32, 1, 2), (64, 2, 2), (256, 4, 2)):  # launch_config's choices
                out = cache_attention.run_kernel(query.reshape(rows, heads, dim).contiguous(), keys, values, shown,
                                                 at, 0.17, config)
                assert out.dtype == dtype
                error = (out.view(rows, heads, 1, dim).float() - expected).abs().max().item()
                assert error < tolerance, (stored, rows, heads, kv_heads, slots, dim, last, config, error)
    print("kernel ok")
    """
)


def test_the_kernel_computes_the_reference_attention_and_reads_no_unwritten_slot():
    pytest.importorskip("triton")
    run_in_triton_interpreter(KERNEL_CHECK, "kernel ok")


GUARD_CHECK = textwrap.dedent(
    """
    import torch
    from share4v.inference import cache_attention, fp8_cache

    # decide as on a GPU (Triton's interpreter runs the kernel on the CPU), with a launch choice that changes
    # between the batch sizes below: compiled code must not guard on it
    cache_attention.has_kernel = lambda device, fp8=False: True
    cache_attention.launch_config = lambda programs, fp8=False: (16, 1, 2) if programs >= 8 else (32, 2, 2)
    for stored in ("fp8", torch.float32):
        graphs = []

        def counting(graph, example_inputs):
            graphs.append(graph)
            return graph.forward

        attend = torch.compile(cache_attention.decode_attention, backend=counting)
        torch.manual_seed(0)
        for rows in (2, 3, 5, 6):
            query = torch.randn(rows, 2, 1, 16)
            keys, values = (torch.randn(rows, 2, 40, 16) for _ in range(2))
            if stored == "fp8":
                keys, values = fp8_cache.to_bytes(keys), fp8_cache.to_bytes(values)
            at = torch.tensor([30])
            visible = torch.ones(rows, 1, 1, 40, dtype=torch.bool) & (torch.arange(40) <= at)
            cache_attention.has_kernel = lambda device, fp8=False: False
            expected = cache_attention.decode_attention(query, keys, values, visible, at, 0.25)
            cache_attention.has_kernel = lambda device, fp8=False: True
            out = attend(query, keys, values, visible, at, 0.25)
            assert (out - expected).abs().max() < 1e-5, (stored, rows)
        # the first shape, then one with dynamic sizes: none per launch choice
        assert len(graphs) == 2, (stored, len(graphs))
        torch._dynamo.reset()
    print("guards ok")
    """
)


def test_compiled_code_does_not_recompile_for_the_kernels_launch_choice():
    pytest.importorskip("triton")
    run_in_triton_interpreter(GUARD_CHECK, "guards ok")


@pytest.mark.parametrize(
    ("rows", "query_dtype", "stored", "kernel"),
    [
        (4, torch.bfloat16, torch.bfloat16, True),
        (1, torch.bfloat16, torch.bfloat16, False),  # batch 1 over the model's dtype: SDPA is faster there
        (1, torch.bfloat16, torch.uint8, True),  # e4m3 bytes: SDPA would convert the whole cache first
        (4, torch.float32, torch.bfloat16, False),  # a cache in another dtype than the query's
    ],
)
def test_the_kernel_runs_where_it_is_meant_to(monkeypatch, rows, query_dtype, stored, kernel):
    """Which path `decode_attention` takes where the device has the kernel (decided as on a GPU, on CPU tensors)."""
    monkeypatch.setattr(cache_attention, "has_kernel", lambda device, fp8=False: True)
    query = torch.zeros(rows, 4, 1, 16, dtype=query_dtype)
    keys = torch.zeros(rows, 2, 24, 16, dtype=stored)
    visible = torch.ones(rows, 1, 1, 24, dtype=torch.bool)
    at = torch.tensor([23])
    assert cache_attention._kernel_applies(query, keys, keys.clone(), visible, at) is kernel
    # and never where the device has none
    monkeypatch.setattr(cache_attention, "has_kernel", lambda device, fp8=False: False)
    assert cache_attention._kernel_applies(query, keys, keys.clone(), visible, at) is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("stored", ["fp8", "bf16"])
@pytest.mark.parametrize("rows", [1, 64, 128])
def test_on_a_gpu_the_operator_eager_and_compiled_gives_the_reference(rows, stored):
    device = torch.device("cuda")
    if not cache_attention.has_kernel(device, fp8=stored == "fp8"):
        pytest.skip("this GPU cannot run the kernel over this cache")
    generator = torch.Generator(device).manual_seed(rows)
    query = torch.randn(rows, 32, 1, 128, device=device, dtype=torch.bfloat16, generator=generator)
    keys, values = (torch.randn(rows, 8, 300, 128, device=device, generator=generator) for _ in range(2))
    keys, values = (fp8_cache.to_bytes(t) if stored == "fp8" else t.bfloat16() for t in (keys, values))
    at = torch.tensor([250], device=device)
    visible = torch.ones(rows, 1, 1, 300, dtype=torch.bool, device=device) & (torch.arange(300, device=device) <= at)
    visible[1:, ..., :37] = False
    as_float = (lambda t: fp8_cache.from_bytes(t, torch.float32)) if stored == "fp8" else (lambda t: t.float())
    key, value = (as_float(t).repeat_interleave(4, dim=1) for t in (keys, values))
    expected = torch.nn.functional.scaled_dot_product_attention(query.float(), key, value, attn_mask=visible,
                                                                scale=0.09)  # fmt: skip
    kernel = cache_attention._kernel_applies(query, keys, values, visible, at)
    assert kernel == (rows > 1 or stored == "fp8")  # batch 1 over bf16 keys and values: SDPA
    for attend in (cache_attention.decode_attention, torch.compile(cache_attention.decode_attention)):
        out = attend(query, keys, values, visible, at, 0.09)
        assert out.dtype == torch.bfloat16 and (out.float() - expected).abs().max() < 0.02
