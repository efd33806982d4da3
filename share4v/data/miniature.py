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
    python -m share4v.data.miniature --out /tmp/m --quick                   # every stage, a few minutes per arm
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from share4v.data.synthetic import COLOURS, SHAPES, Scene, write_world
from share4v.eval.metrics import vqa_normalize
from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.testing.make_tiny_checkpoint import CLIP_MEAN, CLIP_STD, TinySpec, preprocessor_config_dict
from share4v.testing.tiny_tokenizer import train_sentencepiece, write_llama_tokenizer
from share4v.train.train import train

logger = logging.getLogger(__name__)

ARMS = ("detailed", "brief", "none")  # what stage 1 trains on; "none" skips it (projector-only baseline)


@dataclass(frozen=True)
class Recipe:
    """Sizes and step counts; `quick()` is the CI version."""

    num_images: int = 800
    num_bench_images: int = 60
    image_size: int = 144  # 9 x 9 patches of 16 px: each grid cell is 3 x 3 patches
    patch_size: int = 16
    vision_hidden: int = 96
    vision_layers: int = 4
    llm_hidden: int = 128
    llm_layers: int = 4
    vocab_size: int = 1000
    batch_size: int = 16
    tower_steps: int = 600
    llm_steps: int = 200
    align_steps: int = 100
    stage1_steps: int = 600
    stage2_steps: int = 300
    learning_rate: float = 1e-3

    @classmethod
    def quick(cls) -> Recipe:
        """A few minutes per arm on two cores: runs every stage, too short to learn much."""
        return cls(num_images=160, num_bench_images=20, tower_steps=60, llm_steps=80, align_steps=20,
                   stage1_steps=60, stage2_steps=80)  # fmt: skip

    @classmethod
    def smoke(cls) -> Recipe:
        """Seconds: checks the wiring (world → pre-training → stages → benchmark → score card), learns nothing."""
        return cls(num_images=12, num_bench_images=2, image_size=96, patch_size=32, vision_hidden=32,
                   vision_layers=2, llm_hidden=32, llm_layers=2, vocab_size=400, batch_size=4, tower_steps=2,
                   llm_steps=2, align_steps=2, stage1_steps=2, stage2_steps=2)  # fmt: skip


# ---- 1 + 2: the world and the pre-trained parts -------------------------------------------------------------------


def make_world(root: Path, seed: int, recipe: Recipe) -> Path:
    if not (root / "bench" / "answers.jsonl").is_file():
        write_world(root, recipe.num_images, seed=seed, image_size=recipe.image_size,
                    num_bench_images=recipe.num_bench_images, progress=False)  # fmt: skip
    return root


def world_texts(world: Path) -> list[str]:
    """Every sentence the world's data holds (captions, questions, answers)."""
    texts = []
    for name in ("detailed_captions.json", "brief_captions.json", "instruct.json"):
        for row in json.loads((world / name).read_text()):
            texts += [turn["value"].replace("<image>\n", "") for turn in row["conversations"]]
    return texts


