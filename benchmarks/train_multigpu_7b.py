"""benchmarks/train_multigpu_7b.py

ShareGPT4V-7B's training steps, random weights, through share4v's own trainer (`share4v.train.train.build_trainer`,
the entry the launch scripts call) under DeepSpeed ZeRO-3 or ZeRO-2 with bf16 and gradient checkpointing (in every
decoder layer, or in the first N with `--checkpoint-layers N`), on LLaVA-like length distributions, with the
recipe's global batch kept by gradient accumulation. Measures useful (non-padding) tokens per second per GPU — text
tokens plus 576 positions per image —, MFU, optimizer-step time and peak GPU memory; `summarize` turns the result
files of several GPU counts into scaling efficiency and projected epoch times.

    python benchmarks/train_multigpu_7b.py make-world /tmp/world                    # checkpoint + data, once
    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node 4 benchmarks/train_multigpu_7b.py run /tmp/world \\
        --stage 2 --zero 3 --out results/stage2-zero3-4gpu.json
    python benchmarks/train_multigpu_7b.py summarize results/*.json --markdown table.md

The world: Vicuna-7B shape (hidden 4096, MLP 11008, 32 layers, 32 heads, vocabulary 32000; `--layers` for a
reduced depth), CLIP ViT-L/14-336 (hidden 1024, 24 layers), mlp2x_gelu projector, all random; a small locally
trained tokenizer (its ids are a subset of the vocabulary). Stage-2 data (`data.json`, the 665K instruction mix's
shape): 90% image rows (one 336 px-class image, padded to square) and 10% text-only rows, 1-4 question/answer
rounds; answer lengths are log-normal (median 25 words, long tail, capped at 500) so that sample lengths spread
like LLaVA-665K's (most between 650 and 1100 positions with an image, a tail to 2048). Stage-1 data
(`data-pretrain.json`, ShareGPT4V-PT's shape): one image and one detailed caption per row, caption lengths log-normal
around 105 words (about 230 tokens; ShareGPT4V-PT's captions average 942 characters).

Stage 2 trains the projector and the LLM (micro-batch 8, global batch 128, template v1); stage 1 also trains the
later half of the ViT (`--tune_entire_model True --tune_vit_from_layer 12`; micro-batch 16, global batch 256,
template plain) — the released recipes' settings.
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

from share4v.testing.make_tiny_checkpoint import TinySpec, llm_config_dict, preprocessor_config_dict
from share4v.testing.tiny_tokenizer import _WORDS, train_sentencepiece, write_llama_tokenizer
from share4v.train.throughput import llm_parameters, measure_matmul_peak, sample_lengths, training_flops


def _image_tokens(root: Path) -> int:
    tower = json.loads((root / "vision_tower" / "config.json").read_text())
    return (tower["image_size"] // tower["patch_size"]) ** 2


def _tower_layers(root: Path) -> int:
    return json.loads((root / "vision_tower" / "config.json").read_text())["num_hidden_layers"]


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
    (root / "data.json").write_text(json.dumps(instruction_rows(rng, num_rows)))
    (root / "data-pretrain.json").write_text(json.dumps(caption_rows(rng, num_rows)))


def _words(rng: random.Random, median: float, sigma: float, cap: int) -> str:
    count = max(min(int(math.exp(rng.gauss(math.log(median), sigma))), cap), 1)
    return " ".join(rng.choices(_WORDS, k=count))


def instruction_rows(rng: random.Random, num_rows: int) -> list[dict]:
    """Stage-2 rows shaped like the 665K mix: 90% with an image, 1-4 rounds, long-tailed answers."""
    rows = []
    for index in range(num_rows):
        turns, has_image = [], rng.random() < 0.9
        for round_index in range(rng.choice([1, 1, 2, 3, 4])):
            question = " ".join(rng.choices(_WORDS, k=rng.randint(4, 16))) + "?"
            answer = _words(rng, 25, 1.0, 500) + "."
            if round_index == 0 and has_image:
                question = "<image>\n" + question
            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        row = {"id": str(index), "conversations": turns}
        if has_image:
            row["image"] = f"images/{rng.randrange(32)}.jpg"
        rows.append(row)
    return rows


def caption_rows(rng: random.Random, num_rows: int) -> list[dict]:
    """Stage-1 rows shaped like ShareGPT4V-PT: one image and one detailed caption each."""
    return [
        {
            "id": f"pt-{index}",
            "image": f"images/{rng.randrange(32)}.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image in detail."},
                {"from": "gpt", "value": _words(rng, 105, 0.4, 400) + "."},
            ],
        }
        for index in range(num_rows)
    ]


# What each stage trains and how, as the released scripts (scripts/sharegpt4v/lib.sh) set it; stage 1 trains the
# later half of the ViT (layers 12-23 of CLIP-L).
STAGES = {
    1: {"data": "data-pretrain.json", "version": "plain", "micro_batch": 16, "global_batch": 256,
        "samples_per_epoch": 1_246_000, "flags": ["--tune_entire_model", "True"], "vit_from_half": True},
    2: {"data": "data.json", "version": "v1", "micro_batch": 8, "global_batch": 128,
        "samples_per_epoch": 665_000, "flags": [], "vit_from_half": False},
}  # fmt: skip


class Meter:
    """Counts useful positions (and their LLM FLOPs) seen by the model's forward and times optimizer steps
    [warmup, warmup + steps)."""

    def __init__(self, warmup: int, steps: int, image_tokens: int):
        from transformers import TrainerCallback

        meter = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                meter.config = model.config
                model.register_forward_pre_hook(meter.count, with_kwargs=True)

            def on_step_end(self, args, state, control, **kwargs):
                meter.step_end(state.global_step)

        self.callback = Callback()
        self.warmup, self.steps, self.image_tokens = warmup, steps, image_tokens
        self.tokens, self.samples, self.flops = 0, 0, 0.0
        self.step_times: list[float] = []
        self.start = None

    def count(self, module, args, kwargs):
        if module.training and kwargs.get("attention_mask") is not None:
            lengths = sample_lengths(kwargs["input_ids"], kwargs["attention_mask"], self.image_tokens)
            self.tokens += sum(lengths)
            self.samples += len(lengths)
            self.flops += training_flops(self.config, lengths)

    def step_end(self, step: int) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if step == self.warmup:
            self.start, self.counts_at_start = now, (self.tokens, self.samples, self.flops)
        self.step_times.append(now)
        if step == self.warmup + self.steps:
            self.elapsed = now - self.start
            counts = (self.tokens, self.samples, self.flops)
            self.measured = [now_ - then for now_, then in zip(counts, self.counts_at_start, strict=True)]


def _gradient_accumulation(global_batch: int, world: int, micro_batch: int) -> int:
    if global_batch % (world * micro_batch):
        raise SystemExit(f"global batch {global_batch} is not a multiple of {world} GPUs x micro-batch {micro_batch}")
    return global_batch // (world * micro_batch)


def run(
    root: Path,
    out: Path,
    stage: int,
    zero: int,
    micro_batch: int | None,
    global_batch: int | None,
    warmup: int,
    steps: int,
    checkpointing: bool,
    cpu: bool,
    padded: bool = False,
    checkpoint_layers: int | None = None,
    compile_layers: bool = False,
    deepspeed_config: Path | None = None,
    fsdp: bool = False,
) -> None:
    import torch.distributed as dist

    from share4v.train.train import build_trainer

    if checkpoint_layers is not None and not checkpointing:
        raise SystemExit("--checkpoint-layers chooses among the checkpointed layers: drop --no-checkpointing")
    recipe = STAGES[stage]
    micro_batch = micro_batch or recipe["micro_batch"]
    global_batch = global_batch or recipe["global_batch"]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = _gradient_accumulation(global_batch, world, micro_batch)
    repo = Path(__file__).resolve().parents[1]
    fsdp_config, zero_options = repo / "scripts" / "fsdp2.json", None
    if fsdp:
        if cpu:
            raise SystemExit("--fsdp runs on GPUs only: transformers' Trainer does not shard on the CPU")
        if zero != 3 or deepspeed_config is not None:
            raise SystemExit("--fsdp shards as ZeRO-3 does, without DeepSpeed: drop --zero 2 and --deepspeed-config")
        sharding = ["--fsdp", "--fsdp_config", str(fsdp_config)]
    else:
        deepspeed_config = deepspeed_config or repo / "scripts" / f"zero{zero}.json"
        zero_options = json.loads(deepspeed_config.read_text())["zero_optimization"]
        if zero_options["stage"] != zero:
            raise SystemExit(f"{deepspeed_config} is ZeRO-{zero_options['stage']}, not the --zero {zero} asked for")
        sharding = ["--deepspeed", str(deepspeed_config)]
    meter = Meter(warmup, steps, _image_tokens(root))
    precision = ["--use_cpu", "True"] if cpu else ["--bf16", "True", "--tf32", "True"]
    argv = [
        *sharding, "--model_name_or_path", str(root),
        "--version", recipe["version"], "--data_path", str(root / recipe["data"]), "--image_folder", str(root),
        "--vision_tower", str(root / "vision_tower"), "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
        "--image_aspect_ratio", "pad", "--group_by_modality_length", "True", *precision,
        "--output_dir", str(root / "bench-out"), "--max_steps", str(warmup + steps),
        "--per_device_train_batch_size", str(micro_batch), "--gradient_accumulation_steps", str(accumulation),
        "--save_strategy", "no", "--learning_rate", "2e-5", "--weight_decay", "0.", "--warmup_steps", "0.03",
        "--lr_scheduler_type", "cosine", "--logging_steps", "1", "--model_max_length", "2048",
        "--gradient_checkpointing", str(checkpointing), "--dataloader_num_workers", "4", "--report_to", "none",
        "--pack_sequences", str(not padded), "--fused_cross_entropy", str(not padded), *recipe["flags"],
    ]  # fmt: skip
    if recipe["vit_from_half"]:
        argv += ["--tune_vit_from_layer", str(_tower_layers(root) // 2)]
    if checkpoint_layers is not None:
        argv += ["--gradient_checkpointing_layers", str(checkpoint_layers)]
    argv += ["--compile_decoder_layers", str(compile_layers)]  # eager unless asked (the trainer's default: auto)
    trainer = build_trainer(attn_implementation="sdpa", argv=argv, callbacks=[meter.callback])
    lengths = trainer.train_dataset.lengths
    trainer.train()
    device = "cpu" if cpu else "cuda"
    peak_flops = 0.0 if cpu else measure_matmul_peak(torch.device("cuda"))
    totals = torch.tensor(meter.measured, device=device, dtype=torch.float64)
    dist.all_reduce(totals)
    memory = [torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved(), peak_flops] if not cpu else [0] * 3
    peak = torch.tensor(memory, device=device, dtype=torch.float64)
    peaks = [torch.zeros_like(peak) for _ in range(world)]
    dist.all_gather(peaks, peak)
    rank = dist.get_rank()
    trainer.accelerator.end_training()  # leave the process group now, not in the exit handlers (see train.py's main)
    if rank != 0:
        return
    tokens, samples, flops = totals.tolist()
    per_gpu = tokens / world / meter.elapsed
    matmul_peak = min(p[2].item() for p in peaks)
    mean_tokens_per_sample = tokens / samples
    epoch_hours = recipe["samples_per_epoch"] * mean_tokens_per_sample / (per_gpu * world) / 3600
    result = {
        "gpu": "cpu" if cpu else torch.cuda.get_device_name(), "gpus": world, "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "deepspeed": None if fsdp else __import__("deepspeed").__version__, "stage": stage, "zero_stage": zero,
        "sharding": "fsdp2" if fsdp else "deepspeed",
        "fsdp_config": json.loads(fsdp_config.read_text()) if fsdp else None,
        "deepspeed_config": None if fsdp else deepspeed_config.name,
        "zero_optimization": zero_options, "llm_layers": meter.config.num_hidden_layers,
        "llm_parameters": llm_parameters(meter.config), "micro_batch": micro_batch, "global_batch": global_batch,
        "gradient_accumulation": accumulation, "gradient_checkpointing": checkpointing,
        "gradient_checkpointing_layers": checkpoint_layers, "compiled_layers": compile_layers, "packed": not padded,
        "dtype": "fp32" if cpu else "bf16", "attention": "sdpa",
        "fsdp_mixed_precision": str(trainer.accelerator.state.fsdp_plugin.mixed_precision_policy) if fsdp else None,
        "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), "timed_steps": steps, "warmup_steps": warmup,
        "seconds_per_step": meter.elapsed / steps, "samples_per_s": round(samples / meter.elapsed, 2),
        "useful_tokens_per_s_per_gpu": round(per_gpu, 1),
        "mean_useful_tokens_per_sample": round(mean_tokens_per_sample, 1),
        "matmul_tflops": round(matmul_peak / 1e12, 1),
        "mfu": round(flops / world / meter.elapsed / matmul_peak, 4) if matmul_peak else None,
        "approx_mfu_vs_790_tflops": round(flops / world / meter.elapsed / 790e12, 4),
        "epoch_samples": recipe["samples_per_epoch"], "epoch_hours_at_this_scale": round(epoch_hours, 2),
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


def _series(result: dict) -> tuple:
    """Runs that scale together: the same training stage, ZeRO stage and its config file, LLM depth, micro-batch,
    global batch, step (packed or padded), checkpointing (and in how many layers: absent means all) and compiled
    layers."""
    keys = ("stage", "zero_stage", "llm_layers", "micro_batch", "global_batch", "packed", "gradient_checkpointing",
            "gradient_checkpointing_layers")  # fmt: skip
    if result.get("sharding") == "fsdp2":
        config = "fsdp2"
    else:  # files from before the key was recorded ran DeepSpeed, with the stage's own config
        config = result.get("deepspeed_config") or f"zero{result.get('zero_stage', 3)}.json"
    return (*(result.get(key) for key in keys), bool(result.get("compiled_layers")), config)


def summarize(paths: list[Path], target_gpus: int = 8) -> tuple[list[dict], str]:
    """Each run with its scaling efficiency (useful tok/s per GPU against the fewest GPUs of its series) and, for the
    largest run of a series below `target_gpus`, the epoch time projected there: the per-GPU rate keeps falling
    by the efficiency of the series' last doubling at each further doubling (and stays flat where that doubling
    gained)."""
    results = sorted(
        (json.loads(p.read_text()) | {"file": p.name} for p in paths),
        key=lambda r: (*((value is None, value or 0) for value in _series(r)), r["gpus"]),
    )
    rows = []
    for series in dict.fromkeys(_series(r) for r in results):
        group = [r for r in results if _series(r) == series]
        base = group[0]["useful_tokens_per_s_per_gpu"]
        for r in group:
            rows.append(r | {"scaling_base_gpus": group[0]["gpus"],
                             "scaling_efficiency": round(r["useful_tokens_per_s_per_gpu"] / base, 3)})  # fmt: skip
        last = group[-1]
        before = next((r for r in reversed(group) if r["gpus"] < last["gpus"]), None)  # a smaller GPU count
        if before is not None and last["gpus"] < target_gpus:
            per_doubling = last["useful_tokens_per_s_per_gpu"] / before["useful_tokens_per_s_per_gpu"]
            per_doubling = min(per_doubling ** (1 / math.log2(last["gpus"] / before["gpus"])), 1.0)  # never a gain
            rate = last["useful_tokens_per_s_per_gpu"] * per_doubling ** math.log2(target_gpus / last["gpus"])
            hours = last["epoch_samples"] * last["mean_useful_tokens_per_sample"] / (rate * target_gpus) / 3600
            rows[-1]["projected"] = {"gpus": target_gpus, "useful_tokens_per_s_per_gpu": round(rate, 1),
                                     "epoch_hours": round(hours, 2)}  # fmt: skip
    lines = [
        "| stage | ZeRO | GPUs | LLM layers | global batch (micro x GPUs x accumulation) | useful tok/s per GPU | MFU "
        "| s / optimizer step | scaling efficiency | peak allocated per GPU | one epoch at this scale |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r.get('zero_stage', 3)}{' (FSDP2)' if r.get('sharding') == 'fsdp2' else ''} "
            f"| {r['gpus']} | {r['llm_layers']} "
            f"| {r['global_batch']} ({r['micro_batch']} x {r['gpus']} x {r['gradient_accumulation']}) "
            f"| {r['useful_tokens_per_s_per_gpu']:,.0f} | {100 * (r['mfu'] or 0):.1f} % | {r['seconds_per_step']:.2f} "
            f"| {100 * r['scaling_efficiency']:.0f} % (vs {r['scaling_base_gpus']}) "
            f"| {max(r['peak_allocated_gib_per_gpu']):.1f} GiB | {r['epoch_hours_at_this_scale']:.1f} h |"
        )
    for r in rows:
        if "projected" in r:
            p = r["projected"]
            lines.append(
                f"\nStage {r['stage']}, ZeRO-{r.get('zero_stage', 3)}, {r['llm_layers']} layers, "
                f"micro-batch {r['micro_batch']}, projected to {p['gpus']} GPUs: "
                f"{p['useful_tokens_per_s_per_gpu']:,.0f} useful tok/s per GPU, one epoch "
                f"({r['epoch_samples']:,} samples) in {p['epoch_hours']:.1f} h."
            )
    return rows, "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-world", help="write the random 7B checkpoint, tower and data of both stages")
    make.add_argument("root", type=Path)
    make.add_argument("--rows", type=int, default=4096)
    make.add_argument("--layers", type=int, default=32, help="LLM decoder layers (32: Vicuna-7B)")
    make.add_argument("--tiny", action="store_true", help="a tiny world, to smoke-test on the CPU")
    bench = sub.add_parser("run", help="time the training step (under torchrun)")
    bench.add_argument("root", type=Path)
    bench.add_argument("--out", type=Path, default=Path("benchmarks/results/train_multigpu_7b.json"))
    bench.add_argument("--stage", type=int, choices=sorted(STAGES), default=2)
    bench.add_argument("--zero", type=int, choices=[2, 3], default=3, help="DeepSpeed ZeRO stage")
    bench.add_argument("--micro-batch", type=int, help="per GPU (default: the stage's recipe, 8 or 16)")
    bench.add_argument("--global-batch", type=int, help="kept by gradient accumulation (default: 128 or 256)")
    bench.add_argument("--warmup", type=int, default=1, help="optimizer steps before timing")
    bench.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    bench.add_argument("--no-checkpointing", action="store_true")
    bench.add_argument(
        "--checkpoint-layers", type=int, metavar="N", help="checkpoint only the first N decoder layers (default: all)"
    )
    bench.add_argument("--compile-layers", action="store_true", help="the trainer's --compile_decoder_layers")
    bench.add_argument(
        "--deepspeed-config", type=Path, metavar="JSON", help="DeepSpeed config (default: scripts/zero{2,3}.json)"
    )
    bench.add_argument(
        "--fsdp", action="store_true", help="shard with PyTorch FSDP2 (as ZeRO-3 does) instead of DeepSpeed"
    )
    bench.add_argument("--cpu", action="store_true", help="fp32 on the CPU (a smoke test of the script)")
    bench.add_argument("--padded", action="store_true", help="transformers' padded step (no packing, full logits)")
    report = sub.add_parser("summarize", help="scaling efficiency and projected epoch times of several runs")
    report.add_argument("results", type=Path, nargs="+")
    report.add_argument("--target-gpus", type=int, default=8)
    report.add_argument("--markdown", type=Path, help="also write the table here (and the rows as .json beside it)")
    args = parser.parse_args()
    if args.command == "make-world":
        make_world(args.root, args.rows, args.layers, args.tiny)
    elif args.command == "summarize":
        rows, table = summarize(args.results, args.target_gpus)
        print(table)
        if args.markdown:
            args.markdown.write_text(table)
            args.markdown.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    else:
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        run(
            args.root, args.out, args.stage, args.zero, args.micro_batch, args.global_batch, args.warmup,
            args.steps, not args.no_checkpointing, args.cpu, args.padded, args.checkpoint_layers, args.compile_layers,
            args.deepspeed_config, args.fsdp,
        )  # fmt: skip


if __name__ == "__main__":
    main()
