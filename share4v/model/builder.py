"""model/builder.py

`load_pretrained_model`: the original loading API, deciding what a checkpoint is from its files, never its name.

| checkpoint folder holds                              | model_base | what is loaded                               |
|------------------------------------------------------|------------|----------------------------------------------|
| config.json, model_type share4v or mm_vision_tower   | None       | the full multimodal model                    |
| adapter_config.json (LoRA) + non_lora_trainables     | base LLM   | base + other trainables + merged LoRA        |
| mm_projector.bin/.safetensors + share4v config.json  | base LLM   | base LLM weights + the projector             |
| any other config.json                                | None/base  | a text-only LM (LoRA merged if base given)   |

The vision tower is loaded from the folder `mm_vision_tower` names, or from `vision_tower=` when given.
"""

from __future__ import annotations

import importlib.util
import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from share4v.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from share4v.model.checkpoint_checks import (
    check_shapes,
    check_tokenizer,
    check_tokenizer_files,
    config_error,
    looks_local,
    pickle_error,
    read_config,
)
from share4v.model.language_model.share4v_llama import (
    UNQUANTIZED_MODULES,
    Share4VConfig,
    Share4VLlamaForCausalLM,
)
from share4v.model.multimodal_encoder.builder import resolve_vision_tower_path
from share4v.model.multimodal_encoder.clip_encoder import check_select_layer
from share4v.model.weights_io import read_weights
from share4v.utils import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT_LEN = 2048


