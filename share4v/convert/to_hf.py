"""convert/to_hf.py

Export a share4v checkpoint (released layout: LLM folder + the vision tower folder its config names) to the
transformers llava format, which `LlavaForConditionalGeneration` / `AutoModelForImageTextToText`, `AutoProcessor`,
vLLM and SGLang load with no extra code.

    python -m share4v.convert.to_hf checkpoints/share4v-7b checkpoints/share4v-7b-hf [--vision-tower DIR]

What is written: config.json (`LlavaConfig`: the fine-tuned tower's vision config, `vision_feature_layer`,
`vision_feature_select_strategy`), safetensors shards with llava names, the tokenizer with `<image>` added, the
processor (`LlavaImageProcessorPil`, padding to a square with the CLIP mean colour when the checkpoint's
`image_aspect_ratio` is `pad`, exactly as share4v) and a chat template that renders share4v's `vicuna_v1` prompts.

`<image>` needs a vocabulary entry: the embedding gets a new row (unused: image features replace it) and lm_head a
copy of `<unk>`'s row, so the new token's logit equals `<unk>`'s and greedy decoding (which takes the first of
equal maxima) never picks it; the original vocabulary's logits are unchanged. `from_hf` removes the row again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from share4v.conversation import get_conv_template
from share4v.convert.folders import check_destination, load_tokenizer, read_config, read_json, staged_folder
from share4v.convert.llava_format import (
    EXPORT_KEY,
    IMAGE_TOKEN,
    LLM_TENSORS,
    chat_template,
    is_llava_hf_config,
    require_tensors,
    to_llava_names,
)
from share4v.model.language_model.share4v_llama import Share4VConfig
from share4v.model.multimodal_encoder.builder import resolve_vision_tower_path
from share4v.model.weights_io import read_model_weights, write_safetensors_shards

_STRATEGY = {"patch": "default", "cls_patch": "full"}
_PREPROCESSOR_KEYS = ("size", "crop_size", "image_mean", "image_std", "resample", "rescale_factor", "do_resize",
                      "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb")  # fmt: skip


def _refuse_partial_checkpoint(src: Path) -> None:
    """A LoRA adapter or a projector-only (stage-1) checkpoint holds no whole model: say which, and what to do."""
    if (src / "adapter_config.json").is_file():
        raise ValueError(
            f"{src} is a LoRA adapter (adapter_config.json): merge it into its base first "
            "(scripts/merge_lora_weights.py) and export the merged folder"
        )
    projector = [name for name in ("mm_projector.safetensors", "mm_projector.bin") if (src / name).is_file()]
    has_model = any((src / name).is_file() for name in ("model.safetensors", "pytorch_model.bin",
                    "model.safetensors.index.json", "pytorch_model.bin.index.json"))  # fmt: skip
    if projector and not has_model:
        raise ValueError(
            f"{src} holds only the projector ({projector[0]}, a stage-1 checkpoint): export a whole model, e.g. "
            "the one fine-tuned from it"
        )


def _share4v_config(src: Path) -> Share4VConfig:
    config_file = src / "config.json"
    raw = read_config(src)
    if not isinstance(raw, dict):
        raise ValueError(f"{config_file} is not a JSON object")
    if is_llava_hf_config(raw):
        raise ValueError(f"{src} is already in the transformers llava format (use share4v.convert.from_hf)")
    _refuse_partial_checkpoint(src)
    if not raw.get("mm_vision_tower"):
        raise ValueError(f"{config_file} names no vision tower (mm_vision_tower): not a multimodal share4v checkpoint")
    config = Share4VConfig.from_pretrained(src)
    if config.mm_use_im_start_end:
        raise ValueError("mm_use_im_start_end checkpoints wrap images in <im_start>/<im_end>, which llava cannot")
    if config.mm_projector_type != "mlp2x_gelu":
        raise ValueError(
            f"mm_projector_type {config.mm_projector_type!r} cannot be written in the llava format "
            "(its projector is Linear-GELU-Linear, share4v's mlp2x_gelu)"
        )
    return config


def _llama_config(config: Share4VConfig, vocab_size: int) -> LlamaConfig:
    llama_keys = set(LlamaConfig().to_dict())
    values = {k: v for k, v in config.to_dict().items() if k in llama_keys and k not in ("model_type", "architectures")}
    return LlamaConfig(**{**values, "vocab_size": vocab_size})


def _with_image_token_rows(llm_state: dict[str, torch.Tensor], tokenizer) -> tuple[dict[str, torch.Tensor], int]:
    """Add embedding / lm_head rows up to the tokenizer's size (after `<image>`); returns (state, rows added)."""
    embed, head = llm_state["model.embed_tokens.weight"], llm_state["lm_head.weight"]
    added = max(0, len(tokenizer) - embed.shape[0])
    if added:
        unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
        llm_state = dict(llm_state)
        llm_state["model.embed_tokens.weight"] = torch.cat([embed, embed.new_zeros(added, embed.shape[1])])
        llm_state["lm_head.weight"] = torch.cat([head, head[unk : unk + 1].expand(added, -1)])
    return llm_state, added


