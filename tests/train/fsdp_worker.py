"""One rank of tests/train/test_fsdp.py (run by torch.distributed.run on the CPU, gloo): the tiny model sharded by FSDP2
into the units accelerate makes for `--fsdp --fsdp_config scripts/fsdp2.json`, against the same
model unsharded. Writes what it measured to OUT/rank{N}.json.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/train/fsdp_worker.py CKPT OUT
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.test_packing import make_batch

from share4v.constants import IMAGE_TOKEN_INDEX
from share4v.model.builder import load_pretrained_model
from share4v.model.packed_attention import PACKED_ATTENTION
from share4v.train.fsdp import is_sharded, use_fp32_gradients
from share4v.train.saving import load_training_checkpoint, save_training_checkpoint


def shard(model: torch.nn.Module, policy: MixedPrecisionPolicy) -> torch.nn.Module:
    """The units accelerate (1.15) makes: each decoder layer, the input embeddings, the final norm with the output
    projection (kept gathered after the forward), and the root with the rest."""
    for layer in model.get_model().layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model.get_input_embeddings(), mp_policy=policy)
    fully_shard([model.get_model().norm, model.get_output_embeddings()], mp_policy=policy, reshard_after_forward=False)
    fully_shard(model, mp_policy=policy)
    return model


def loss_and_grads(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch, pack_sequences=True).loss
    loss.backward()
    grads = {}
    for name, param in model.named_parameters():
        if param.grad is not None:
            grad = param.grad
            grads[name] = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
    return loss.detach(), grads


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest difference over the largest expected value, or over 1e-4 where all are smaller (an attention key
    bias's gradient is zero up to rounding: attention does not depend on it)."""
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max().clamp(min=1e-4)).item()


def main() -> None:
    checkpoint, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    tokenizer, reference, _, _ = load_pretrained_model(checkpoint, None, "weights", device="cpu")
    reference = reference.float().train()
    reference.config.use_cache = False
    reference.fused_cross_entropy = True  # the training step's loss (`configure_step_speedups`)
    reference.set_attn_implementation(PACKED_ATTENTION)
    tower = reference.get_vision_tower()
    for name, param in tower.named_parameters():  # stage 1's mix: the tower's later layers train, the first not
        param.requires_grad = ".layers.0." not in name and ".embeddings." not in name
    batch = make_batch(reference)  # the same samples on every rank: FSDP's mean gradient equals the unsharded one
    report: dict = {"rank": dist.get_rank()}

    # fp32 throughout: the sharded step equals the unsharded one
    sharded = shard(copy.deepcopy(reference), MixedPrecisionPolicy())
    report["sharded"] = is_sharded(sharded) and not is_sharded(reference)
    expected_loss, expected_grads = loss_and_grads(reference, batch)
    loss, grads = loss_and_grads(sharded, batch)
    report["loss_error"] = relative_error(loss, expected_loss)
    report["grad_names_equal"] = sorted(grads) == sorted(expected_grads)
    report["grad_error"] = max(relative_error(grads[n], expected_grads[n]) for n in expected_grads)
    report["frozen_tower_grads"] = sum(".encoder.layers.0." in n and "vision_tower" in n for n in grads)

    # the policy share4v gives bf16 runs: weights gathered in bf16, gradients reduced in fp32, the loss in fp32
    args = SimpleNamespace(fsdp_plugin_args={"fsdp_version": 2}, bf16=True, fp16=False)
    use_fp32_gradients(args)
    mixed = shard(copy.deepcopy(reference), args.fsdp_plugin_args["mixed_precision_policy"])
    loss, grads = loss_and_grads(mixed, batch)
    report["bf16_loss_dtype"] = str(loss.dtype)
    report["bf16_loss_error"] = relative_error(loss, expected_loss)

    # a batch of text-only rows leaves no trainable weight without a gradient that an image batch gives one
    text_only = make_batch(reference, seed=5)
    text_only["input_ids"][text_only["input_ids"] == IMAGE_TOKEN_INDEX] = 5
    no_gradient = [{n for n, p in reference.named_parameters() if p.requires_grad and n not in grads}
                   for grads in (loss_and_grads(reference, b)[1] for b in (batch, text_only))]  # fmt: skip
    report["text_only_leaves_no_more_weights_without_gradient"] = no_gradient[1] == no_gradient[0]

    # training steps where the ranks' batches differ, one of them all text-only rows (the collator's blank images):
    # every rank must reduce the same gradients, or the sharded step stops (the tower and projector got none there)
    trained = shard(copy.deepcopy(reference), MixedPrecisionPolicy())
    optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=1e-3)
    norms = []
    for step in range(3):
        step_batch = make_batch(reference, seed=1 + 10 * dist.get_rank() + step)
        if dist.get_rank() == 1 and step == 1:
            step_batch["input_ids"][step_batch["input_ids"] == IMAGE_TOKEN_INDEX] = 5
        trained(**step_batch, pack_sequences=True).loss.backward()
        norm = torch.nn.utils.clip_grad_norm_([p for p in trained.parameters() if p.requires_grad], 1.0)
        norms.append(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))
        optimizer.step()
        optimizer.zero_grad()
    report["steps_with_a_text_only_rank"] = len(norms)
    report["finite_gradient_norms"] = all(math.isfinite(norm) for norm in norms)

    # saving: the whole state gathered from the shards (what accelerate hands the Trainer) written by the main
    # process in the released layout, then loaded through the builder like any checkpoint
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    gathered = get_model_state_dict(trained, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    saved = out / "saved"
    if dist.get_rank() == 0:
        save_training_checkpoint(trained, saved, state_dict=gathered, save_vision_tower_folder=True)
        tokenizer.save_pretrained(saved)  # as the Trainer does beside the weights
        _, reloaded, _, _ = load_pretrained_model(str(saved), None, "weights", device="cpu")
        reloaded_state = reloaded.float().state_dict()
        report["saved_error"] = max((reloaded_state[k] - v).abs().max().item() for k, v in gathered.items())
        report["saved_tensors"] = len(gathered)
    dist.barrier()

    # resuming: a released-layout checkpoint of other weights (tower folder included) loads into the sharded model
    changed = copy.deepcopy(reference)
    with torch.no_grad():
        for param in changed.parameters():
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())) * 0.01)
    folder = out / "checkpoint"
    if dist.get_rank() == 0:
        save_training_checkpoint(changed, folder, save_vision_tower_folder=True)
    dist.barrier()
    load_training_checkpoint(sharded, folder)
    loaded = sharded.state_dict()
    errors = {}
    for name, value in changed.state_dict().items():
        got = loaded[name]
        got = got.full_tensor() if hasattr(got, "full_tensor") else got
        errors[name] = (got - value).abs().max().item()
    report["loaded_tensors"] = len(errors)
    report["load_error"] = max(errors.values())
    report["tower_load_error"] = max(v for k, v in errors.items() if "vision_tower" in k)

    # a checkpoint that lacks one of the model's tensors is refused, not filled in with the weights at hand
    incomplete = out / "incomplete"
    if dist.get_rank() == 0:
        shutil.copytree(folder, incomplete)
        weights = load_file(incomplete / "model.safetensors")
        weights.pop(next(k for k in weights if "layers.0.mlp" in k))
        save_file(weights, incomplete / "model.safetensors", metadata={"format": "pt"})
    dist.barrier()
    try:
        load_training_checkpoint(sharded, incomplete)
        report["incomplete_refused"] = False
    except ValueError as error:
        report["incomplete_refused"] = "lacks tensors" in str(error)
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
