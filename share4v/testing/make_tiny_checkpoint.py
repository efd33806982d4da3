"""testing/make_tiny_checkpoint.py

Writes a tiny random ShareGPT4V checkpoint in exactly the on-disk format of the released ones, so that tests,
examples and demos run the real loading code without downloading anything:

    OUT_DIR/config.json                 model_type "share4v", Llama keys + mm_* keys (transformers 4.31 layout)
    OUT_DIR/model.safetensors           released tensor names (model.layers.*, model.mm_projector.0/2.*, lm_head)
                                        (or sharded with model.safetensors.index.json, or pytorch_model*.bin)
    OUT_DIR/tokenizer.model             sentencepiece Llama tokenizer trained locally
    OUT_DIR/tokenizer_config.json, special_tokens_map.json
    OUT_DIR/vision_tower/               CLIP vision tower folder named by mm_vision_tower:
                                        config.json, model.safetensors, preprocessor_config.json

Usage:
    python -m share4v.testing.make_tiny_checkpoint checkpoints/share4v-tiny
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from share4v.model import Share4VConfig, Share4VLlamaForCausalLM
from share4v.model.weights_io import save_file
from share4v.temp_paths import new_temp_folder
from share4v.testing.tiny_tokenizer import train_sentencepiece, write_llama_tokenizer

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model; defaults give 16 image tokens (56 px / 14 px patches) and a 512-token vocabulary."""

    seed: int = 0
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    vision_hidden_size: int = 32
    vision_layers: int = 3
    vision_heads: int = 4
    image_size: int = 56
    patch_size: int = 14
    projector_type: str = "mlp2x_gelu"
    image_aspect_ratio: str = "pad"
    initializer_range: float = 0.1


def llm_config_dict(spec: TinySpec, vision_tower: str) -> dict:
    """config.json of a trained ShareGPT4V model, in the key layout the released files use."""
    return {
        "_name_or_path": "share4v-tiny",
        "architectures": ["Share4VLlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "freeze_mm_mlp_adapter": False,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "image_aspect_ratio": spec.image_aspect_ratio,
        "image_grid_pinpoints": None,
        "initializer_range": spec.initializer_range,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": 4096,
        "mm_hidden_size": spec.vision_hidden_size,
        "mm_projector_lr": None,
        "mm_projector_type": spec.projector_type,
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": vision_tower,
        "model_type": "share4v",
        "num_attention_heads": spec.num_heads,
        "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_heads,
        "pad_token_id": 0,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.31.0",
        "tune_entire_model": False,
        "tune_mm_mlp_adapter": False,
        "tune_vision_tower": False,
        "use_cache": True,
        "use_mm_proj": True,
        "vision_tower_lr": None,
        "vocab_size": spec.vocab_size,
    }


def preprocessor_config_dict(spec: TinySpec) -> dict:
    """preprocessor_config.json of a CLIP tower (as saved with the 336 px OpenAI CLIP, scaled down)."""
    return {
        "crop_size": {"height": spec.image_size, "width": spec.image_size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": CLIP_MEAN,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": CLIP_STD,
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": spec.image_size},
    }


def _released_tower_name(key: str) -> str:
    return key if key.startswith("vision_model.") else "vision_model." + key


def write_vision_tower(out_dir: Path, spec: TinySpec) -> None:
    torch.manual_seed(spec.seed + 1)
    vision_config = CLIPVisionConfig(
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_hidden_size * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden_size,
        hidden_act="quick_gelu",
    )
    model = CLIPVisionModel(vision_config)
    model.config.save_pretrained(out_dir)
    # Released towers store `vision_model.*` names (transformers 4.x layout); newer transformers map them on load.
    state_dict = {_released_tower_name(k): v.contiguous() for k, v in model.state_dict().items()}
    save_file(state_dict, out_dir / "model.safetensors", metadata={"format": "pt"})
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor_config_dict(spec), indent=2) + "\n")


def _write_weights(out_dir: Path, state_dict: dict[str, torch.Tensor], weight_format: str, shards: int) -> None:
    names = sorted(state_dict)
    groups = [names[i::shards] for i in range(shards)] if shards > 1 else [names]
    suffix = "safetensors" if weight_format == "safetensors" else "bin"
    stem = "model" if weight_format == "safetensors" else "pytorch_model"
    weight_map: dict[str, str] = {}
    for index, group in enumerate(groups, start=1):
        filename = f"{stem}.{suffix}" if shards == 1 else f"{stem}-{index:05d}-of-{shards:05d}.{suffix}"
        part = {name: state_dict[name].contiguous() for name in group}
        if weight_format == "safetensors":
            save_file(part, out_dir / filename, metadata={"format": "pt"})
        else:
            torch.save(part, out_dir / filename)
        weight_map.update(dict.fromkeys(group, filename))
    if shards > 1:
        total = sum(t.numel() * t.element_size() for t in state_dict.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / f"{stem}.{suffix}.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_checkpoint(out_dir: Path, spec: TinySpec, weight_format: str = "safetensors", shards: int = 1) -> None:
    """Write all files of the tiny checkpoint into the (existing, empty) folder `out_dir`."""
    write_llama_tokenizer(out_dir, train_sentencepiece(spec.seed, spec.vocab_size))
    write_vision_tower(out_dir / "vision_tower", spec)
    config_dict = llm_config_dict(spec, vision_tower="vision_tower")
    torch.manual_seed(spec.seed)
    model = Share4VLlamaForCausalLM(Share4VConfig(**config_dict))
    state_dict = {k: v for k, v in model.state_dict().items() if not k.startswith("model.vision_tower.")}
    _write_weights(out_dir, state_dict, weight_format, shards)
    (out_dir / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")


def make_tiny_checkpoint(
    out_dir: str | Path,
    spec: TinySpec | None = None,
    weight_format: str = "safetensors",
    shards: int = 1,
    overwrite: bool = False,
) -> Path:
    """Create the tiny checkpoint at `out_dir` atomically; an existing checkpoint there is kept unless `overwrite`."""
    out_dir = Path(out_dir)
    if weight_format not in ("safetensors", "bin"):
        raise ValueError(f"weight_format must be 'safetensors' or 'bin', not {weight_format!r}")
    is_checkpoint = (out_dir / "config.json").is_file()
    if out_dir.exists() and not overwrite:
        if is_checkpoint:
            return out_dir
        if any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir} exists and is not a checkpoint; choose another path")
    if out_dir.exists() and overwrite and not is_checkpoint and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not a checkpoint (no config.json): --overwrite replaces checkpoints only")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = new_temp_folder(out_dir.parent, prefix=f".{out_dir.name}.")  # mode as os.mkdir's
    try:
        write_checkpoint(staging, spec or TinySpec(), weight_format, shards)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m share4v.testing.make_tiny_checkpoint",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("out_dir", help="folder to write the checkpoint into (created; kept if it already holds one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and tokenizer corpus")
    parser.add_argument("--format", choices=["safetensors", "bin"], default="safetensors", help="weight file format")
    parser.add_argument("--shards", type=int, default=1, help="number of weight shards (an index file when > 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at OUT_DIR")
    args = parser.parse_args(argv)
    existed = (Path(args.out_dir) / "config.json").is_file()
    try:
        path = make_tiny_checkpoint(args.out_dir, TinySpec(seed=args.seed), args.format, args.shards, args.overwrite)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    if existed and not args.overwrite:
        print(f"kept the existing checkpoint at {path} (pass --overwrite to rebuild it)")
    else:
        print(f"wrote a tiny random share4v checkpoint to {path}")


if __name__ == "__main__":
    main()