def pretrain_llm(world: Path, out: Path, recipe: Recipe, seed: int) -> Path:
    """A tiny Llama trained as a language model on the world's text (the 'pre-trained LLM'), with its tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return out
    texts = world_texts(world)
    write_llama_tokenizer(out, train_sentencepiece(seed, recipe.vocab_size, sentences=texts))
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.llm_hidden, intermediate_size=recipe.llm_hidden * 3,
        num_hidden_layers=recipe.llm_layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    stream = [token for text in texts for token in [*tokenizer(text).input_ids, tokenizer.eos_token_id]]
    length, rng = 128, random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    for _ in tqdm(range(recipe.llm_steps), desc="pre-train LLM", leave=False, disable=None):
        starts = [rng.randrange(0, len(stream) - length - 1) for _ in range(recipe.batch_size)]
        batch = torch.tensor([stream[s : s + length] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    logger.info("pre-trained LLM: final loss %.3f", loss.item())
    model.save_pretrained(out)
    return out


def cell_targets(scene: Scene) -> list[int]:
    """What each of the 9 grid cells holds: 0 empty, else 1 + shape x colour."""
    colours = list(COLOURS)
    targets = [0] * 9
    for obj in scene.objects:
        targets[obj.cell] = 1 + SHAPES.index(obj.shape) * len(colours) + colours.index(obj.colour)
    return targets


def pixels(image: Image.Image) -> torch.Tensor:
    array = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32))
    array = (array / 255.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    return array.permute(2, 0, 1)


def pretrain_vision_tower(world: Path, out: Path, recipe: Recipe, seed: int) -> Path:
    """A tiny CLIP-shaped ViT trained to name each grid cell's content from its patches (the 'pre-trained
    encoder'); saved as a CLIP vision tower folder with its preprocessor config."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if (out / "config.json").is_file():
        return out
    config = CLIPVisionConfig(
        hidden_size=recipe.vision_hidden, intermediate_size=recipe.vision_hidden * 4,
        num_hidden_layers=recipe.vision_layers, num_attention_heads=4, image_size=recipe.image_size,
        patch_size=recipe.patch_size, projection_dim=recipe.vision_hidden, hidden_act="quick_gelu",
    )  # fmt: skip
    torch.manual_seed(seed)
    tower = CLIPVisionModel(config)
    head = torch.nn.Linear(recipe.vision_hidden, 1 + len(SHAPES) * len(COLOURS))
    rows = [json.loads(line) for line in (world / "scenes.jsonl").read_text().splitlines()]
    rows = [row for row in rows if row["split"] == "train"]
    images = torch.stack([pixels(Image.open(world / row["image"])) for row in rows])
    targets = torch.tensor([cell_targets(Scene.from_dict(row)) for row in rows])
    side = recipe.image_size // recipe.patch_size
    cell_of_patch = torch.tensor([(r * 3 // side) * 3 + (c * 3 // side) for r in range(side) for c in range(side)])
    pool = torch.nn.functional.one_hot(cell_of_patch, 9).float()
    pool = pool / pool.sum(0)  # [patches, 9]: mean over each cell's patches
    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=recipe.learning_rate)
    rng = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(recipe.tower_steps), desc="pre-train ViT", leave=False, disable=None):
        index = torch.randint(0, len(images), (recipe.batch_size,), generator=rng)
        features = tower(images[index], output_hidden_states=True).hidden_states[-2][:, 1:]  # the layer share4v uses
        cells = torch.einsum("bpd,pc->bcd", features, pool)
        loss = torch.nn.functional.cross_entropy(head(cells).flatten(0, 1), targets[index].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    logger.info("pre-trained ViT: final cell loss %.3f", loss.item())
    tower.save_pretrained(out)
    spec = TinySpec(image_size=recipe.image_size, patch_size=recipe.patch_size)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config_dict(spec)))
    return out


# ---- 3: the stages, through the training entry --------------------------------------------------------------------


