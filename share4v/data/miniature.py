"""data/miniature.py

ShareGPT4V's recipe at miniature scale on the synthetic world (`share4v.data.synthetic`), from scratch on a CPU:

1. the world: images, detailed and brief captions, instruction rows and a held-out benchmark (one per seed);
2. "pre-trained" parts: a sentencepiece tokenizer and a tiny Llama trained on the world's text, and a tiny
   CLIP-shaped ViT trained to name what each grid cell holds (so that "pretrained encoder + pretrained LLM" holds);
3. projector alignment on brief captions (as LLaVA's 558K), then stage 1 on **detailed** captions (the paper), on
   **brief** captions (the ablation) or no stage 1 at all (the projector-only baseline), then stage 2 instruction
   tuning — every stage through `share4v.train.train` with the launch scripts' flags, scaled down;
4. the benchmark answered greedily through the engine and scored per category (normalised exact match).

    python -m share4v.data.miniature --out runs/miniature --seeds 0 1 2     # the score card in runs/miniature
    python -m share4v.data.miniature --out /tmp/m --quick                   # every stage, 1.6 CPU minutes per arm
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from share4v.data.synthetic import COLOURS, SHAPES, SIZES, WORDS, Scene, write_world
from share4v.eval.metrics import vqa_normalize
from share4v.eval.report import build_report, find_score_files, write_report
from share4v.eval.scores import write_scores
from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.model.multimodal_encoder.builder import resolve_vision_tower_path
from share4v.model.weights_io import widened_new_safetensors
from share4v.testing.make_tiny_checkpoint import CLIP_MEAN, CLIP_STD, TinySpec, preprocessor_config_dict
from share4v.testing.tiny_tokenizer import train_sentencepiece, write_llama_tokenizer
from share4v.train.train import train

logger = logging.getLogger(__name__)

ARMS = ("detailed", "brief", "none")  # what stage 1 trains on; "none" skips it (projector-only baseline)
LLM_CORPORA = ("world", "captions")  # what the tiny LLM is pre-trained on (`Recipe.llm_corpus`)


@dataclass(frozen=True)
class Recipe:
    """Sizes and step counts; `quick()` is the CI version."""

    num_images: int = 8000
    num_bench_images: int = 60
    image_size: int = 96  # 3 x 3 patches of 32 px: one image token per grid cell
    patch_size: int = 32
    vision_hidden: int = 96
    vision_layers: int = 4
    llm_hidden: int = 128
    llm_layers: int = 4
    llm_heads: int = 4
    vocab_size: int = 1000
    batch_size: int = 16
    tower_steps: int = 3000
    llm_steps: int = 200
    align_steps: int = 300
    stage1_steps: int = 2500
    stage2_steps: int = 2500
    sft_caption_rows: int = 1000  # detailed-caption rows in the stage-2 mix (as ShareGPT4V's 665K mix holds 23K)
    learning_rate: float = 1e-3
    nudge: float = 1.0  # how far shapes move off their cells' centres (`share4v.data.synthetic.sample_scene`)
    qa_rounds: int = 4  # questions per instruction row: 2 to this many (LLaVA's VQA rows group several per image)
    projector_lr: float = 0.0  # stages 1 and 2: the projector's learning rate (`--mm_projector_lr`); 0: the stage's own
    vision_tower_lr: float = 1e-4  # stage 1: the ViT's learning rate (`--vision_tower_lr`); 0: the stage's own.
    # A fifth of stage 1's: at the stage's rate the caption loss squeezes shape out of the ViT's features on some seeds
    llm_corpus: str = "world"  # what the LLM is pre-trained on: "world" (captions, questions, answers) or "captions"
    tower_balance_weight: float = 1.0  # ViT pre-training: weight of `balance_loss` (shape, colour, position)
    tower_variance_floor: float = 0.25  # the share of the variance `balance_loss` asks of each of them
    whole_words: bool = True  # the tokenizer keeps each written word of the world (`WORDS`) one piece wherever it
    # stands, so a short answer (`▁` `STOP`) and a quoted one (`"` `STOP`) say the word with the same token

    @classmethod
    def quick(cls) -> Recipe:
        """About 1.6 minutes per arm on two CPU cores: 1,000 images, a barely pre-trained LLM (20 steps), 250 steps
        each of stages 1 and 2, and the ViT and tokenizer as they were when these were chosen (ViT: 600 steps, no
        balance term, stage 1's own rate in stage 1; the written words split as sentencepiece learned them). Its
        detailed-caption arm learns colours (52-82 % on the benchmark's colour questions over 3 seeds on two CPU
        cores, where the most common answer scores 25 %), not positions or shapes; over 3 seeds it ranks the arms as
        the paper does (docs/Miniature.md). A better pre-trained LLM needs more steps before it reads the image."""
        return cls(num_images=1000, tower_steps=600, tower_balance_weight=0.0, llm_steps=20, align_steps=100,
                   stage1_steps=250, stage2_steps=250, vision_tower_lr=0.0, whole_words=False)  # fmt: skip

    @classmethod
    def smoke(cls) -> Recipe:
        """Seconds: checks the wiring (world → pre-training → stages → benchmark → score card), learns nothing."""
        return cls(num_images=12, num_bench_images=2, image_size=96, patch_size=32, vision_hidden=32,
                   vision_layers=3, llm_hidden=32, llm_layers=2, vocab_size=400, batch_size=4, tower_steps=2,
                   llm_steps=2, align_steps=2, stage1_steps=2, stage2_steps=2)  # fmt: skip


# ---- 1 + 2: the world and the pre-trained parts -------------------------------------------------------------------


class SettingsMismatch(ValueError):
    """A finished part of a run (the world, a pre-trained part, a stage) was made with other recipe settings."""


class WorldMismatch(SettingsMismatch):
    """A seed's folder already holds a world made with other settings."""


# The recipe settings each part is made with, its own and those of the parts it starts from (the world's are checked
# by `make_world`): a finished part is reused only where they are unchanged.
LLM_SETTINGS = ("vocab_size", "llm_hidden", "llm_layers", "llm_heads", "llm_steps", "llm_corpus", "batch_size",
                "learning_rate", "whole_words")  # fmt: skip
TOWER_SETTINGS = ("patch_size", "vision_hidden", "vision_layers", "tower_steps", "batch_size", "learning_rate",
                  "tower_balance_weight", "tower_variance_floor")  # fmt: skip
ALIGN_SETTINGS = (*LLM_SETTINGS, *(name for name in TOWER_SETTINGS if name not in LLM_SETTINGS), "align_steps")
STAGE1_SETTINGS = (*ALIGN_SETTINGS, "stage1_steps", "projector_lr", "vision_tower_lr")
STAGE2_SETTINGS = (*ALIGN_SETTINGS, "stage2_steps", "sft_caption_rows", "projector_lr")  # + stage 1's after it


# Settings added after parts began to record theirs, with the value that does what the code did before them: a record
# without one was made that way.
ADDED_SETTINGS = {"tower_balance_weight": 0.0, "tower_variance_floor": 0.25, "vision_tower_lr": 0.0,
                  "whole_words": False}  # fmt: skip
# Settings since removed, with the value that does what the code does now: a part recorded with another was made
# in a way no recipe describes any more.
REMOVED_SETTINGS = {"tower_shape_weight": 0.0}


def finished(folder: Path, marker: str, recipe: Recipe, names: tuple[str, ...]) -> bool:
    """Whether `folder` holds a finished part (its `marker` file exists) made with these of `recipe`'s settings; a
    part made with others is refused in one line. Parts from before settings were recorded are reused as they are."""
    if not (folder / marker).is_file():
        return False
    record = folder / "recipe_settings.json"
    if not record.is_file():
        logger.warning("%s records no recipe settings (made by an older share4v): reused as it is", folder)
        return True
    found = {**ADDED_SETTINGS, **json.loads(record.read_text())}
    wanted = {name: getattr(recipe, name) for name in names}
    changed = [f"{name} {found.get(name)} -> {value}" for name, value in wanted.items() if found.get(name) != value]
    changed += [f"{name} {found[name]} (no longer a setting)" for name, value in REMOVED_SETTINGS.items()
                if found.get(name, value) != value]  # fmt: skip
    changed = ", ".join(changed)
    if changed:
        raise SettingsMismatch(f"{folder} was made with other settings ({changed}): use another --out, or delete "
                               "that folder (and the stages after it) to make it again")  # fmt: skip
    return True


def record_settings(folder: Path, recipe: Recipe, names: tuple[str, ...]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe_settings.json").write_text(json.dumps({name: getattr(recipe, name) for name in names}) + "\n")


def make_world(root: Path, seed: int, recipe: Recipe) -> Path:
    """The seed's world under `root`, written once; a world written with other settings is refused (one line), as
    every stage after it would silently train on it."""
    settings = {"seed": seed, "num_images": recipe.num_images, "num_bench_images": recipe.num_bench_images,
                "image_size": recipe.image_size, "nudge": recipe.nudge, "qa_rounds": recipe.qa_rounds}  # fmt: skip
    recorded = root / "world_settings.json"
    if (root / "bench" / "answers.jsonl").is_file():
        # a setting added later is missing from older worlds, which were made at its default
        found = {"qa_rounds": Recipe.qa_rounds, **json.loads(recorded.read_text())} if recorded.is_file() else settings
        if found != settings:
            changed = ", ".join(f"{key} {found.get(key)} -> {value}" for key, value in settings.items()
                                if found.get(key) != value)  # fmt: skip
            raise WorldMismatch(f"{root} holds a world made with other settings ({changed}): use another --out, or "
                                "delete that seed's folder to start it again")  # fmt: skip
        return root
    write_world(root, recipe.num_images, seed=seed, image_size=recipe.image_size,
                num_bench_images=recipe.num_bench_images, progress=False, nudge=recipe.nudge,
                qa_rounds=recipe.qa_rounds)  # fmt: skip
    recorded.write_text(json.dumps(settings) + "\n")
    return root


def world_texts(world: Path, corpus: str = "world") -> list[str]:
    """Every sentence the world's data holds: captions, questions and answers ("world"), or captions alone."""
    if corpus not in LLM_CORPORA:
        raise ValueError(f"llm_corpus must be one of {LLM_CORPORA}, not {corpus!r}")
    texts = []
    names = ("detailed_captions.json", "brief_captions.json", "instruct.json")
    for name in names if corpus == "world" else names[:2]:
        for row in json.loads((world / name).read_text()):
            texts += [turn["value"].replace("<image>\n", "") for turn in row["conversations"]]
    return texts


def pretrain_llm(world: Path, out: Path, recipe: Recipe, seed: int, device: str = "cpu") -> Path:
    """A tiny Llama trained as a language model on the world's text (`recipe.llm_corpus`: all of it, or the captions
    alone) — the 'pre-trained LLM' — with its tokenizer (trained on all of the world's text either way)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if finished(out, "model.safetensors", recipe, LLM_SETTINGS):  # the weights: written last
        return out
    texts = world_texts(world)
    whole = WORDS if recipe.whole_words else ()
    write_llama_tokenizer(out, train_sentencepiece(seed, recipe.vocab_size, sentences=texts, whole_words=whole))
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.llm_hidden, intermediate_size=recipe.llm_hidden * 3,
        num_hidden_layers=recipe.llm_layers, num_attention_heads=recipe.llm_heads,
        num_key_value_heads=recipe.llm_heads,
        max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(device)
    corpus = texts if recipe.llm_corpus == "world" else world_texts(world, recipe.llm_corpus)
    stream = [token for text in corpus for token in [*tokenizer(text).input_ids, tokenizer.eos_token_id]]
    length, rng = 128, random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    for _ in tqdm(range(recipe.llm_steps), desc="pre-train LLM", leave=False, disable=None):
        starts = [rng.randrange(0, len(stream) - length - 1) for _ in range(recipe.batch_size)]
        batch = torch.tensor([stream[s : s + length] for s in starts], device=device)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    logger.info("pre-trained LLM: final loss %.3f", loss.item())
    record_settings(out, recipe, LLM_SETTINGS)
    with widened_new_safetensors(out):  # transformers writes the weights owner-only (through safetensors)
        model.save_pretrained(out)
    return out


def cell_targets(scene: Scene) -> list[int]:
    """What each of the 9 grid cells holds: 0 empty, 1 + (shape, colour, size) for an object, then one class per word
    of text (`CELL_CLASSES` in all)."""
    targets = [0] * 9
    for obj in scene.objects:
        targets[obj.cell] = (
            1
            + (SHAPES.index(obj.shape) * len(COLOURS) + list(COLOURS).index(obj.colour)) * len(SIZES)
            + SIZES.index(obj.size)
        )
    if scene.text is not None:
        targets[scene.text.cell] = 1 + len(SHAPES) * len(COLOURS) * len(SIZES) + WORDS.index(scene.text.word)
    return targets


CELL_CLASSES = 1 + len(SHAPES) * len(COLOURS) * len(SIZES) + len(WORDS)


def between_class_share(features: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The share of `features`' variance that lies between the classes (between-class over total sum of squares)."""
    centred = features - features.mean(0)
    members = torch.nn.functional.one_hot(classes, num_classes).to(features.dtype)  # [n, classes]
    counts = members.sum(0)
    means = members.T @ centred / counts.clamp(min=1).unsqueeze(1)
    between = (counts * means.pow(2).sum(1)).sum()
    return between / centred.pow(2).sum().clamp(min=1e-12)


def variance_shares(cells: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """How the object cells' features [B, 9, D] split their variance: the share between shapes, colours, sizes and
    grid positions (`cell_targets` [B, 9] says what each cell holds). A ViT trained only to classify cells gives colour
    about 40 % and shape under 3 % (docs/miniature/balanced-tower-sweep.json)."""
    objects = (targets >= 1) & (targets <= len(SHAPES) * len(COLOURS) * len(SIZES))
    rest, size = (targets[objects] - 1).div(len(SIZES), rounding_mode="floor"), (targets[objects] - 1) % len(SIZES)
    shape, colour = rest.div(len(COLOURS), rounding_mode="floor"), rest % len(COLOURS)
    position = torch.arange(targets.shape[1], device=targets.device).expand_as(targets)[objects]
    features = cells[objects]
    return {
        "shape": between_class_share(features, shape, len(SHAPES)),
        "colour": between_class_share(features, colour, len(COLOURS)),
        "size": between_class_share(features, size, len(SIZES)),
        "position": between_class_share(features, position, targets.shape[1]),
    }


BALANCED_ATTRIBUTES = ("shape", "colour", "position")  # what the captions and questions ask about each object


def balance_loss(cells: torch.Tensor, targets: torch.Tensor, floor: float) -> torch.Tensor:
    """How far shape, colour and position each fall short of `floor` of the object cells' feature variance (0 once
    each carries at least that much), so that the low-variance attributes are not left to the LLM to dig out."""
    shares = variance_shares(cells, targets)
    return sum(torch.relu(floor - shares[name]) for name in BALANCED_ATTRIBUTES) / floor


def cell_attributes(target: int) -> dict[str, int]:
    """What a `cell_targets` class says: {"kind": 0 empty / 1 object / 2 text} plus the object's shape, colour and
    size indices or the word's index."""
    objects = len(SHAPES) * len(COLOURS) * len(SIZES)
    if target == 0:
        return {"kind": 0}
    if target <= objects:
        rest, size = divmod(target - 1, len(SIZES))
        shape, colour = divmod(rest, len(COLOURS))
        return {"kind": 1, "shape": shape, "colour": colour, "size": size}
    return {"kind": 2, "word": target - 1 - objects}


def cell_accuracy(predicted: list[int], truth: list[int]) -> dict[str, float]:
    """Per attribute, the share of cells read right: "kind" over every cell, shape / colour / size over the cells
    that hold an object, "word" over the cells that hold text (a wrong kind counts as wrong); an attribute no cell
    has is left out."""
    right, total = Counter(), Counter()
    for guess, target in zip(predicted, truth, strict=True):
        guess, target = cell_attributes(guess), cell_attributes(target)
        for name, value in target.items():
            total[name] += 1
            right[name] += guess["kind"] == target["kind"] and guess.get(name) == value
    return {name: right[name] / total[name] for name in ("kind", "shape", "colour", "size", "word") if total[name]}


def load_images(world: Path, rows: list[dict]) -> torch.Tensor:
    """The images of `scenes.jsonl` rows as one uint8 [N, H, W, 3] tensor."""
    return torch.from_numpy(np.stack([np.asarray(Image.open(world / row["image"]).convert("RGB")) for row in rows]))


def pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] images → CLIP-normalised float [B, 3, H, W] (what the image processor gives these sizes)."""
    mean, std = torch.tensor(CLIP_MEAN, device=images.device), torch.tensor(CLIP_STD, device=images.device)
    return ((images.float() / 255.0 - mean) / std).permute(0, 3, 1, 2)


def pretrain_vision_tower(world: Path, out: Path, recipe: Recipe, seed: int, device: str = "cpu") -> Path:
    """A tiny CLIP-shaped ViT (the 'pre-trained encoder'), trained on the features share4v takes (layer -2, patch
    tokens) to tell what each grid cell holds (shape, colour and size, or the word written there) and, patch by
    patch, which cell the patch lies in — as CLIP's own features carry both what and where. Saved as a CLIP vision
    tower folder with its preprocessor config."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if finished(out, "preprocessor_config.json", recipe, TOWER_SETTINGS):  # written last
        return out
    config = CLIPVisionConfig(
        hidden_size=recipe.vision_hidden, intermediate_size=recipe.vision_hidden * 4,
        num_hidden_layers=recipe.vision_layers, num_attention_heads=4, image_size=recipe.image_size,
        patch_size=recipe.patch_size, projection_dim=recipe.vision_hidden, hidden_act="quick_gelu",
    )  # fmt: skip
    torch.manual_seed(seed)
    tower = CLIPVisionModel(config).to(device)
    what = torch.nn.Linear(recipe.vision_hidden, CELL_CLASSES).to(device)
    where = torch.nn.Linear(recipe.vision_hidden, 9).to(device)
    scenes = [json.loads(line) for line in (world / "scenes.jsonl").read_text().splitlines()]
    rows = [row for row in scenes if row["split"] == "train"]
    images = load_images(world, rows)
    targets = torch.tensor([cell_targets(Scene.from_dict(row)) for row in rows])
    side = recipe.image_size // recipe.patch_size
    cell_of_patch = torch.tensor([(r * 3 // side) * 3 + (c * 3 // side) for r in range(side) for c in range(side)])
    pool = torch.nn.functional.one_hot(cell_of_patch, 9).float()
    pool = (pool / pool.sum(0)).to(device)  # [patches, 9]: mean over each cell's patches
    cell_of_patch = cell_of_patch.to(device)
    optimizer = torch.optim.AdamW([*tower.parameters(), *what.parameters(), *where.parameters()],
                                  lr=recipe.learning_rate)  # fmt: skip
    rng = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(recipe.tower_steps), desc="pre-train ViT", leave=False, disable=None):
        index = torch.randint(0, len(images), (recipe.batch_size,), generator=rng)
        hidden = tower(pixels(images[index].to(device)), output_hidden_states=True).hidden_states[-2]
        features = hidden[:, 1:]  # the layer and tokens share4v uses
        cells = torch.einsum("bpd,pc->bcd", features, pool)
        what_loss = torch.nn.functional.cross_entropy(what(cells).flatten(0, 1), targets[index].to(device).flatten())
        where_logits = where(features).flatten(0, 1)
        where_loss = torch.nn.functional.cross_entropy(where_logits, cell_of_patch.repeat(len(index)))
        loss = what_loss + where_loss
        if recipe.tower_balance_weight:
            loss = loss + recipe.tower_balance_weight * balance_loss(
                cells, targets[index].to(device), recipe.tower_variance_floor
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    logger.info("pre-trained ViT: cell content loss %.3f, patch position loss %.3f", what_loss.item(),
                where_loss.item())  # fmt: skip
    held_out = [row for row in scenes if row["split"] == "bench"]
    if held_out:  # how well the benchmark images' cells are read: what the LLM stages can get from this tower
        with torch.no_grad():
            held_out_pixels = pixels(load_images(world, held_out).to(device))
            hidden = tower(held_out_pixels, output_hidden_states=True).hidden_states[-2]
            predicted = what(torch.einsum("bpd,pc->bcd", hidden[:, 1:], pool)).argmax(-1).flatten().tolist()
        truth = [target for row in held_out for target in cell_targets(Scene.from_dict(row))]
        accuracy = cell_accuracy(predicted, truth)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cell_accuracy.json").write_text(json.dumps(accuracy, indent=1) + "\n")
        logger.info("pre-trained ViT on the benchmark's cells: %s", {k: round(v, 3) for k, v in accuracy.items()})
    with widened_new_safetensors(out):
        tower.save_pretrained(out)
    record_settings(out, recipe, TOWER_SETTINGS)
    spec = TinySpec(image_size=recipe.image_size, patch_size=recipe.patch_size)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config_dict(spec)))
    return out


# ---- 3: the stages, through the training entry --------------------------------------------------------------------


def common_flags(recipe: Recipe, seed: int, steps: int, device: str = "cpu") -> list[str]:
    """The launch scripts' settings, scaled down (no checkpoints, small batches, higher learning rate; fp32 on any
    device)."""
    return [
        "--use_cpu", str(device == "cpu"), "--report_to", "none", "--save_strategy", "no",
        "--logging_steps", str(max(1, steps // 20)),
        "--per_device_train_batch_size", str(recipe.batch_size), "--gradient_accumulation_steps", "1",
        "--model_max_length", "512", "--dataloader_num_workers", "0" if device == "cpu" else "3", "--seed", str(seed),
        "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False",
        "--mm_use_im_patch_token", "False", "--image_aspect_ratio", "pad", "--lr_scheduler_type", "cosine",
        "--warmup_steps", "0.03", "--weight_decay", "0.", "--max_steps", str(steps), "--disable_tqdm", "True",
        "--compile_decoder_layers", "False",  # tiny layers: compiling costs more than it saves; the cards ran eager
    ]  # fmt: skip


def run_stage(name: str, out: Path, flags: list[str], recipe: Recipe, settings: tuple[str, ...]) -> list[float]:
    """One `share4v.train.train` run (skipped when it finished with the same `settings` of `recipe`); returns its
    logged losses."""
    history = out / "losses.json"
    if finished(out, history.name, recipe, settings):
        return json.loads(history.read_text())
    logger.info("%s -> %s", name, out)
    trainer = train(argv=[*flags, "--output_dir", str(out)])
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    record_settings(out, recipe, settings)
    history.write_text(json.dumps(losses))  # last: it marks the stage finished
    return losses


def stage_folders(root: Path, arm: str) -> list[Path]:
    """The training runs behind an arm's final checkpoint, in order."""
    stage1 = [] if arm == "none" else [root / f"stage1-{arm}"]
    return [root / "align", *stage1, root / f"stage2-{arm}"]


def sft_mix(world: Path, recipe: Recipe) -> Path:
    """The stage-2 data: every instruction row plus the detailed captions of the first `sft_caption_rows` images,
    as ShareGPT4V's instruction mix carries its GPT-4V captions (the same mix for every arm)."""
    path = world / f"sft_mix_{recipe.sft_caption_rows}.json"
    if not path.is_file():
        rows = json.loads((world / "instruct.json").read_text())
        rows += json.loads((world / "detailed_captions.json").read_text())[: recipe.sft_caption_rows]
        path.write_text(json.dumps(rows))
    return path


def align_projector(world: Path, parts: dict[str, Path], root: Path, recipe: Recipe, seed: int, device: str) -> Path:
    """Projector alignment on brief captions (LLaVA's 558K stand-in; shared by the arms of a seed)."""
    align = root / "align"
    run_stage("alignment", align, [
        *common_flags(recipe, seed, recipe.align_steps, device), "--model_name_or_path", str(parts["llm"]),
        "--version", "plain", "--data_path", str(world / "brief_captions.json"), "--image_folder", str(world),
        "--vision_tower", str(parts["tower"]), "--tune_mm_mlp_adapter", "True", "--learning_rate",
        str(recipe.learning_rate),
    ], recipe, ALIGN_SETTINGS)  # fmt: skip
    return align / "mm_projector.safetensors"


def run_arm(
    arm: str, world: Path, parts: dict[str, Path], root: Path, recipe: Recipe, seed: int, device: str = "cpu"
) -> Path:
    """Alignment (shared by the arms of a seed) → stage 1 on `arm` captions (none: skipped) → stage 2."""
    lr = str(recipe.learning_rate)
    projector_lr = ["--mm_projector_lr", str(recipe.projector_lr)] if recipe.projector_lr else []
    vision_tower_lr = ["--vision_tower_lr", str(recipe.vision_tower_lr)] if recipe.vision_tower_lr else []
    projector = str(align_projector(world, parts, root, recipe, seed, device))
    if arm == "none":
        start = ["--model_name_or_path", str(parts["llm"]), "--vision_tower", str(parts["tower"]),
                 "--pretrain_mm_mlp_adapter", projector]  # fmt: skip
    else:
        stage1 = root / f"stage1-{arm}"
        run_stage(f"stage 1 ({arm} captions)", stage1, [
            *common_flags(recipe, seed, recipe.stage1_steps, device), "--model_name_or_path", str(parts["llm"]),
            "--version", "plain", "--data_path", str(world / f"{arm}_captions.json"), "--image_folder", str(world),
            "--vision_tower", str(parts["tower"]), "--pretrain_mm_mlp_adapter", projector,
            "--tune_entire_model", "True", "--tune_vit_from_layer", str(recipe.vision_layers // 2),
            "--learning_rate", str(recipe.learning_rate / 2), *projector_lr, *vision_tower_lr,
        ], recipe, STAGE1_SETTINGS)  # fmt: skip
        start = ["--model_name_or_path", str(stage1), "--vision_tower", str(stage1 / "vision_tower")]
    stage2 = root / f"stage2-{arm}"
    run_stage(f"stage 2 after {arm}", stage2, [
        *common_flags(recipe, seed, recipe.stage2_steps, device), *start, "--version", "v1",
        "--data_path", str(sft_mix(world, recipe)), "--image_folder", str(world), "--learning_rate", lr, *projector_lr,
    ], recipe, STAGE2_SETTINGS if arm == "none" else (*STAGE2_SETTINGS, "stage1_steps"))  # fmt: skip
    return stage2


# ---- 4: the benchmark ---------------------------------------------------------------------------------------------


def _engine(checkpoint: Path, device: str) -> Share4VEngine:
    """The engine without a compiled decode step: for a model this small, compiling costs more than it saves on a few
    hundred short answers."""
    return Share4VEngine.from_pretrained(str(checkpoint), device=device, dtype=torch.float32, conv_mode="vicuna_v1",
                                         compile_decode=False)  # fmt: skip


def answer_benchmark(checkpoint: Path, world: Path, batch_size: int = 32, device: str = "cpu") -> list[dict]:
    """Greedy short answers to every benchmark question (the same prompt format as the instruction rows)."""
    out = checkpoint / "bench_answers.jsonl"
    if out.is_file():
        return [json.loads(line) for line in out.read_text().splitlines()]
    engine = _engine(checkpoint, device)
    questions = [json.loads(line) for line in (world / "bench" / "questions.jsonl").read_text().splitlines()]
    params = GenerationParams(temperature=0.0, max_new_tokens=8)
    answers = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        chats = [Chat.single("<image>\n" + q["text"], [str(world / q["image"])]) for q in chunk]
        for question, text in zip(chunk, engine.generate(chats, params), strict=True):
            answers.append({"question_id": question["question_id"], "prediction": text.strip()})
    out.write_text("".join(json.dumps(row) + "\n" for row in answers))
    return answers


def score(predictions: list[dict], world: Path) -> dict[str, float]:
    """Accuracy per category and overall: normalised exact match (case and articles ignored)."""
    truth = {row["question_id"]: row for row in map(json.loads, (world / "bench" / "answers.jsonl").open())}
    right, total = Counter(), Counter()
    for row in predictions:
        expected = truth[row["question_id"]]
        category = expected["category"]
        total[category] += 1
        right[category] += vqa_normalize(row["prediction"].lower()) == vqa_normalize(expected["answer"].lower())
    scores = {category: right[category] / total[category] for category in sorted(total)}
    scores["overall"] = sum(right.values()) / sum(total.values())
    return scores


def majority_baseline(world: Path) -> dict[str, float]:
    """The score of always giving each category's most common answer: what 'chance' means here."""
    by_category = defaultdict(list)
    for row in map(json.loads, (world / "bench" / "answers.jsonl").open()):
        by_category[row["category"]].append(row["answer"])
    predictions = []
    for row in map(json.loads, (world / "bench" / "answers.jsonl").open()):
        common = Counter(by_category[row["category"]]).most_common(1)[0][0]
        predictions.append({"question_id": row["question_id"], "prediction": common})
    return score(predictions, world)


def uniform_chance(world: Path) -> float:
    """The expected score of answering uniformly at random among each category's answers (mean over questions)."""
    rows = list(map(json.loads, (world / "bench" / "answers.jsonl").open()))
    choices = defaultdict(set)
    for row in rows:
        choices[row["category"]].add(vqa_normalize(row["answer"].lower()))
    return sum(1 / len(choices[row["category"]]) for row in rows) / len(rows)


def caption_accuracy(
    checkpoint: str | Path,
    seed: int,
    num_images: int = 200,
    image_size: int = 96,
    device: str = "cpu",
    batch_size: int = 50,
    nudge: float = 1.0,
) -> dict:
    """How well a checkpoint captions fresh images of the world (a split no stage saw): the mean of
    `caption_recall` (objects, colours, counts, positions and text named right) over `num_images` scenes, for the
    model's greedy answer to "Describe the image in detail." and, for scale, for each scene's own brief caption.
    `nudge` is the world's (`Recipe.nudge`)."""
    from share4v.data.synthetic import brief_caption, caption_recall, detailed_caption, render, scene_for

    engine = _engine(checkpoint, device)
    scenes = [scene_for(seed, "fresh", index, image_size, nudge) for index in range(num_images)]
    params = GenerationParams(temperature=0.0, max_new_tokens=160)
    captions = []
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index, scene in enumerate(scenes):
            paths.append(f"{folder}/{index}.png")
            render(scene).save(paths[-1])
        for start in tqdm(range(0, num_images, batch_size), desc="captions", leave=False, disable=None):
            chats = [Chat.single("<image>\nDescribe the image in detail.", [path])
                     for path in paths[start : start + batch_size]]  # fmt: skip
            captions += engine.generate(chats, params)

    def mean_recall(texts: list[str]) -> dict[str, float]:
        recalls = [caption_recall(text, scene) for text, scene in zip(texts, scenes, strict=True)]
        return {key: float(np.mean([r[key] for r in recalls if r[key] is not None])) for key in recalls[0]}

    examples = [
        {"caption": caption, "truth": detailed_caption(scene)}
        for caption, scene in zip(captions[:3], scenes[:3], strict=True)
    ]
    return {"num_images": num_images, "nudge": nudge, "model": mean_recall(captions),
            "brief_caption": mean_recall([brief_caption(scene) for scene in scenes]), "examples": examples}  # fmt: skip


# ---- the shipped model -------------------------------------------------------------------------------------------

# copied as they are (config.json is rewritten: it names the tower inside the export)
MODEL_FILES = ("generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "tokenizer.model", "special_tokens_map.json")  # fmt: skip
TOWER_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


def check_export_target(dest: Path, keep: list[Path]) -> Path:
    """`dest` resolved, where `export_model` may write it: not inside, around or at any folder of `keep` (the run's
    folders), and either new, an empty folder or an earlier export (a share4v model whose vision tower lies within
    it), which is replaced. Raises FileExistsError otherwise."""
    dest = dest.resolve()
    for folder in (path.resolve() for path in keep):
        if dest == folder or folder in dest.parents or dest in folder.parents:
            raise FileExistsError(f"--export {dest}: it lies in, around or at {folder}, which the run uses")
    if not dest.exists() or (dest.is_dir() and not any(dest.iterdir())):
        return dest
    config = dest / "config.json"
    exported = dest.is_dir() and config.is_file() and json.loads(config.read_text()).get("mm_vision_tower")
    if exported != "vision_tower":
        raise FileExistsError(f"--export {dest}: it exists and is no earlier export of a model, so it is not replaced")
    return dest


def export_model(checkpoint: Path, dest: Path) -> Path:
    """A trained arm's checkpoint as a self-contained model folder in the released layout: the LLM, projector,
    tokenizer and configs, with the vision tower it was trained with in `dest/vision_tower`, which `config.json` names
    relative to the folder (so the folder loads wherever it is copied). Training records are left out. An earlier
    export at `dest` is replaced whole, once the new one is complete; anything else there is refused
    (`check_export_target`)."""
    missing = [name for name in ("config.json", "model.safetensors") if not (checkpoint / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{checkpoint} is no trained arm's checkpoint: no {' or '.join(missing)}")
    config = json.loads((checkpoint / "config.json").read_text())
    tower = Path(resolve_vision_tower_path(config["mm_vision_tower"], checkpoint))
    dest = check_export_target(dest, keep=[checkpoint, tower])
    staging = dest.parent / f".{dest.name}.partial"  # an export cut off halfway is left here, never at `dest`
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "vision_tower").mkdir(parents=True)
    for name in MODEL_FILES:
        if (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, staging / name)
    for name in TOWER_FILES:
        shutil.copyfile(tower / name, staging / "vision_tower" / name)
    config["mm_vision_tower"] = "vision_tower"
    (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    return dest


# ---- the whole recipe ---------------------------------------------------------------------------------------------


def reproduce(out: Path, seeds: list[int], arms: list[str], recipe: Recipe, device: str = "cpu") -> dict:
    """Every arm for every seed; writes `score_card.json` and `score_card.md` into `out` and returns the card.
    With no arms, only what the arms of a seed share is made (world, pre-trained parts, alignment), so that
    separate processes can then run one arm each."""
    card = {"recipe": asdict(recipe), "device": device, "runs": []}
    for seed in seeds:
        root = out / f"seed{seed}"
        world = make_world(root / "world", seed, recipe)
        parts = {"llm": pretrain_llm(world, root / "llm", recipe, seed, device),
                 "tower": pretrain_vision_tower(world, root / "tower", recipe, seed, device)}  # fmt: skip
        if not arms:
            align_projector(world, parts, root, recipe, seed, device)
        if (parts["tower"] / "cell_accuracy.json").is_file():
            card.setdefault("tower_cell_accuracy", {})[str(seed)] = json.loads(
                (parts["tower"] / "cell_accuracy.json").read_text()
            )
        card.setdefault("majority_baseline", majority_baseline(world))
        card.setdefault("uniform_chance", uniform_chance(world))
        for arm in arms:
            checkpoint = run_arm(arm, world, parts, root, recipe, seed, device)
            scores = score(answer_benchmark(checkpoint, world, device=device), world)
            write_scores(out / "scores" / f"seed{seed}-{arm}" / "miniature.json", "miniature",
                         {name: round(100 * value, 2) for name, value in scores.items()},
                         source=checkpoint / "bench_answers.jsonl")  # fmt: skip
            losses = {stage.name: json.loads((stage / "losses.json").read_text()) for stage in stage_folders(root, arm)}
            card["runs"].append({"seed": seed, "arm": arm, "checkpoint": str(checkpoint), "scores": scores,
                                 "losses": losses})  # fmt: skip
            logger.info("seed %d, stage 1 on %s: %s", seed, arm, scores)
            write_card(card, out)  # after every arm, so a long run shows its progress
    return card


def write_card(card: dict, out: Path) -> None:
    """The recipe's own card (every seed and arm: mean ± spread per category, the baselines, loss curves) in `out`,
    and `share4v.eval.report`'s card of the score files written so far (one row per seed and arm) in `out/report`."""
    (out / "score_card.json").write_text(json.dumps(card, indent=1) + "\n")
    (out / "score_card.md").write_text(score_table(card) + "\n" + claim_table(card))
    plot_card(card, out / "score_card.png")
    if (out / "scores").is_dir():
        write_report(build_report(find_score_files(out / "scores"), benchmarks=["miniature"]), out / "report")


def score_table(card: dict) -> str:
    """Mean ± spread (half the range over seeds) of each arm's scores, as a markdown table."""
    categories = [*sorted({c for run in card["runs"] for c in run["scores"]} - {"overall"}), "overall"]
    lines = ["| stage 1 | seeds | " + " | ".join(categories) + " |", "|---" * (len(categories) + 2) + "|"]
    for arm in dict.fromkeys(run["arm"] for run in card["runs"]):
        runs = [run for run in card["runs"] if run["arm"] == arm]
        cells = []
        for category in categories:
            values = [run["scores"].get(category, 0.0) * 100 for run in runs]
            mean, spread = sum(values) / len(values), (max(values) - min(values)) / 2
            cells.append(f"{mean:.1f} ± {spread:.1f}")
        label = {"none": "none (projector only)"}.get(arm, f"{arm} captions")
        lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    majority = card.get("majority_baseline", {})
    lines.append("| majority answer | - | " + " | ".join(f"{majority.get(c, 0) * 100:.1f}" for c in categories) + " |")
    return "\n".join(lines) + "\n"


# The paper's claim, as pairs of arms: the first should score above the second on every seed (detailed captions
# beat brief ones, and both beat no stage 1).
CLAIM = (("detailed", "brief"), ("brief", "none"), ("detailed", "none"))


def claim_table(card: dict) -> str:
    """The paper's claim seed by seed, as markdown: each seed's overall score per arm, the margins of `CLAIM`'s pairs
    (each seed's arms share its world, ViT, LLM and alignment, so the margin is a paired comparison), and on how many
    seeds each pair is in the paper's order."""
    overall = {(run["seed"], run["arm"]): 100 * run["scores"]["overall"] for run in card["runs"]}
    seeds = sorted({seed for seed, _ in overall})
    arms = [arm for arm in ARMS if any(key[1] == arm for key in overall)]
    pairs = [(a, b) for a, b in CLAIM if a in arms and b in arms]
    margin = {(seed, a, b): overall[seed, a] - overall[seed, b]
              for seed in seeds for a, b in pairs if (seed, a) in overall and (seed, b) in overall}  # fmt: skip
    header = [*arms, *(f"{a} − {b}" for a, b in pairs)]
    lines = ["| seed | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for seed in seeds:
        cells = [f"{overall[seed, arm]:.1f}" if (seed, arm) in overall else "-" for arm in arms]
        cells += [f"{margin[seed, a, b]:+.1f}" if (seed, a, b) in margin else "-" for a, b in pairs]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines.append("")
    for a, b in pairs:
        margins = [value for (_, first, second), value in margin.items() if (first, second) == (a, b)]
        if margins:
            lines.append(f"- {a} > {b} on {sum(m > 0 for m in margins)} of {len(margins)} seeds: margin "
                         f"{sum(margins) / len(margins):+.1f} points on average ({min(margins):+.1f} to "
                         f"{max(margins):+.1f})")  # fmt: skip
    return "\n".join(lines) + "\n"


def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"expected true or false, not {value!r}")
    return value.lower() in ("true", "1")


def recipe_with(recipe: Recipe, settings: list[str]) -> Recipe:
    """`recipe` with `NAME=VALUE` settings applied (`--set stage1_steps=800`); an unknown name is one line."""
    fields = {field.name: field for field in dataclasses.fields(Recipe)}
    changes = {}
    for setting in settings:
        name, _, value = setting.partition("=")
        if name not in fields or not value:
            raise ValueError(f"--set {setting!r}: expected NAME=VALUE with NAME one of {', '.join(fields)}")
        cast = {"float": float, "str": str, "bool": _flag}.get(fields[name].type, int)
        try:
            changes[name] = cast(value)
        except ValueError as error:
            raise ValueError(f"--set {setting}: {error}") from None
    changed = dataclasses.replace(recipe, **changes)
    if not 0.0 <= changed.nudge <= 1.0:
        raise ValueError(f"--set nudge={changed.nudge}: the nudge must lie in [0, 1]")
    if changed.llm_corpus not in LLM_CORPORA:
        raise ValueError(f"--set llm_corpus={changed.llm_corpus}: choose one of {', '.join(LLM_CORPORA)}")
    for name in ("projector_lr", "vision_tower_lr"):
        if getattr(changed, name) < 0:
            raise ValueError(f"--set {name}={getattr(changed, name)}: a learning rate is not negative (0: the stage's)")
    if not 0 < changed.tower_variance_floor <= 1:
        raise ValueError(f"--set tower_variance_floor={changed.tower_variance_floor}: a share, in (0, 1]")
    if changed.qa_rounds < 2:
        raise ValueError(f"--set qa_rounds={changed.qa_rounds}: an instruction row asks at least 2 questions")
    return changed


def plot_card(card: dict, path: Path) -> Path | None:
    """A PNG of the card: each arm's logged training losses (first seed; alignment, stage 1, stage 2 end to end)
    and its overall and per-category scores (mean over seeds, with the range), beside the majority answer.
    None (and a log line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("no matplotlib: %s not drawn (pip install matplotlib)", path)
        return None
    arms = list(dict.fromkeys(run["arm"] for run in card["runs"]))
    categories = [*sorted({c for run in card["runs"] for c in run["scores"]} - {"overall"}), "overall"]
    figure, (losses, scores) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 1.6]})
    first_seed = card["runs"][0]["seed"]
    for arm in arms:
        run = next(r for r in card["runs"] if r["arm"] == arm and r["seed"] == first_seed)
        curve = [loss for stage in run["losses"].values() for loss in stage]
        losses.plot(curve, label=_ARM_LABELS.get(arm, arm))
    losses.set(title=f"logged training loss (seed {first_seed})", xlabel="logging step", ylabel="loss", yscale="log")
    losses.legend()
    width = 0.8 / (len(arms) + 1)
    for index, arm in enumerate(arms):
        runs = [run for run in card["runs"] if run["arm"] == arm]
        values = np.array([[run["scores"].get(c, 0.0) * 100 for c in categories] for run in runs])
        mean = values.mean(0)
        error = np.stack([mean - values.min(0), values.max(0) - mean])
        positions = np.arange(len(categories)) + index * width
        scores.bar(positions, mean, width, yerr=error, capsize=2, label=_ARM_LABELS.get(arm, arm))
    majority = card.get("majority_baseline", {})
    positions = np.arange(len(categories)) + len(arms) * width
    scores.bar(positions, [majority.get(c, 0.0) * 100 for c in categories], width, color="0.7", label="majority answer")
    scores.set_xticks(np.arange(len(categories)) + len(arms) * width / 2, categories, rotation=30)
    scores.set(title=f"held-out benchmark ({len({r['seed'] for r in card['runs']})} seeds)", ylabel="accuracy (%)")
    scores.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


_ARM_LABELS = {"detailed": "stage 1: detailed captions", "brief": "stage 1: brief captions",
               "none": "no stage 1 (projector only)"}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for worlds, checkpoints and the score card")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: %(default)s)")
    parser.add_argument("--arms", nargs="*", choices=ARMS, default=list(ARMS),
                        help="stage-1 data (default: all); none given: only the parts the arms share")  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="the CI-sized recipe: about 1.6 CPU minutes per arm; learns colours only"
    )
    parser.add_argument("--set", dest="settings", metavar="NAME=VALUE", nargs="+", default=[],
                        help="change a recipe setting, e.g. --set stage1_steps=800 llm_layers=6")  # fmt: skip
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when present)")
    parser.add_argument("--export", type=Path, metavar="DIR",
                        help="afterwards, write the first seed's first arm as a self-contained model folder (the "
                             "released layout, as share4v/assets/share4v-miniature)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.export and not args.arms:
        parser.error("--export needs an arm to export (--arms detailed, say)")
    try:
        if args.export:
            check_export_target(args.export, keep=[args.out])  # before hours of training, not after
    except FileExistsError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        recipe = recipe_with(Recipe.quick() if args.quick else Recipe(), args.settings)
    except ValueError as err:
        parser.error(str(err))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        card = reproduce(args.out, args.seeds, args.arms, recipe, device)
    except SettingsMismatch as err:
        parser.error(str(err))
    if card["runs"]:
        print(score_table(card) + "\n" + claim_table(card), end="")
    if args.export:
        print(f"exported {card['runs'][0]['arm']} arm of seed {args.seeds[0]} to "
              f"{export_model(Path(card['runs'][0]['checkpoint']), args.export)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "ARMS", "Recipe", "caption_accuracy", "claim_table", "majority_baseline", "reproduce", "score", "score_table",
    "uniform_chance",
]  # fmt: skip