def _image_processor(tower_path: Path, pad: bool) -> LlavaImageProcessorPil:
    settings = read_json(tower_path / "preprocessor_config.json")
    kwargs = {k: settings[k] for k in _PREPROCESSOR_KEYS if k in settings}
    return LlavaImageProcessorPil(**kwargs, do_pad=pad)


def _for_older_readers(folder: Path) -> None:
    """transformers 4.x reads `torch_dtype` (not `dtype`) and wants `extra_special_tokens` as a name → token map
    (transformers 5 writes a list, which 4.x cannot load); the map also tells both where the image token is."""
    config = json.loads((folder / "config.json").read_text())
    config.setdefault("torch_dtype", config.get("dtype"))
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["extra_special_tokens"] = {"image_token": IMAGE_TOKEN}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")


def export_to_hf(src: str | Path, dst: str | Path, vision_tower: str | None = None, overwrite: bool = False) -> Path:
    """Write the llava-format copy of share4v checkpoint `src` to `dst` (atomically). Returns `dst`.

    Raises:
        FileNotFoundError / ValueError: naming what is missing or does not fit.
    """
    src, dst = Path(src), Path(dst)
    config = _share4v_config(src)
    tower_path = Path(resolve_vision_tower_path(config.mm_vision_tower, src, vision_tower))
    check_destination(dst, overwrite, sources=(src, tower_path))  # before reading gigabytes of weights
    tower_config = CLIPVisionConfig.from_pretrained(tower_path)
    if tower_config.hidden_size != config.mm_hidden_size:
        raise ValueError(
            f"vision tower {tower_path} is {tower_config.hidden_size} wide but the checkpoint's projector takes "
            f"mm_hidden_size={config.mm_hidden_size}"
        )
    llm_state = read_model_weights(src)
    require_tensors(llm_state, LLM_TENSORS, f"the weights in {src}", tied=bool(config.tie_word_embeddings))
    if "lm_head.weight" not in llm_state:  # tied: the llava copy gets the embeddings as its head (untied, equal)
        llm_state["lm_head.weight"] = llm_state["model.embed_tokens.weight"].clone()  # safetensors: no shared storage
    tower_state = read_model_weights(tower_path)
    tokenizer = load_tokenizer(src)
    original_vocab = llm_state["model.embed_tokens.weight"].shape[0]
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    llm_state, added = _with_image_token_rows(llm_state, tokenizer)

    patches = (tower_config.image_size // tower_config.patch_size) ** 2
    full = config.mm_vision_select_feature == "cls_patch"
    llava_config = LlavaConfig(
        vision_config=tower_config.to_dict(),
        text_config=_llama_config(config, llm_state["model.embed_tokens.weight"].shape[0]).to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=config.mm_vision_select_layer,
        vision_feature_select_strategy=_STRATEGY[config.mm_vision_select_feature],
        projector_hidden_act="gelu",
        image_seq_length=patches + int(full),
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    llava_config.architectures = ["LlavaForConditionalGeneration"]
    llava_config.dtype = str(llm_state["lm_head.weight"].dtype).removeprefix("torch.")
    setattr(llava_config, EXPORT_KEY, {"original_vocab_size": original_vocab, "rows_added": added})
    processor = LlavaProcessor(
        image_processor=_image_processor(tower_path, pad=config.image_aspect_ratio == "pad"),
        tokenizer=tokenizer,
        patch_size=tower_config.patch_size,
        vision_feature_select_strategy=_STRATEGY[config.mm_vision_select_feature],
        chat_template=chat_template(get_conv_template("vicuna_v1").system),
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )
    with staged_folder(dst, overwrite, sources=(src, tower_path)) as staging:
        llava_config.save_pretrained(staging)
        write_safetensors_shards(to_llava_names(llm_state, tower_state), staging)
        processor.save_pretrained(staging)
        processor.image_processor.save_pretrained(staging)  # preprocessor_config.json too, for older readers
        _for_older_readers(staging)
        if (src / "generation_config.json").is_file():
            shutil.copy(src / "generation_config.json", staging / "generation_config.json")
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m share4v.convert.to_hf",
        description="Export a share4v checkpoint to the transformers llava format (vLLM, SGLang, transformers).",
    )
    parser.add_argument("src", help="share4v checkpoint folder (config.json with mm_vision_tower)")
    parser.add_argument("dst", help="folder to write (created atomically)")
    parser.add_argument("--vision-tower", help="local folder of the vision tower, overriding the config's name")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at DST")
    args = parser.parse_args(argv)
    try:
        path = export_to_hf(args.src, args.dst, args.vision_tower, args.overwrite)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote the llava-format checkpoint {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
