"""inference/placement.py

Where a front end puts a model on a host with several GPUs when the user names no device. The builder's default,
the original's `device_map="auto"`, spreads even a small model evenly over every visible GPU, and a model spread
over several devices decodes uncompiled (the engine's fast path needs one device). So a front end keeps the model on
the current GPU when its weights, estimated from config.json, take at most `SHARE_OF_FREE_MEMORY` of that GPU's free
memory (the rest holds the KV cache, the activations and the vision tower, which the builder loads beside the
embeddings), and leaves "auto" otherwise: a model too large for one GPU still loads across them, evenly, as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError

from share4v.model.checkpoint_checks import looks_local, read_config
from share4v.model.multimodal_projector.builder import projector_linear_layers
from share4v.utils import resolve_dtype

SHARE_OF_FREE_MEMORY = 0.75
CLIP_L_336_PARAMETERS = 303_507_456  # the vision tower of every released checkpoint (CLIP ViT-L/14-336's vision side)


def estimated_parameters(config: dict[str, Any]) -> int:
    """Parameters of a (multimodal) Llama checkpoint from its config.json: embeddings, lm_head, decoder layers, final
    norm and, with a vision tower, the projector's linear layers and the tower, taken to be CLIP ViT-L/336."""
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    projections = (heads + 2 * kv_heads) * head_dim
    attention = hidden * projections + heads * head_dim * hidden
    if config.get("attention_bias"):
        attention += projections + hidden
    intermediate = config["intermediate_size"]
    mlp = 3 * hidden * intermediate + ((2 * intermediate + hidden) if config.get("mlp_bias") else 0)
    layer = attention + mlp + 2 * hidden  # + the two norms
    total = (1 if config.get("tie_word_embeddings") else 2) * vocab * hidden + config["num_hidden_layers"] * layer
    total += hidden  # the final norm
    if config.get("mm_vision_tower"):
        layers = projector_linear_layers(config.get("mm_projector_type") or "linear")
        if layers:  # the first from the tower's width, the others hidden to hidden, each with a bias
            first = (config.get("mm_hidden_size") or hidden) * hidden + hidden
            total += first + (layers - 1) * (hidden * hidden + hidden)
        total += CLIP_L_336_PARAMETERS
    return total


def bytes_per_weight(dtype: Any, load_8bit: bool = False, load_4bit: bool = False) -> float:
    """Bytes a weight takes on the GPU: the load dtype's size, about half a byte in 4 bits, one in 8 (the layers
    bitsandbytes leaves unquantized are a small share)."""
    if load_4bit:
        return 0.6
    if load_8bit:
        return 1.1
    return resolve_dtype(dtype, torch.device("cuda")).itemsize


def fits_one_gpu(weight_bytes: float, free_bytes: int) -> bool:
    return weight_bytes <= SHARE_OF_FREE_MEMORY * free_bytes


def default_device_map(model_path: str, load_kwargs: dict[str, Any]) -> str | dict[str, torch.device]:
    """The `device_map` for a model loaded onto "cuda" without one: the current GPU alone where it fits (see the
    module docstring), else "auto". A config that cannot be read (or a hub id not at hand) leaves "auto"."""
    if torch.cuda.device_count() < 2:
        return "auto"  # one GPU: "auto" puts everything on it
    try:
        parameters = estimated_parameters(_config(model_path))
    except (OSError, ValueError, EntryNotFoundError, KeyError, TypeError):  # no config here, or not a Llama's
        return "auto"
    weight_bytes = parameters * bytes_per_weight(
        load_kwargs.get("dtype", load_kwargs.get("torch_dtype")), load_kwargs.get("load_8bit", False),
        load_kwargs.get("load_4bit", False),
    )  # fmt: skip
    current = torch.device("cuda", torch.cuda.current_device())
    free_bytes, _ = torch.cuda.mem_get_info(current)
    return {"": current} if fits_one_gpu(weight_bytes, free_bytes) else "auto"


def _config(model_path: str) -> dict[str, Any]:
    """config.json of a local folder, or of a hub id (from the cache, or fetched as the builder would fetch it)."""
    local = Path(model_path).expanduser()
    if local.is_dir() or looks_local(model_path):
        return read_config(local)
    return read_config(Path(hf_hub_download(model_path, "config.json")).parent)
