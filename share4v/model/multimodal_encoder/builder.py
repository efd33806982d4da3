"""multimodal_encoder/builder.py

Builds the vision tower named by a config and finds its weights on disk.

Released configs name the tower by hub id (`Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12`) or by the path
it had on the training machine. `resolve_vision_tower_path` looks, in order, at an explicit override, the path
relative to the checkpoint folder (a checkpoint's own `vision_tower/` wins over a same-named folder wherever the
program runs), the path as written, and the local Hugging Face cache; when none holds it, the
error says which name was looked for and how to point at a local copy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from share4v.model.multimodal_encoder.clip_encoder import CLIPVisionTower


class VisionTowerNotFoundError(FileNotFoundError):
    """The vision tower a checkpoint names cannot be found locally."""


def build_vision_tower(config: Any) -> CLIPVisionTower:
    """A not-yet-loaded `CLIPVisionTower` for `config.mm_vision_tower` (call `load_model(path)` to load weights)."""
    name = getattr(config, "mm_vision_tower", None) or getattr(config, "vision_tower", None)
    if not name:
        raise ValueError("config has no mm_vision_tower: this is not a multimodal share4v config")
    return CLIPVisionTower(
        name, select_layer=config.mm_vision_select_layer, select_feature=config.mm_vision_select_feature
    )


def _is_tower_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _from_hf_cache(name: str) -> tuple[Path | None, str]:
    """The snapshot folder of hub repo `name` (cache, or download unless HF_HUB_OFFLINE), or None and why not."""
    from huggingface_hub import snapshot_download

    if os.path.isabs(name) or name.count("/") != 1:
        return None, "not a local folder"
    try:
        folder = Path(
            snapshot_download(
                repo_id=name, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"], local_files_only=_offline()
            )
        )
    except (OSError, ValueError) as err:  # hub, network and repo-id errors all derive from these
        return None, f"not in the Hugging Face cache ({type(err).__name__})"
    if not _is_tower_folder(folder):
        return None, f"hub snapshot {folder} has no config.json"
    return folder, ""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve_vision_tower_path(
    name: str, checkpoint_dir: str | os.PathLike | None = None, override: str | None = None
) -> str:
    """The local folder holding vision tower `name` (config.json + weights + preprocessor_config.json).

    Raises:
        VisionTowerNotFoundError: naming the tower and the `vision_tower=` / `--vision-tower` way out.
    """
    if override is not None:
        if not _is_tower_folder(Path(override)):
            raise VisionTowerNotFoundError(
                f"vision tower folder {override!r} (given as vision_tower) has no config.json"
            )
        return str(override)
    candidates = [Path(name)]
    if checkpoint_dir is not None and not os.path.isabs(name):
        candidates.insert(0, Path(checkpoint_dir) / name)
    for candidate in candidates:
        if _is_tower_folder(candidate):
            return str(candidate)
    cached, why_not = _from_hf_cache(name)
    if cached is not None:
        return str(cached)
    where = f" (mm_vision_tower of {checkpoint_dir}/config.json)" if checkpoint_dir is not None else ""
    raise VisionTowerNotFoundError(
        f"vision tower {name!r}{where} was not found: {why_not}; download it and pass its folder as "
        f"vision_tower=... (CLI: --vision-tower PATH)"
    )
