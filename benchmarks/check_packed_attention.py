"""benchmarks/check_packed_attention.py

Packed training (`pack_sequences=True`, attention `share4v_packed`) where PyTorch's variable-length flash kernel
serves it: CUDA, bf16 under autocast, 7B width (32 heads of 128). The CPU tests take the per-sample SDPA fallback, and
bench_train.py compares the kernel's forward pass only. Here:

- the kernel alone: output and the gradients of q, k, v against one SDPA call per sample, each judged by its error to
  an fp32 computation (the kernel's error may be at most twice the bf16 SDPA reference's, plus a small floor), and a
  perturbed sample leaves the others' outputs bit-identical;
- a two-layer model at 7B width (small vision tower, 336 px: 576 image tokens) on three samples of different lengths
  (two with an image, one text-only): a perturbed sample (tokens and image) leaves the other samples' packed logits
  bit-identical; the packed logits, loss and gradients under bf16 autocast are as close to the fp32 padded
  computation as the padded bf16 computation is (same error criterion), and greedy top-1 agrees.

    python benchmarks/check_packed_attention.py --out results.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import device_name, report_checks

from share4v.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from share4v.model.builder import load_pretrained_model
from share4v.model.packed_attention import (
    PACKED_ATTENTION,
    _causal_per_sample,
    _varlen_causal,
    _varlen_kernel_serves,
)
from share4v.testing.make_tiny_checkpoint import TinySpec, make_tiny_checkpoint

SPEC = TinySpec(hidden_size=4096, intermediate_size=11008, num_layers=2, num_heads=32, vision_hidden_size=64,
                vision_layers=2, vision_heads=4, image_size=336, initializer_range=0.02)  # fmt: skip
SMOKE_SPEC = TinySpec(hidden_size=64, num_heads=4, image_size=56)
LENGTHS = (300, 40, 700)  # text tokens per sample: the first two with an image placeholder, the last text-only
KERNEL_RESULTS = ("output", "grad_q", "grad_k", "grad_v")
FLOOR = 1e-3  # errors below this (relative to the reference's largest value) pass whatever the bf16 reference's


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).abs().max() / expected.float().abs().max().clamp(min=1e-12))


def judged(fast: torch.Tensor, reference: torch.Tensor, exact: torch.Tensor) -> dict:
    """The fast low-precision result's error to the fp32 one, against the plain low-precision reference's."""
    fast_error, reference_error = relative_error(fast, exact), relative_error(reference, exact)
    return {"error": fast_error, "reference_error": reference_error,
            "passed": fast_error <= max(2 * reference_error, FLOOR)}  # fmt: skip


def kernel_checks(device: torch.device) -> dict:
    """`_varlen_causal` against `_causal_per_sample` on three packed samples, forward and backward."""
    lengths = (700, 1200, 1100)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device, dtype=torch.int32)
    generator = torch.Generator(device=device).manual_seed(0)
    leaves = [torch.randn((32, sum(lengths), 128), device=device, generator=generator) for _ in range(3)]
    upstream = torch.randn((sum(lengths), 32, 128), device=device, generator=generator)
    if not _varlen_kernel_serves(leaves[0].bfloat16()):
        return {"varlen_kernel": False}

    def run(kind: str, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        dtype = torch.float32 if kind == "fp32" else torch.bfloat16
        inputs = [t.detach().to(dtype).requires_grad_() for t in tensors]
        if kind == "varlen":
            output = _varlen_causal(*inputs, cu, max(lengths), None)
        else:
            output = _causal_per_sample(*inputs, cu, None)
        output.backward(upstream.to(dtype))
        return output.detach(), [t.grad for t in inputs]

    results = {"varlen_kernel": True}
    fast, reference, exact = run("varlen", leaves), run("sdpa", leaves), run("fp32", leaves)
    flat = [[output, *grads] for output, grads in (fast, reference, exact)]  # output, grad q, k, v of each
    for name, *tensors in zip(KERNEL_RESULTS, *flat, strict=True):
        results[name] = judged(*tensors)

    changed = [t.clone() for t in leaves]
    for t in changed:
        t[:, lengths[0] : lengths[0] + lengths[1]] += 1.0  # the middle sample's queries, keys and values
    moved = run("varlen", changed)[0]
    first, last = slice(0, lengths[0]), slice(lengths[0] + lengths[1], None)
    results["isolation"] = {
        "others_identical": bool(torch.equal(moved[first], fast[0][first]) and torch.equal(moved[last], fast[0][last])),
        "perturbed_changed": bool(not torch.equal(moved[lengths[0] : -lengths[2]], fast[0][lengths[0] : -lengths[2]])),
    }
    return results


def make_batch(model, device: torch.device) -> dict:
    """A right-padded batch as the collator makes it (labels on each sample's second half; an image per row)."""
    generator = torch.Generator().manual_seed(0)
    vocab, size = model.config.vocab_size, model.get_vision_tower().config.image_size
    input_ids = torch.zeros((len(LENGTHS), max(LENGTHS)), dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(LENGTHS):
        ids = torch.randint(3, vocab, (length,), generator=generator)
        if row < 2:
            ids[1] = IMAGE_TOKEN_INDEX
        input_ids[row, :length], attention_mask[row, :length] = ids, 1
        labels[row, length // 2 : length] = ids[length // 2 :]
    images = torch.randn((len(LENGTHS), 3, size, size), generator=generator)
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "images": images}
    return {key: value.to(device) for key, value in batch.items()}


def merged_lengths(model, batch: dict) -> list[int]:
    patches = model.get_vision_tower().num_patches
    has_image = (batch["input_ids"] == IMAGE_TOKEN_INDEX).any(dim=1).tolist()
    return [length + (patches - 1 if image else 0) for length, image in zip(LENGTHS, has_image, strict=True)]


def packed_logits(model, batch: dict) -> list[torch.Tensor]:
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    inputs["images"] = batch["images"][:2]  # without labels only the rows with a placeholder take an image
    with torch.no_grad(), torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16):
        logits = model(**inputs, pack_sequences=True).logits[0].float()
    return list(torch.split(logits, merged_lengths(model, batch)))


def padded_logits(model, batch: dict, autocast: bool) -> list[torch.Tensor]:
    """Each sample's logits from the padded batch (its real tokens only)."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    inputs["images"] = batch["images"][:2]
    with torch.no_grad(), torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16, enabled=autocast):
        output = model(**inputs)
    logits = output.logits.float()  # the merged rows stay right-padded, as the batch is
    return [logits[row, :length] for row, length in enumerate(merged_lengths(model, batch))]


def loss_and_grads(model, batch: dict, autocast: bool, **kwargs) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    with torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch, **kwargs).loss
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def model_checks(root: Path, device: torch.device, spec: TinySpec) -> dict:
    checkpoint = make_tiny_checkpoint(root / "ckpt", spec)
    _, model, _, _ = load_pretrained_model(str(checkpoint), None, None, device=str(device), dtype=torch.float32)
    model.config.use_cache = False
    model.train()  # dropout is 0 in these configs; training mode takes the trainer's paths
    batch = make_batch(model, device)
    results: dict = {}

    model.set_attn_implementation(PACKED_ATTENTION)
    before = packed_logits(model, batch)
    changed = {key: value.clone() for key, value in batch.items()}
    changed["input_ids"][1, 2:6] = (changed["input_ids"][1, 2:6] + 7) % model.config.vocab_size
    changed["images"][1] = torch.randn_like(changed["images"][1])
    after = packed_logits(model, changed)
    results["isolation"] = {
        "others_identical": bool(torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])),
        "others_max_difference": max(float((after[i] - before[i]).abs().max()) for i in (0, 2)),
        "perturbed_max_difference": float((after[1] - before[1]).abs().max()),
    }

    model.set_attn_implementation("sdpa")
    exact_logits = padded_logits(model, batch, autocast=False)
    reference_logits = padded_logits(model, batch, autocast=True)
    exact_loss, exact_grads = loss_and_grads(model, batch, autocast=False)
    reference_loss, reference_grads = loss_and_grads(model, batch, autocast=True)
    model.set_attn_implementation(PACKED_ATTENTION)
    packed_loss, packed_grads = loss_and_grads(model, batch, autocast=True, pack_sequences=True)

    results["logits"] = [judged(f, r, e) for f, r, e in zip(before, reference_logits, exact_logits, strict=True)]
    fast_top1 = torch.cat([logits.argmax(-1) for logits in before])
    exact_top1 = torch.cat([logits.argmax(-1) for logits in exact_logits])
    reference_top1 = torch.cat([logits.argmax(-1) for logits in reference_logits])
    results["top1_agreement"] = float((fast_top1 == exact_top1).float().mean())
    results["top1_agreement_padded_bf16"] = float((reference_top1 == exact_top1).float().mean())
    results["loss"] = {"packed_bf16": float(packed_loss), "padded_bf16": float(reference_loss),
                       "padded_fp32": float(exact_loss), **judged(packed_loss, reference_loss, exact_loss)}  # fmt: skip
    gradients = {name: judged(packed_grads[name], reference_grads[name], grad) for name, grad in exact_grads.items()}
    results["gradients"] = {
        "count": len(gradients), "same_parameters": packed_grads.keys() == exact_grads.keys(),
        "failed": {name: entry for name, entry in gradients.items() if not entry["passed"]},
        "worst": max(gradients.items(), key=lambda item: item[1]["error"] / max(item[1]["reference_error"], FLOOR)),
    }  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=Path("/tmp/share4v-packed-attention-check"))
    parser.add_argument("--smoke", action="store_true", help="a small model on the CPU: runs the script, checks little")
    args = parser.parse_args()
    if not (torch.cuda.is_available() or args.smoke):
        raise SystemExit("needs a GPU (or --smoke)")
    device = torch.device("cpu" if args.smoke else "cuda:0")  # one GPU ("cuda" would spread it over every GPU)
    shutil.rmtree(args.root, ignore_errors=True)
    kernel = kernel_checks(device)
    model = model_checks(args.root, device, SMOKE_SPEC if args.smoke else SPEC)
    result = {"device": device_name(device), "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "kernel": kernel, "model": model}  # fmt: skip
    isolation, model_isolation = kernel.get("isolation", {}), model["isolation"]
    of_the_kernel = (
        {}
        if args.smoke
        else {  # the CPU has no varlen kernel
            "varlen_kernel_serves": kernel["varlen_kernel"],
            **{f"kernel_{name}": kernel.get(name, {}).get("passed", False) for name in KERNEL_RESULTS},
            "kernel_isolation": isolation.get("others_identical", False) and isolation.get("perturbed_changed", False),
        }
    )
    result["checks"] = {
        **of_the_kernel,
        "model_isolation": model_isolation["others_identical"] and model_isolation["perturbed_max_difference"] > 0,
        "model_logits": all(entry["passed"] for entry in model["logits"]),
        "model_top1": model["top1_agreement"] >= min(0.99, model["top1_agreement_padded_bf16"] - 0.01),
        "model_loss": model["loss"]["passed"],
        "model_gradients": model["gradients"]["same_parameters"] and not model["gradients"]["failed"],
    }  # fmt: skip
    report_checks(args.out, result)


if __name__ == "__main__":
    main()