def _local_dir(path: str) -> Path:
    """A local checkpoint folder for `path` (a folder, or a hub id present in / downloadable to the HF cache)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if looks_local(path):
        raise FileNotFoundError(f"no such folder: {path}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=path))
    except (OSError, ValueError) as err:  # not a hub id, offline, not cached, ...
        raise FileNotFoundError(f"checkpoint {path!r} is not a local folder and could not be fetched: {err}") from None


def _load_tokenizer(folder: Path) -> Any:
    check_tokenizer_files(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    check_tokenizer(tokenizer, folder)
    return tokenizer


def _from_pretrained(model_class: Any, folder: Path, **kwargs: Any) -> torch.nn.Module:
    """`model_class.from_pretrained` with a refused pickle turned into one line naming the files."""
    try:
        return model_class.from_pretrained(folder, **kwargs)
    except pickle.UnpicklingError as err:
        raise pickle_error(folder, err) from None
    except StrictDataclassError as err:
        raise config_error(folder / "config.json", err) from None


def _load_weights_file(folder: Path, stem: str) -> dict[str, torch.Tensor] | None:
    """`stem.safetensors` or `stem.bin` (read with weights_only=True) from `folder`, or None."""
    for suffix in (".safetensors", ".bin"):
        if (folder / f"{stem}{suffix}").is_file():
            return read_weights(folder / f"{stem}{suffix}")
    return None


def _quantization_kwargs(load_8bit: bool, load_4bit: bool, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    if not (load_8bit or load_4bit):
        return {}
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("load_8bit/load_4bit need bitsandbytes: pip install 'share4v[quant]'")
    if device.type != "cuda":
        raise ValueError("load_8bit/load_4bit need a CUDA device (bitsandbytes quantization)")
    if load_8bit:
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=UNQUANTIZED_MODULES)}
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=UNQUANTIZED_MODULES,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
        )
    }


def _merge_lora(model: torch.nn.Module, adapter_dir: Path, merge: bool = True) -> torch.nn.Module:
    if importlib.util.find_spec("peft") is None:
        raise ImportError(f"{adapter_dir} is a LoRA adapter; loading it needs peft: pip install 'share4v[lora]'")
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(model, str(adapter_dir))
    if not merge:
        return adapted
    logger.info("merging LoRA adapter %s", adapter_dir)
    return adapted.merge_and_unload()


def _load_non_lora_trainables(model: torch.nn.Module, adapter_dir: Path) -> None:
    """Weights trained next to the LoRA (projector, ...) saved as `non_lora_trainables.bin/.safetensors`."""
    state = _load_weights_file(adapter_dir, "non_lora_trainables")
    if state is None:
        raise FileNotFoundError(f"{adapter_dir} holds a LoRA adapter but no non_lora_trainables.bin/.safetensors")
    state = {k.removeprefix("base_model."): v for k, v in state.items()}
    if any(k.startswith("model.model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"non_lora_trainables in {adapter_dir} has unknown weights: {result.unexpected_keys[:5]}")


def _load_projector(model: torch.nn.Module, checkpoint_dir: Path) -> None:
    state = _load_weights_file(checkpoint_dir, "mm_projector")
    state = {k: v.to(model.dtype) for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if "mm_projector" in k]
    if result.unexpected_keys or missing:
        raise ValueError(
            f"mm_projector weights in {checkpoint_dir} do not fit the model "
            f"(unexpected: {result.unexpected_keys[:5]}, missing: {missing[:5]})"
        )


def _add_image_tokens(tokenizer: Any, model: torch.nn.Module, config: Share4VConfig) -> None:
    new_tokens = []
    if config.mm_use_im_patch_token:
        new_tokens.append(DEFAULT_IMAGE_PATCH_TOKEN)
    if config.mm_use_im_start_end:
        new_tokens += [DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN]
    if new_tokens:
        tokenizer.add_tokens(new_tokens, special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))


def _checkpoint_kind(model_dir: Path, config: dict[str, Any], model_base: str | None) -> str:
    is_lora = (model_dir / "adapter_config.json").is_file()
    has_projector = any((model_dir / f"mm_projector.{ext}").is_file() for ext in ("bin", "safetensors"))
    multimodal = bool(config.get("mm_vision_tower"))  # as Share4VConfig.is_multimodal; no tower = a text-only LM
    if is_lora and model_base is None:
        raise ValueError(f"{model_dir} is a LoRA adapter (adapter_config.json); pass model_base=<the base LLM>")
    if not multimodal:
        if model_base is not None and not is_lora:
            raise ValueError(f"model_base was given but {model_dir} is neither a LoRA adapter nor a projector-only one")
        return "text"
    if is_lora:
        return "lora"
    if model_base is not None:
        if not has_projector:
            raise ValueError(
                f"model_base was given but {model_dir} holds neither a LoRA adapter (adapter_config.json) "
                "nor projector weights (mm_projector.bin/.safetensors)"
            )
        return "projector"
    return "full"


def load_pretrained_model(
    model_path: str,
    model_base: str | None,
    model_name: str | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map: str | dict | None = "auto",
    device: str = "cuda",
    **kwargs: Any,
) -> tuple[Any, torch.nn.Module, Any, int]:
    """Load a ShareGPT4V (or plain causal LM) checkpoint.

    Args:
        model_path: checkpoint folder (full model, LoRA adapter or projector-only) or hub id.
        model_base: base LLM folder for LoRA / projector-only checkpoints, else None.
        model_name: kept for compatibility with the original signature; loading never depends on it.
        load_8bit, load_4bit: quantize with bitsandbytes (CUDA only).
        device_map: used on CUDA as in the original; any other device puts the whole model there.
        device: "cuda" (falls back to CPU with a warning when there is none), "cpu", "cuda:1", ...
        **kwargs: `dtype` / `torch_dtype` (default float16 on CUDA, float32 on CPU), `attn_implementation`
            ("sdpa" default, "flash_attention_2", "eager"), `vision_tower` (local folder of the CLIP tower,
            overriding the config's `mm_vision_tower`), `use_flash_attn` (LLaVA-style alias), `merge_lora`
            (default True; False keeps a LoRA checkpoint as an unmerged peft model).

    Returns:
        `(tokenizer, model, image_processor, context_len)`; `image_processor` is None for text-only models.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(kwargs.pop("dtype", kwargs.pop("torch_dtype", None)), device)
    attn_implementation = kwargs.pop("attn_implementation", None)
    if kwargs.pop("use_flash_attn", False):
        attn_implementation = "flash_attention_2"
    vision_tower_override = kwargs.pop("vision_tower", None)
    merge_lora = kwargs.pop("merge_lora", True)
    if kwargs:
        raise TypeError(f"load_pretrained_model got unexpected arguments: {sorted(kwargs)}")

    load_kwargs: dict[str, Any] = {"dtype": dtype, **_quantization_kwargs(load_8bit, load_4bit, device, dtype)}
    load_kwargs["device_map"] = device_map if device == torch.device("cuda") and device_map else {"": device}
    if attn_implementation is not None:
        load_kwargs["attn_implementation"] = attn_implementation

    model_dir = _local_dir(model_path)
    raw_config = read_config(model_dir)
    kind = _checkpoint_kind(model_dir, raw_config, model_base)
    base_dir = _local_dir(model_base) if model_base is not None else None
    logger.info("loading %s as a %s checkpoint", model_dir, kind)

    if kind == "text":
        tokenizer = _load_tokenizer(base_dir or model_dir)
        model = _from_pretrained(AutoModelForCausalLM, base_dir or model_dir, **load_kwargs)
        if base_dir is not None and (model_dir / "adapter_config.json").is_file():
            model = _merge_lora(model, model_dir, merge_lora)
        return tokenizer, model, None, _context_len(model.config)

    try:
        config = Share4VConfig.from_pretrained(model_dir)
    except (ValueError, TypeError, StrictDataclassError) as err:
        raise config_error(model_dir / "config.json", err) from None
    tower_path = resolve_vision_tower_path(config.mm_vision_tower, model_dir, vision_tower_override)  # fail early
    tokenizer = _load_tokenizer(base_dir or model_dir)
    if kind == "full":
        check_shapes(model_dir, config)
    if base_dir is not None and config.__dict__.pop("quantization_config", None) is not None:
        # written by a 4/8-bit (QLoRA) run before share4v left it out: it describes that run's loading, not the base
        # weights loaded here (load_8bit/load_4bit decide that)
        logger.info("ignoring the quantization_config of %s: the weights come from %s", model_dir, base_dir)
    model = _from_pretrained(Share4VLlamaForCausalLM, base_dir or model_dir, config=config, **load_kwargs)
    if kind == "lora":
        _load_non_lora_trainables(model, model_dir)
        model = _merge_lora(model, model_dir, merge_lora)
    elif kind == "projector":
        _load_projector(model, model_dir)

    _add_image_tokens(tokenizer, model, config)
    vision_tower = model.get_vision_tower()
    vision_tower.load_model(
        tower_path,
        dtype=dtype,
        device=model.get_input_embeddings().weight.device,
        attn_implementation=attn_implementation,
    )
    check_select_layer(config.mm_vision_select_layer, vision_tower.config.num_hidden_layers, tower_path)
    if vision_tower.hidden_size != config.mm_hidden_size:
        raise ValueError(
            f"vision tower {tower_path} gives {vision_tower.hidden_size}-wide features but the checkpoint's "
            f"projector takes mm_hidden_size={config.mm_hidden_size}: wrong --vision-tower?"
        )
    model.eval()
    return tokenizer, model, vision_tower.image_processor, _context_len(config)


def _context_len(config: Any) -> int:
    return getattr(config, "max_sequence_length", None) or DEFAULT_CONTEXT_LEN
