"""benchmarks/decode_attention_options.py: on the CPU (fp32) every formulation it times computes the masked
attention the engine's step computes, and a backend the device lacks is recorded as an error, not a crash."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import decode_attention_options  # noqa: E402


def test_every_formulation_computes_the_masked_attention(tmp_path):
    out = tmp_path / "attention.json"
    results = decode_attention_options.main(["--smoke", "--batch-sizes", "1,3", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    measured = {(run["formulation"], run["rows"]) for run in results["runs"]}
    for name in ("sdpa", "sdpa_math", "matmul_softmax", "reduction", "flex"):
        assert {(name, 1), (name, 3)} <= measured
    assert all(run["max_abs_difference_from_fp32"] < 1e-5 and run["us_per_layer"] > 0 for run in results["runs"])
    # the CUDA-only kernels cannot run here: recorded with their reason
    assert {error["formulation"] for error in results["errors"]} == {"sdpa_efficient", "sdpa_cudnn"}
