"""convert/from_hf.py

Import a transformers llava-format checkpoint ("llava-hf", or one written by `share4v.convert.to_hf`) as a share4v
checkpoint in the released layout — LLM folder + `vision_tower/` — that share4v's loader, training scripts and
evaluation take as they are.

    hf download llava-hf/llava-1.5-7b-hf --local-dir /models/llava-1.5-7b-hf   # a local folder is converted
    python -m share4v.convert.from_hf /models/llava-1.5-7b-hf checkpoints/llava-1.5-7b-share4v

A folder written by `to_hf` comes back tensor for tensor (the `<image>` rows are removed again); any other llava
checkpoint keeps its vocabulary (share4v marks images with -200 ids, so its `<image>` token simply goes unused).
Only CLIP vision towers with llava's Linear-GELU-Linear projector can be imported.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from transformers import LlavaConfig

from share4v.convert.folders import check_destination, load_tokenizer, read_config, read_json, staged_folder
from share4v.convert.llava_format import (
    EXPORT_KEY,
    IMAGE_TOKEN,
    LLM_TENSORS,
    from_llava_names,
    is_llava_hf_config,
    require_tensors,
)
from share4v.mm_utils import IMAGE_ASPECT_RATIOS
from share4v.model.weights_io import read_model_weights, save_file, write_safetensors_shards

_FEATURE = {"default": "patch", "full": "cls_patch"}
_TOWER_FOLDER = "vision_tower"


def _llava_config(src: Path) -> LlavaConfig:
    config_file = src / "config.json"
    raw = read_config(src)
    if not isinstance(raw, dict) or not is_llava_hf_config(raw):
        kind = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        names_a_tower = isinstance(raw, dict) and raw.get("mm_vision_tower")
        hint = " (an original LLaVA/share4v checkpoint: use share4v.convert.to_hf)" if names_a_tower else ""
        raise ValueError(f"{config_file} ({kind!r}) has no text_config/vision_config: not a transformers llava "
                         f"checkpoint{hint}")  # fmt: skip
    config = LlavaConfig.from_pretrained(src)
    problems = []
    if config.vision_config.model_type != "clip_vision_model":
        problems.append(f"vision tower {config.vision_config.model_type!r} (only CLIP is supported)")
    if config.projector_hidden_act != "gelu" or not config.multimodal_projector_bias:
        problems.append("a projector other than Linear-GELU-Linear with biases")
    if not isinstance(config.vision_feature_layer, int):
        problems.append(f"several vision feature layers {config.vision_feature_layer}")
    if config.text_config.model_type != "llama":
        problems.append(f"language model {config.text_config.model_type!r} (only Llama is supported)")
    if problems:
        raise ValueError(f"{config_file} cannot be imported: " + "; ".join(problems))
    return config


def _image_settings(src: Path) -> dict[str, Any]:
    """The image processor's settings, from preprocessor_config.json or processor_config.json."""
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        if (src / name).is_file():
            settings = read_json(src / name)
            settings = settings.get(key, {}) if key else settings
            if settings:
                return settings
    raise FileNotFoundError(f"{src} has no image processor settings (preprocessor_config.json)")


def _tower_preprocessor(settings: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in settings.items() if k not in ("do_pad", "image_processor_type", "processor_class")}
    return {**kept, "image_processor_type": "CLIPImageProcessor", "feature_extractor_type": "CLIPFeatureExtractor"}


def _share4v_config(config: LlavaConfig, vocab_size: int, image_aspect_ratio: str, tied: bool) -> dict[str, Any]:
    text = config.text_config.to_dict()
    for key in ("model_type", "architectures", "_name_or_path", "transformers_version", "dtype"):
        text.pop(key, None)
    if tied:  # no lm_head.weight is written: the model must take its head from the embeddings
        text["tie_word_embeddings"] = True
    return {
        **text,
        "vocab_size": vocab_size,
        "architectures": ["Share4VLlamaForCausalLM"],
        "model_type": "share4v",
        "mm_vision_tower": _TOWER_FOLDER,
        "mm_hidden_size": config.vision_config.hidden_size,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": config.vision_feature_layer,
        "mm_vision_select_feature": _FEATURE[config.vision_feature_select_strategy],
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "use_mm_proj": True,
        "image_aspect_ratio": image_aspect_ratio,
        "tune_mm_mlp_adapter": False,
        "tune_entire_model": False,
        "freeze_mm_mlp_adapter": False,
        "tune_vision_tower": False,
        "use_cache": True,
    }