def common_flags(recipe: Recipe, seed: int, steps: int) -> list[str]:
    """The launch scripts' settings, scaled down (CPU, no checkpoints, small batches, higher learning rate)."""
    return [
        "--use_cpu", "True", "--report_to", "none", "--save_strategy", "no",
        "--logging_steps", str(max(1, steps // 20)),
        "--per_device_train_batch_size", str(recipe.batch_size), "--gradient_accumulation_steps", "1",
        "--model_max_length", "512", "--dataloader_num_workers", "0", "--seed", str(seed),
        "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False",
        "--mm_use_im_patch_token", "False", "--image_aspect_ratio", "pad", "--lr_scheduler_type", "cosine",
        "--warmup_steps", "0.03", "--weight_decay", "0.", "--max_steps", str(steps), "--disable_tqdm", "True",
    ]  # fmt: skip


def run_stage(name: str, out: Path, flags: list[str]) -> list[float]:
    """One `share4v.train.train` run (skipped when its output exists); returns its logged losses."""
    history = out / "losses.json"
    if history.is_file():
        return json.loads(history.read_text())
    logger.info("%s -> %s", name, out)
    trainer = train(argv=[*flags, "--output_dir", str(out)])
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    history.write_text(json.dumps(losses))
    return losses


def stage_folders(root: Path, arm: str) -> list[Path]:
    """The training runs behind an arm's final checkpoint, in order."""
    stage1 = [] if arm == "none" else [root / f"stage1-{arm}"]
    return [root / "align", *stage1, root / f"stage2-{arm}"]


def run_arm(arm: str, world: Path, parts: dict[str, Path], root: Path, recipe: Recipe, seed: int) -> Path:
    """Alignment (shared by the arms of a seed) → stage 1 on `arm` captions (none: skipped) → stage 2."""
    lr = str(recipe.learning_rate)
    align = root / "align"
    run_stage("alignment", align, [
        *common_flags(recipe, seed, recipe.align_steps), "--model_name_or_path", str(parts["llm"]),
        "--version", "plain", "--data_path", str(world / "brief_captions.json"), "--image_folder", str(world),
        "--vision_tower", str(parts["tower"]), "--tune_mm_mlp_adapter", "True", "--learning_rate", lr,
    ])  # fmt: skip
    projector = str(align / "mm_projector.safetensors")
    if arm == "none":
        start = ["--model_name_or_path", str(parts["llm"]), "--vision_tower", str(parts["tower"]),
                 "--pretrain_mm_mlp_adapter", projector]  # fmt: skip
    else:
        stage1 = root / f"stage1-{arm}"
        run_stage(f"stage 1 ({arm} captions)", stage1, [
            *common_flags(recipe, seed, recipe.stage1_steps), "--model_name_or_path", str(parts["llm"]),
            "--version", "plain", "--data_path", str(world / f"{arm}_captions.json"), "--image_folder", str(world),
            "--vision_tower", str(parts["tower"]), "--pretrain_mm_mlp_adapter", projector,
            "--tune_entire_model", "True", "--tune_vit_from_layer", str(recipe.vision_layers // 2),
            "--learning_rate", str(recipe.learning_rate / 2),
        ])  # fmt: skip
        start = ["--model_name_or_path", str(stage1), "--vision_tower", str(stage1 / "vision_tower")]
    stage2 = root / f"stage2-{arm}"
    run_stage(f"stage 2 after {arm}", stage2, [
        *common_flags(recipe, seed, recipe.stage2_steps), *start, "--version", "v1",
        "--data_path", str(world / "instruct.json"), "--image_folder", str(world), "--learning_rate", lr,
    ])  # fmt: skip
    return stage2


# ---- 4: the benchmark ---------------------------------------------------------------------------------------------


def answer_benchmark(checkpoint: Path, world: Path, batch_size: int = 32) -> list[dict]:
    """Greedy short answers to every benchmark question (the same prompt format as the instruction rows)."""
    out = checkpoint / "bench_answers.jsonl"
    if out.is_file():
        return [json.loads(line) for line in out.read_text().splitlines()]
    engine = Share4VEngine.from_pretrained(str(checkpoint), device="cpu", conv_mode="vicuna_v1")
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


# ---- the whole recipe ---------------------------------------------------------------------------------------------


def reproduce(out: Path, seeds: list[int], arms: list[str], recipe: Recipe) -> dict:
    """Every arm for every seed; writes `score_card.json` and `score_card.md` into `out` and returns the card."""
    card = {"recipe": asdict(recipe), "runs": []}
    for seed in seeds:
        root = out / f"seed{seed}"
        world = make_world(root / "world", seed, recipe)
        parts = {"llm": pretrain_llm(world, root / "llm", recipe, seed),
                 "tower": pretrain_vision_tower(world, root / "tower", recipe, seed)}  # fmt: skip
        card.setdefault("majority_baseline", majority_baseline(world))
        card.setdefault("uniform_chance", uniform_chance(world))
        for arm in arms:
            checkpoint = run_arm(arm, world, parts, root, recipe, seed)
            scores = score(answer_benchmark(checkpoint, world), world)
            losses = {stage.name: json.loads((stage / "losses.json").read_text()) for stage in stage_folders(root, arm)}
            card["runs"].append({"seed": seed, "arm": arm, "checkpoint": str(checkpoint), "scores": scores,
                                 "losses": losses})  # fmt: skip
            logger.info("seed %d, stage 1 on %s: %s", seed, arm, scores)
    (out / "score_card.json").write_text(json.dumps(card, indent=1) + "\n")
    (out / "score_card.md").write_text(score_table(card))
    return card


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for worlds, checkpoints and the score card")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: %(default)s)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="stage-1 data (default: all)")
    parser.add_argument("--quick", action="store_true", help="a few minutes per arm; too short to learn much")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    recipe = Recipe.quick() if args.quick else Recipe()
    card = reproduce(args.out, args.seeds, args.arms, recipe)
    print(score_table(card), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ARMS", "Recipe", "majority_baseline", "reproduce", "score", "score_table", "uniform_chance"]
