"""model/checkpoint_checks.py

Checks that turn a broken or mismatched checkpoint folder into one clear line before anything large is loaded:
the folder itself (a mistyped local path is not a hub id), config.json (a JSON object, with valid types), the
tokenizer (present, readable, able to encode text) and the weight files (readable headers, shapes that fit the
config). The vision feature layer's check (inside the tower) lives with the tower, in `clip_encoder.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
MIN_VOCABULARY = 32  # a tokenizer smaller than this is a placeholder, not the checkpoint's


def looks_local(path: str) -> bool:
    """Whether `path` is meant as a local folder rather than a hub id (`owner/name`)."""
    if path.startswith((".", "/", "~")) or (os.sep != "/" and os.sep in path):
        return True
    parts = path.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def read_config(folder: Path) -> dict[str, Any]:
    """config.json as a dict.

    Raises:
        FileNotFoundError: no config.json; ValueError: not JSON, or not a JSON object.
    """
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {folder}: not a model checkpoint folder")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} must hold a JSON object, not a {type(config).__name__}")
    return config


def config_error(config_file: Path, err: Exception) -> ValueError:
    """A config class's validation error as one line naming the file."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    detail = " ".join(line.strip() for line in str(err).strip().splitlines()[1:2])
    return ValueError(f"{config_file}: {first} {detail}".strip())


def check_tokenizer_files(folder: Path) -> None:
    """Raise when the folder has no tokenizer, or its `tokenizer.model` is not a sentencepiece model."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"no tokenizer in {folder} (expected tokenizer.model or tokenizer.json)")
    model_file = folder / "tokenizer.model"
    if model_file.is_file() and not (folder / "tokenizer.json").is_file():
        import sentencepiece

        try:
            sentencepiece.SentencePieceProcessor(model_proto=model_file.read_bytes())
        except (RuntimeError, OSError) as err:
            raise ValueError(f"{model_file} is not a valid sentencepiece model: {err}") from None


def check_tokenizer(tokenizer: Any, folder: Path, vocab_size: int | None = None) -> None:
    """Raise when the loaded tokenizer cannot be the checkpoint's (a placeholder, or larger than the model)."""
    size = len(tokenizer)
    ids = tokenizer("The cat sat on the mat.", add_special_tokens=False).input_ids
    if size < MIN_VOCABULARY or not ids:
        raise ValueError(f"the tokenizer in {folder} has {size} tokens and cannot encode text: is tokenizer.model "
                         "missing or damaged?")  # fmt: skip
    if vocab_size is not None and max(ids) >= vocab_size:
        raise ValueError(f"the tokenizer in {folder} gives ids up to {max(ids)} but the model has {vocab_size} rows")


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return sorted(folder.glob("model*.safetensors"))


def tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor in the folder's safetensors files, read from their headers (no data is loaded).

    Raises:
        ValueError: naming a missing, truncated or unreadable weight file.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for path in _weight_files(folder):
        if not path.is_file():
            raise ValueError(f"weight file {path} (listed in the index) is missing")
        try:
            with safe_open(path, framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path} is truncated or not a safetensors file: {err}") from None
    return shapes


def check_shapes(folder: Path, config: Any) -> None:
    """Raise, naming the config key, when the weights' shapes do not fit config.json (safetensors only)."""
    shapes = tensor_shapes(folder)
    expected = {
        "model.embed_tokens.weight": ((config.vocab_size, config.hidden_size), "vocab_size / hidden_size"),
        "lm_head.weight": ((config.vocab_size, config.hidden_size), "vocab_size / hidden_size"),
    }
    if getattr(config, "mm_hidden_size", None) and getattr(config, "mm_projector_type", "").startswith("mlp"):
        expected["model.mm_projector.0.weight"] = ((config.hidden_size, config.mm_hidden_size), "mm_hidden_size")
    elif getattr(config, "mm_projector_type", None) == "linear" and getattr(config, "mm_hidden_size", None):
        expected["model.mm_projector.weight"] = ((config.hidden_size, config.mm_hidden_size), "mm_hidden_size")
    for key, (shape, keys) in expected.items():
        if key in shapes and shapes[key] != shape:
            raise ValueError(
                f"{folder / 'config.json'}: {keys} give {key} the shape {list(shape)}, but the weights have "
                f"{list(shapes[key])}"
            )


def pickle_error(folder: Path, err: Exception) -> ValueError:
    """A refused pickle (weights_only) as one line: the file holds Python objects and is not executed."""
    files = ", ".join(p.name for p in sorted(folder.glob("*.bin"))) or "the .bin files"
    return ValueError(
        f"{folder}: {files} hold Python objects beyond plain tensors; they are not loaded, since unpickling them "
        f"could run code ({type(err).__name__}). Convert them to safetensors where they are trusted."
    )
