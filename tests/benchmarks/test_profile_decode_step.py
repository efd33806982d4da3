"""benchmarks/profile_decode_step.py on the CPU (tiny fp32 model): it times and profiles the engine's greedy step,
groups the kernels, and runs another attention formulation inside the step when asked (then restores the step's
own)."""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import profile_decode_step  # noqa: E402

from share4v.inference import cache_attention  # noqa: E402


def test_profiles_the_step_and_swaps_its_attention(tmp_path):
    own = cache_attention.decode_attention
    out = tmp_path / "step.json"
    argv = ["--smoke", "--batch-sizes", "1,3", "--attention", "own", "matmul_softmax", "sdpa_cudnn"]
    argv += ["--profile-steps", "4"]
    results = profile_decode_step.main([*argv, "--out", str(out)])
    assert json.loads(out.read_text()) == results
    assert cache_attention.decode_attention is own  # restored after the run
    # cuDNN's kernel cannot run on the CPU: recorded with its reason, and the other formulations still run
    failed = [(error["rows"], error["attention"]) for error in results["errors"]]
    assert failed == [(1, "sdpa_cudnn"), (3, "sdpa_cudnn")]
    runs = {(run["rows"], run["attention"]): run for run in results["runs"]}
    assert set(runs) == {(rows, name) for rows in (1, 3) for name in ("own", "matmul_softmax")}
    for (_, name), run in runs.items():
        assert run["step_ms"] > 0 and run["groups_us_per_step"]["matrix products"] > 0
        # the prompt pass runs SDPA whatever the step's attention, over the prompt's positions
        assert run["prompt_groups_us"]["matrix products"] > 0 and run["prompt_groups_us"]["attention"] > 0
        assert run["embeddings_s"] > 0 and run["prompt_kernels"]
        # in fp32 both formulations compute the same attention: the same greedy tokens as the step's own
        assert run["common_prefix"] == profile_decode_step.NEW_TOKENS
        # SDPA's kernel runs only where the step's attention is its own (SDPA): the replacement took effect
        assert (run["groups_us_per_step"]["attention"] > 0) == (name == "own")


def test_kernels_are_grouped_by_name():
    group = profile_decode_step.group_of
    assert group("nvjet_sm90_tst_256x8_64x6_4x1_v_bz_TNT") == "matrix products"
    assert group("void cublasLt::splitKreduce_kernel<32, 16, int, float>") == "matrix products"
    assert group("cudnn_generated_fort_native_sdpa_sm80_flash_fprop_wmma_f16") == "attention"
    # inductor's kernels that feed attention are element-wise work, whatever their names list
    assert group("triton_poi_fused__scaled_dot_product_cudnn_attention__to_copy_add") == "element-wise and norms"
    assert group("Memcpy DtoD (Device -> Device)") == "copies"
    assert group("aten::addmm") == "matrix products"
    assert group("some_new_kernel") == "other"
    # inductor's templates: flex attention's kernel, else a matrix product
    assert group("triton_tem_fused_flex_attention_0") == "attention"
    assert group("triton_tem_fused_mm_3") == "matrix products"
    assert group("void at::native::vectorized_elementwise_kernel<2, at::native::CUDAFunctorOnSelf_add<long>>") == (
        "element-wise and norms"
    )
    assert group("void at::native::multi_tensor_apply_kernel<at::native::TensorListMetadata<2>>") == "copies"


def test_a_prompt_pass_compiled_for_its_shapes_gives_the_same_tokens(monkeypatch):
    compiled, real_compile = [], torch.compile

    def counting_compile(function, **options):
        compiled.append((getattr(function, "__name__", None), options.get("dynamic")))
        return real_compile(function, **options)

    monkeypatch.setattr(torch, "compile", counting_compile)
    argv = ["--smoke", "--batch-sizes", "2", "--profile-steps", "2", "--prompt-compile", "dynamic", "all-dynamic",
            "static"]  # fmt: skip
    dynamic, every, static = profile_decode_step.main(argv)["runs"]
    # each run's step compiles the prompt pass as the engine does (torch.compile's default, batch and length marked
    # dynamic at the call); the other two compile it once more, every size dynamic or none
    assert [dynamic for name, dynamic in compiled if name == "prompt_layer"] == [None, None, True, None, False]
    assert [run["prompt_compile"] for run in (dynamic, every, static)] == ["dynamic", "all-dynamic", "static"]
    for run in (every, static):
        assert run["common_prefix"] == profile_decode_step.NEW_TOKENS  # against the engine's pass's tokens
        assert run["prompt_groups_us"]["matrix products"] > 0
