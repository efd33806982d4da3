"""testing/tiny_training.py

What a tiny training run starts from, written in the formats of the real ones:

    make_tiny_base_llm(dir)        a Vicuna-like Llama folder (model_type llama, no vision keys) + tokenizer
    make_tiny_vision_tower(dir)    a CLIP vision tower folder (as openai/clip-vit-large-patch14-336, scaled down)
    make_tiny_projector(file, ...) an mm_projector.safetensors as a projector-alignment run writes it
    make_tiny_dataset(dir, kind)   images + a LLaVA-format JSON: "caption" (stage 1) or "instruct" (stage 2)

The images are plain shapes on coloured backgrounds and the texts describe them, so a few dozen steps visibly
lower the loss.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from transformers import LlamaConfig, LlamaForCausalLM

from share4v.model import Share4VConfig, Share4VLlamaForCausalLM
from share4v.model.weights_io import save_file, widened_new_safetensors
from share4v.testing.make_tiny_checkpoint import TinySpec, llm_config_dict, write_vision_tower
from share4v.testing.tiny_tokenizer import train_sentencepiece, write_llama_tokenizer

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def make_tiny_base_llm(out_dir: str | Path, spec: TinySpec | None = None) -> Path:
    """A plain Llama checkpoint (config, safetensors, sentencepiece tokenizer) of the tiny size."""
    spec = spec or TinySpec()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    config = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=4096,
        initializer_range=spec.initializer_range,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    with widened_new_safetensors(out_dir):
        LlamaForCausalLM(config).save_pretrained(out_dir)
    write_llama_tokenizer(out_dir, train_sentencepiece(spec.seed, spec.vocab_size))
    return out_dir


def make_tiny_vision_tower(out_dir: str | Path, spec: TinySpec | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_vision_tower(out_dir, spec or TinySpec())
    return out_dir


def make_tiny_projector(out_file: str | Path, spec: TinySpec | None = None) -> Path:
    """`mm_projector.safetensors` with the released key names (`model.mm_projector.0.weight`, ...)."""
    spec = spec or TinySpec()
    torch.manual_seed(spec.seed + 2)
    model = Share4VLlamaForCausalLM(Share4VConfig(**llm_config_dict(spec, vision_tower="unused")))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k.startswith("model.mm_projector.")}
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, out_file, metadata={"format": "pt"})
    return out_file


def _draw(shape: str, colour: str, size: tuple[int, int], rng: random.Random) -> Image.Image:
    background = tuple(255 - c for c in COLOURS[colour])
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    w, h = size
    box = (w // 4 + rng.randint(-3, 3), h // 4 + rng.randint(-3, 3), 3 * w // 4, 3 * h // 4)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=COLOURS[colour])
    return image


def make_tiny_dataset(out_dir: str | Path, kind: str = "instruct", num_samples: int = 24, seed: int = 0) -> Path:
    """`out_dir/images/*.png` + `out_dir/data.json`; returns the JSON path.

    `caption` rows are (image, detailed caption) pairs as in ShareGPT4V-PT; `instruct` rows are multi-turn
    questions about the image, plus a few text-only rows, as in the instruction mix.
    """
    if kind not in ("caption", "instruct"):
        raise ValueError(f"kind must be 'caption' or 'instruct', not {kind!r}")
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(num_samples):
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        size = (rng.randint(40, 80), rng.randint(40, 80))
        name = f"images/{index:04d}.png"
        _draw(shape, colour, size, rng).save(out_dir / name)
        if kind == "caption":
            turns = [
                ("human", "<image>\nDescribe the image in detail."),
                ("gpt", f"A {colour} {shape} in the middle of the picture, on a bright background."),
            ]
        else:
            turns = [
                ("human", "What shape is shown?\n<image>"),
                ("gpt", f"A {shape}."),
                ("human", "What colour is it?"),
                ("gpt", f"It is {colour}."),
            ]
        rows.append({"id": f"{kind}-{index}", "image": name, "conversations": _turns(turns)})
        if kind == "instruct" and index % 8 == 7:
            rows.append({"id": f"text-{index}", "conversations": _turns([("human", "Say hello."), ("gpt", "Hello!")])})
    path = out_dir / "data.json"
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return path


def _turns(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"from": role, "value": value} for role, value in pairs]