def _drop_image_token(tokenizer_dir: Path, original_vocab: int) -> None:
    """Remove the `<image>` token `to_hf` added from a saved tokenizer (tokenizer.json, tokenizer_config.json)."""
    path = tokenizer_dir / "tokenizer.json"
    data = json.loads(path.read_text())
    data["added_tokens"] = [
        t for t in data["added_tokens"] if not (t["content"] == IMAGE_TOKEN and t["id"] >= original_vocab)
    ]
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    config_path = tokenizer_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("processor_class", None)
    config = {k: v for k, v in config.items() if v != IMAGE_TOKEN}  # e.g. "image_token": "<image>"
    for key in ("extra_special_tokens", "model_specific_special_tokens"):
        value = config.get(key)
        if isinstance(value, dict):
            config[key] = {k: v for k, v in value.items() if v != IMAGE_TOKEN}
        elif isinstance(value, list):
            config[key] = [v for v in value if v != IMAGE_TOKEN]
    config.get("added_tokens_decoder", {}).pop(str(original_vocab), None)
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n")


def import_from_hf(
    src: str | Path, dst: str | Path, overwrite: bool = False, image_aspect_ratio: str | None = None
) -> Path:
    """Write the share4v copy of llava checkpoint `src` to `dst` (atomically). Returns `dst`.

    `image_aspect_ratio` (default: "pad" when the processor pads to squares, else "square") is the checkpoint's
    pre-processing; llava-hf's own LLaVA-1.5 processors do not pad although the original model was trained with
    `pad`.

    Raises:
        FileNotFoundError / ValueError: naming what is missing or cannot be expressed.
    """
    src, dst = Path(src), Path(dst)
    config = _llava_config(src)
    check_destination(dst, overwrite, sources=(src,))  # before reading gigabytes of weights
    image_settings = _image_settings(src)
    llm_state, tower_state = from_llava_names(read_model_weights(src))
    # tied output head and embeddings (saved without lm_head.weight): the share4v config keeps the tie
    tied = bool(config.text_config.tie_word_embeddings or getattr(config, "tie_word_embeddings", False))
    require_tensors(llm_state, LLM_TENSORS, f"the weights in {src} (in share4v's names)", tied)
    if not tower_state:
        raise ValueError(f"the weights in {src} hold no vision tower tensors (vision_tower.*)")
    export = getattr(config, EXPORT_KEY, None)
    if export and export.get("rows_added"):
        vocab = export["original_vocab_size"]
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            if key in llm_state:
                llm_state[key] = llm_state[key][:vocab]
    vocab_size = llm_state["model.embed_tokens.weight"].shape[0]
    projector_in = llm_state["model.mm_projector.0.weight"].shape[1]
    if projector_in != config.vision_config.hidden_size:
        raise ValueError(f"the projector takes {projector_in}-wide features but the vision tower gives "
                         f"{config.vision_config.hidden_size}")  # fmt: skip
    tokenizer = load_tokenizer(src)
    aspect = image_aspect_ratio or ("pad" if image_settings.get("do_pad") else "square")
    if aspect not in IMAGE_ASPECT_RATIOS:
        raise ValueError(f"image_aspect_ratio must be one of {IMAGE_ASPECT_RATIOS}, not {aspect!r}")
    with staged_folder(dst, overwrite, sources=(src,)) as staging:
        share4v_config = _share4v_config(config, vocab_size, aspect, tied and "lm_head.weight" not in llm_state)
        (staging / "config.json").write_text(json.dumps(share4v_config, indent=2, sort_keys=True) + "\n")
        write_safetensors_shards(llm_state, staging)
        tokenizer.save_pretrained(staging)
        if export and export.get("rows_added"):
            _drop_image_token(staging, export["original_vocab_size"])
        if (src / "generation_config.json").is_file():
            shutil.copy(src / "generation_config.json", staging / "generation_config.json")
        tower = staging / _TOWER_FOLDER
        tower.mkdir()
        vision = config.vision_config.to_dict()
        vision.pop("_name_or_path", None)
        (tower / "config.json").write_text(json.dumps(vision, indent=2, sort_keys=True) + "\n")
        (tower / "preprocessor_config.json").write_text(
            json.dumps(_tower_preprocessor(image_settings), indent=2) + "\n"
        )
        save_file({k: v.contiguous() for k, v in tower_state.items()}, tower / "model.safetensors",
                  metadata={"format": "pt"})  # fmt: skip
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m share4v.convert.from_hf",
        description="Import a transformers llava-format checkpoint as a share4v checkpoint (released layout).",
    )
    parser.add_argument("src", help="llava-format folder (config.json with model_type llava)")
    parser.add_argument("dst", help="folder to write (created atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at DST")
    parser.add_argument(
        "--image-aspect-ratio", choices=IMAGE_ASPECT_RATIOS, help="pre-processing (default: pad if the processor pads)"
    )
    args = parser.parse_args(argv)
    try:
        path = import_from_hf(args.src, args.dst, args.overwrite, args.image_aspect_ratio)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote the share4v checkpoint {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["import_from_hf", "main"]
