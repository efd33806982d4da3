"""benchmarks/train_zero3_7b.py

A stage-2 (instruction tuning) step of ShareGPT4V-7B's shape, random weights, through share4v's own trainer
(`share4v.train.train.build_trainer`, the entry the launch scripts call) under DeepSpeed ZeRO-3 with bf16 and
gradient checkpointing, on a LLaVA-mix-like length distribution. Measures useful (non-padding) tokens per second
per GPU — text tokens plus 576 positions per image — and peak GPU memory.

    python benchmarks/train_zero3_7b.py make-world /tmp/world            # checkpoint + data, once (one GPU)
    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node 2 benchmarks/train_zero3_7b.py run /tmp/world \\
        --out benchmarks/results/train_zero3_7b.json --micro-batch 4

The world: Vicuna-7B shape (hidden 4096, MLP 11008, 32 layers, 32 heads, vocabulary 32000), CLIP ViT-L/14-336
(hidden 1024, 24 layers), mlp2x_gelu projector, all random; a small locally trained tokenizer (its ids are a subset
of the vocabulary). Data: 90% image rows (one 336 px-class image, padded to square) and 10% text-only rows, 1-4
question/answer rounds; answer lengths are log-normal (median 25 words, long tail, capped at 500) so that sample lengths
spread like LLaVA-665K's (most between 650 and 1100 positions with an image, a tail to 2048).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from share4v.constants import IMAGE_TOKEN_INDEX
from share4v.testing.make_tiny_checkpoint import TinySpec, llm_config_dict, preprocessor_config_dict
from share4v.testing.tiny_tokenizer import _WORDS, train_sentencepiece, write_llama_tokenizer


def _image_tokens(root: Path) -> int:
    tower = json.loads((root / "vision_tower" / "config.json").read_text())
    return (tower["image_size"] // tower["patch_size"]) ** 2


def make_world(root: Path, num_rows: int, layers: int, tiny: bool = False, seed: int = 0) -> None:
    from PIL import Image
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from share4v.model import Share4VConfig, Share4VLlamaForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    if tiny:  # a smoke-test world for the CPU
        spec, tower_layers, tower_heads, tower_mlp = TinySpec(), 3, 4, 64
    else:
        spec = TinySpec(
            vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=layers, num_heads=32,
            vision_hidden_size=1024, image_size=336, patch_size=14, initializer_range=0.02,
        )  # fmt: skip
        tower_layers, tower_heads, tower_mlp = 24, 16, 4096
    config = llm_config_dict(spec, vision_tower="vision_tower")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    with torch.device(device):
        model = Share4VLlamaForCausalLM(Share4VConfig(**config)).to(torch.bfloat16)
    model.save_pretrained(root)  # no tower loaded: config keeps mm_vision_tower "vision_tower"
    del model
    write_llama_tokenizer(root, train_sentencepiece(seed, 512))

    tower_config = CLIPVisionConfig(
        hidden_size=spec.vision_hidden_size, intermediate_size=tower_mlp, num_hidden_layers=tower_layers,
        num_attention_heads=tower_heads, image_size=spec.image_size, patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden_size, hidden_act="quick_gelu",
    )  # fmt: skip
    with torch.device(device):
        tower = CLIPVisionModel(tower_config).to(torch.bfloat16)
    tower.save_pretrained(root / "vision_tower")
    (root / "vision_tower" / "preprocessor_config.json").write_text(json.dumps(preprocessor_config_dict(spec)))

    rng = random.Random(seed)
    (root / "images").mkdir(exist_ok=True)
    for index in range(32):
        size = (rng.randint(300, 640), rng.randint(300, 640))
        pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=torch.Generator().manual_seed(index))
        Image.fromarray(pixels.to(torch.uint8).numpy()).save(root / "images" / f"{index}.jpg", quality=90)
    rows = []
    for index in range(num_rows):
        turns, has_image = [], rng.random() < 0.9
        for round_index in range(rng.choice([1, 1, 2, 3, 4])):
            question = " ".join(rng.choices(_WORDS, k=rng.randint(4, 16))) + "?"
            words = min(int(math.exp(rng.gauss(math.log(25), 1.0))), 500)
            answer = " ".join(rng.choices(_WORDS, k=max(words, 1))) + "."
            if round_index == 0 and has_image:
                question = "<image>\n" + question
            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        row = {"id": str(index), "conversations": turns}
        if has_image:
            row["image"] = f"images/{rng.randrange(32)}.jpg"
        rows.append(row)
    (root / "data.json").write_text(json.dumps(rows))


class Meter:
    """Counts useful positions seen by the model's forward and times steps [warmup, warmup + steps)."""

    def __init__(self, warmup: int, steps: int, image_tokens: int):
        from transformers import TrainerCallback

        meter = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                model.register_forward_pre_hook(meter.count, with_kwargs=True)

            def on_step_end(self, args, state, control, **kwargs):
                meter.step_end(state.global_step)

        self.callback = Callback()
        self.warmup, self.steps, self.image_tokens = warmup, steps, image_tokens
        self.tokens = 0
        self.step_times: list[float] = []
        self.start = None

    def count(self, module, args, kwargs):
        if module.training and kwargs.get("attention_mask") is not None:
            images = int((kwargs["input_ids"] == IMAGE_TOKEN_INDEX).sum())
            self.tokens += int(kwargs["attention_mask"].sum()) + images * (self.image_tokens - 1)

    def step_end(self, step: int) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if step == self.warmup:
            self.start, self.start_tokens = now, self.tokens
        self.step_times.append(now)
        if step == self.warmup + self.steps:
            self.elapsed, self.measured_tokens = now - self.start, self.tokens - self.start_tokens


