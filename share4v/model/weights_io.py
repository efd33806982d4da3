"""model/weights_io.py

Reading and writing weight files: one `.safetensors` / pickled `.bin` file (read with `weights_only=True`), a
checkpoint folder's weights whether single or sharded with an index, and sharded safetensors with their index.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A `.safetensors` file, or a pickled `.bin` read with `weights_only=True`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except SafetensorError as err:  # a truncated or corrupt file: name it, in one line
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
    return torch.load(path, map_location="cpu", weights_only=True)


def read_model_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All weights of a checkpoint folder: `model.safetensors`, `pytorch_model.bin`, or either sharded with an index.

    Raises:
        FileNotFoundError: when the folder holds none of these.
    """
    folder = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
                state.update(read_weights(folder / shard))
            return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return read_weights(folder / name)
    raise FileNotFoundError(f"{folder} holds no model weights (model.safetensors, pytorch_model.bin or an index)")


def write_safetensors_shards(state: dict[str, torch.Tensor], folder: str | os.PathLike, max_shard_size: str = "5GB"):
    """`model.safetensors`, or `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json` when large."""
    folder = Path(folder)
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n].contiguous() for n in names}, folder / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
