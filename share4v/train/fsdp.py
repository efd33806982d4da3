"""train/fsdp.py

PyTorch FSDP2 (`--fsdp --fsdp_config scripts/fsdp2.json`): the sharding of ZeRO-3 (weights,
gradients and optimizer state split over the GPUs) without DeepSpeed, through transformers' Trainer and accelerate.
Two things share4v adds to what they do:

- `use_fp32_gradients`: in a bf16 or fp16 run, weights are gathered in the compute dtype but gradients are reduced and
  accumulated over micro-batches in fp32, and the loss comes back as computed (fp32). accelerate's default would
  reduce and accumulate in the compute dtype (rounding each micro-batch's gradient into the step's sum) and cast the
  loss to it.
- `load_state`: a full state dict into a model whose weights are sharded (resuming reads released-layout checkpoints,
  which hold whole tensors).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

_COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def use_fp32_gradients(training_args: Any) -> None:
    """Give an FSDP2 run in bf16/fp16 a mixed-precision policy that reduces and accumulates gradients in fp32 and
    leaves the model's outputs as computed (the loss is fp32), unless the run brings its own policy."""
    plugin_args = getattr(training_args, "fsdp_plugin_args", None)
    if not plugin_args or int(plugin_args.get("fsdp_version", 2)) != 2:  # transformers' default version is 2
        return
    precision = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else None
    if precision is None:
        return
    from torch.distributed.fsdp import MixedPrecisionPolicy

    plugin_args.setdefault(
        "mixed_precision_policy",
        MixedPrecisionPolicy(param_dtype=_COMPUTE_DTYPES[precision], reduce_dtype=torch.float32),
    )


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 holds `model`'s weights as shards (DTensors)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without public DTensors has no FSDP2 either
        return False
    return any(isinstance(p, DTensor) for p in model.parameters())


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> _IncompatibleKeys:
    """`model.load_state_dict(state, strict=False)`, also when FSDP2 shards `model` (each rank passes the whole
    tensors and keeps its shards). Returns the missing and unexpected keys."""
    if not is_sharded(model):
        return model.load_state_dict(state, strict=False)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    names = set(model.state_dict())  # what a checkpoint of this model holds (the sharded load keeps the rest as is)
    set_model_state_dict(
        model,
        {k: v for k, v in state.items() if k in names},
        options=StateDictOptions(full_state_dict=True, strict=False),
    )
    return _IncompatibleKeys(missing_keys=sorted(names - state.keys()), unexpected_keys=sorted(state.keys() - names))