def run(
    root: Path,
    out: Path,
    micro_batch: int,
    warmup: int,
    steps: int,
    checkpointing: bool,
    cpu: bool,
    padded: bool = False,
) -> None:
    import torch.distributed as dist

    from share4v.train.train import build_trainer

    repo = Path(__file__).resolve().parents[1]
    meter = Meter(warmup, steps, _image_tokens(root))
    precision = ["--use_cpu", "True"] if cpu else ["--bf16", "True", "--tf32", "True"]
    argv = [
        "--deepspeed", str(repo / "scripts" / "zero3.json"), "--model_name_or_path", str(root), "--version", "v1",
        "--data_path", str(root / "data.json"), "--image_folder", str(root), "--vision_tower",
        str(root / "vision_tower"), "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2",
        "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False", "--image_aspect_ratio", "pad",
        "--group_by_modality_length", "True", *precision, "--output_dir", "/tmp/bench-out",
        "--max_steps", str(warmup + steps), "--per_device_train_batch_size", str(micro_batch),
        "--gradient_accumulation_steps", "1", "--save_strategy", "no", "--learning_rate", "2e-5",
        "--weight_decay", "0.", "--warmup_steps", "0.03", "--lr_scheduler_type", "cosine", "--logging_steps", "1",
        "--model_max_length", "2048", "--gradient_checkpointing", str(checkpointing), "--dataloader_num_workers", "4",
        "--report_to", "none", "--pack_sequences", str(not padded), "--fused_cross_entropy", str(not padded),
    ]  # fmt: skip
    trainer = build_trainer(attn_implementation="sdpa", argv=argv, callbacks=[meter.callback])
    lengths = trainer.train_dataset.lengths
    trainer.train()
    world = dist.get_world_size()
    device = "cpu" if cpu else "cuda"
    tokens = torch.tensor([meter.measured_tokens], device=device, dtype=torch.float64)
    dist.all_reduce(tokens)
    memory = [torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()] if not cpu else [0, 0]
    peak = torch.tensor(memory, device=device, dtype=torch.float64)
    peaks = [torch.zeros_like(peak) for _ in range(world)]
    dist.all_gather(peaks, peak)
    if dist.get_rank() != 0:
        return
    per_gpu = tokens.item() / world / meter.elapsed
    llm_params = 6.74e9
    result = {
        "gpu": "cpu" if cpu else torch.cuda.get_device_name(), "gpus": world, "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "deepspeed": __import__("deepspeed").__version__,
        "micro_batch": micro_batch, "gradient_checkpointing": checkpointing, "zero_stage": 3, "packed": not padded,
        "dtype": "fp32" if cpu else "bf16",
        "attention": "sdpa", "timed_steps": steps, "warmup_steps": warmup, "seconds_per_step": meter.elapsed / steps,
        "useful_tokens_per_s_per_gpu": round(per_gpu, 1),
        "approx_mfu_vs_790_tflops": round(6 * llm_params * per_gpu / 790e12, 4),
        "peak_allocated_gib_per_gpu": [round(p[0].item() / 2**30, 2) for p in peaks],
        "peak_reserved_gib_per_gpu": [round(p[1].item() / 2**30, 2) for p in peaks],
        "sample_length_percentiles": dict(zip(
            ["p10", "p50", "p90", "p99", "max"],
            [int(x) for x in torch.tensor(lengths, dtype=torch.float).quantile(
                torch.tensor([0.1, 0.5, 0.9, 0.99, 1.0])).tolist()], strict=True)),
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
    }  # fmt: skip
    print(json.dumps(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-world", help="write the random 7B checkpoint, tower and data")
    make.add_argument("root", type=Path)
    make.add_argument("--rows", type=int, default=2048)
    make.add_argument("--layers", type=int, default=32)
    make.add_argument("--tiny", action="store_true", help="a tiny world, to smoke-test on the CPU")
    bench = sub.add_parser("run", help="time the training step (under torchrun)")
    bench.add_argument("root", type=Path)
    bench.add_argument("--out", type=Path, default=Path("benchmarks/results/train_zero3_7b.json"))
    bench.add_argument("--micro-batch", type=int, default=4)
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--steps", type=int, default=10)
    bench.add_argument("--no-checkpointing", action="store_true")
    bench.add_argument("--cpu", action="store_true", help="fp32 on the CPU (a smoke test of the script)")
    bench.add_argument("--padded", action="store_true", help="transformers' padded step (no packing, full logits)")
    args = parser.parse_args()
    if args.command == "make-world":
        make_world(args.root, args.rows, args.layers, args.tiny)
    else:
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        run(
            args.root,
            args.out,
            args.micro_batch,
            args.warmup,
            args.steps,
            not args.no_checkpointing,
            args.cpu,
            args.padded,
        )


if __name__ == "__main__":
    main()
