"""benchmarks/bench_train.py

share4v's training step against transformers' own, side by side in one process on one GPU, on the same samples
and the same initial weights: random-init ShareGPT4V-7B shape at reduced depth (Vicuna-7B width 4096/11008/32
heads, `--layers` decoder layers, default 8, so full fine-tuning with AdamW fits one GPU), CLIP ViT-L/14-336
(frozen, bf16) and the mlp2x_gelu projector; fp32 master weights under bf16 autocast, fused torch AdamW, stage-2
trainable set (LLM + projector).

- baseline: transformers' `LlavaForConditionalGeneration` (SDPA), right-padded micro-batches, every image expanded
  to 576 `<image>` tokens, the loss on full-vocabulary logits — a transformers-style LLaVA training step.
- share4v: `Share4VLlamaForCausalLM` as the trainer runs it by default (`pack_sequences=True`: the same micro-batch
  as one row without padding, per-sample variable-length attention; the loss without full-vocabulary logits; on a
  GPU each decoder layer compiled, `compile_decoder_layers`), with the blank image that the original recipe gives
  text-only rows.

Equality: before any update, both losses on the same batches agree (bf16 tolerance); the per-step losses of the
timed runs are recorded. Throughput: useful tokens (text + 576 per image, never padding) per second, timed over
`--steps` steps after `--warmup`; MFU = model FLOPs of those tokens (share4v.train.throughput: 6 x parameters +
causal attention) over time, against the bf16 matmul rate measured in the same run.

Samples mirror the LLaVA-665K mix, 1.3 tokens per word, a 40-token system prompt; answers (and their end-of-turn
token) are the targets:
- 94% with one image: 1-4 question/answer rounds (rounds 1,1,2,3,4 equally likely), questions of 4-16 words, answers
  log-normal in words (median 25, sigma 1, capped at 500);
- 6% text-only ShareGPT conversations (LLaVA-665K holds 40,688 among 665,298 rows), longer: 1-8 rounds, questions
  log-normal (median 30 words, sigma 1), answers log-normal (median 150 words, sigma 0.8, capped at 1,000), cut at
  `--max-length`.
Micro-batches are drawn in random order (no length grouping), as a plain Trainer would: padding takes 33% of all
positions of right-padded micro-batches of 8 (over 10,000 batches; the issue's anchor mix: 36%), and 26.8% of those
of the 30 timed batches of the default run. Before 2026-11-27 text-only rows were as short as the others (10% of
rows), and the timed batches padded 18.9%.

    python benchmarks/bench_train.py --eager-layers --out benchmarks/results/   # on the GPU
    python benchmarks/bench_train.py --tiny --steps 2 --warmup 1                # a smoke test on the CPU

Prints one JSON line per measurement; the results file holds `train_speedup` (share4v's useful tok/s over the
baseline's) and `train_mfu` (share4v's MFU) for the trainer's defaults on the device, the same two keys suffixed
`_eager_layers` for `--compile_decoder_layers False` (with `--eager-layers`, on a GPU), the raw numbers and peak
memory. Files without the key `compiled_decoder_layers` (up to `results/2026-11-27-h200-train.json`) timed the defaults
of their day, layers eager, as `share4v`, and compiled layers as `share4v_compiled_layers` (`--compile`).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import device_name, results_path, write_results

from share4v.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from share4v.convert.llava_format import to_llava_names
from share4v.testing.make_tiny_checkpoint import TinySpec, preprocessor_config_dict
from share4v.train.model_setup import compiles_decoder_layers
from share4v.train.throughput import measure_matmul_peak, training_flops


@dataclass
class Shape:
    vocab: int = 32000
    hidden: int = 4096
    intermediate: int = 11008
    heads: int = 32
    layers: int = 8
    vision_hidden: int = 1024
    vision_intermediate: int = 4096
    vision_layers: int = 24
    vision_heads: int = 16
    image_size: int = 336
    patch: int = 14

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch) ** 2

    @property
    def image_token_id(self) -> int:
        """The baseline's `<image>` id: the last row, which no text sample uses, so both models have one vocabulary."""
        return self.vocab - 1


TINY = Shape(vocab=512, hidden=64, intermediate=128, heads=4, layers=2, vision_hidden=32, vision_intermediate=64,
             vision_layers=2, vision_heads=4, image_size=56, patch=14)  # fmt: skip


LOSS_TOLERANCE = 1e-3  # relative, between the first losses of the two models (bf16 autocast)


@dataclass
class Sample:
    tokens: list[int]  # text tokens; a sample with an image has IMAGE_TOKEN_INDEX once, after the system prompt
    targets: list[bool]  # which text tokens are trained

    @property
    def has_image(self) -> bool:
        return IMAGE_TOKEN_INDEX in self.tokens


TEXT_ONLY_SHARE = 0.06  # LLaVA-665K: 40,688 ShareGPT conversations among 665,298 rows


def make_samples(count: int, shape: Shape, max_length: int, seed: int) -> list[Sample]:
    """LLaVA-mix-like samples (see the module docstring), cut to `max_length` merged positions."""
    rng = random.Random(seed)
    word_tokens, system = 1.3, 40

    def words(median: int, sigma: float, cap: int) -> int:
        return int(min(int(math.exp(rng.gauss(math.log(median), sigma))), cap) * word_tokens)

    samples = []
    for _ in range(count):
        tokens, targets = [1] + [rng.randrange(3, shape.vocab - 1) for _ in range(system - 1)], [False] * system
        has_image = rng.random() >= TEXT_ONLY_SHARE
        if has_image:  # a visual question/answer or instruction row: 1-4 rounds, short answers
            tokens.append(IMAGE_TOKEN_INDEX)
            targets.append(False)
            rounds = [
                (int(rng.randint(4, 16) * word_tokens), words(25, 1.0, 500)) for _ in range(rng.choice([1, 1, 2, 3, 4]))
            ]
        else:  # a ShareGPT conversation: more rounds, longer questions and answers
            rounds = [(words(30, 1.0, 500), words(150, 0.8, 1000)) for _ in range(rng.randint(1, 8))]
        for question, answer in rounds:
            question, answer = question + 5, answer + 1  # + the role markers; + </s>
            tokens += [rng.randrange(3, shape.vocab - 1) for _ in range(question + answer)]
            targets += [False] * question + [True] * answer
        budget = max_length - (shape.patches - 1 if has_image else 0)
        samples.append(Sample(tokens[:budget], targets[:budget]))
    return samples


def merged_length(sample: Sample, shape: Shape) -> int:
    return len(sample.tokens) + (shape.patches - 1 if sample.has_image else 0)


def share4v_batch(samples: list[Sample], shape: Shape, device) -> dict:
    """What share4v's collator gives: right-padded ids with one -200 per image, one image per row (blank if none)."""
    longest = max(len(s.tokens) for s in samples)
    input_ids = torch.zeros((len(samples), longest), dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    mask = torch.zeros_like(input_ids)
    for row, sample in enumerate(samples):
        ids = torch.tensor(sample.tokens)
        input_ids[row, : len(ids)] = ids
        labels[row, : len(ids)] = torch.where(torch.tensor(sample.targets), ids, IGNORE_INDEX)
        mask[row, : len(ids)] = 1
    images = _pixels(len(samples), shape)
    for row, sample in enumerate(samples):
        if not sample.has_image:
            images[row] = 0.0  # the recipe's blank image for a text-only row
    return {"input_ids": input_ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device),
            "images": images.to(device, torch.bfloat16), "pack_sequences": True}  # fmt: skip


def llava_batch(samples: list[Sample], shape: Shape, device) -> dict:
    """The same samples as transformers' Llava takes them: each image expanded to its 576 `<image>` tokens."""
    rows = []
    for sample in samples:
        ids, targets = [], []
        for token, target in zip(sample.tokens, sample.targets, strict=True):
            count = shape.patches if token == IMAGE_TOKEN_INDEX else 1
            ids += [shape.image_token_id if token == IMAGE_TOKEN_INDEX else token] * count
            targets += [target] * count
        rows.append((ids, targets))
    longest = max(len(ids) for ids, _ in rows)
    input_ids = torch.zeros((len(rows), longest), dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    mask = torch.zeros_like(input_ids)
    for row, (ids, targets) in enumerate(rows):
        ids_tensor = torch.tensor(ids)
        input_ids[row, : len(ids)] = ids_tensor
        labels[row, : len(ids)] = torch.where(torch.tensor(targets), ids_tensor, IGNORE_INDEX)
        mask[row, : len(ids)] = 1
    pixels = _pixels(len(samples), shape)[[s.has_image for s in samples]]
    batch = {"input_ids": input_ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}
    if len(pixels):
        batch["pixel_values"] = pixels.to(device, torch.bfloat16)
    return batch


def _pixels(count: int, shape: Shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(count)
    return torch.randn((count, 3, shape.image_size, shape.image_size), generator=generator)


def build_share4v(shape: Shape, tower_dir: Path, device, compile_layers: bool | None = None) -> torch.nn.Module:
    """The model as share4v's trainer sets it up on `device` (`configure_step_speedups` with the trainer's defaults;
    `compile_layers`: --compile_decoder_layers, None for its default there)."""
    from share4v.model import Share4VConfig, Share4VLlamaForCausalLM
    from share4v.train.model_setup import configure_step_speedups

    config = Share4VConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
        max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False, mm_vision_tower=str(tower_dir),
        mm_hidden_size=shape.vision_hidden, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", image_aspect_ratio="pad", use_cache=False,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = Share4VLlamaForCausalLM(config)
    model.get_vision_tower().load_model(str(tower_dir))
    tower = model.get_vision_tower().to(device=device, dtype=torch.bfloat16)
    tower.requires_grad_(False)
    configure_step_speedups(model, step_flags(device, compile_layers))
    return model


def step_flags(device, compile_layers: bool | None = None) -> argparse.Namespace:
    """The trainer's step settings that `configure_step_speedups` reads, at their defaults, for `device`."""
    return argparse.Namespace(pack_sequences=True, fused_cross_entropy=True, compile_decoder_layers=compile_layers,
                              gradient_checkpointing=False, device=torch.device(device))  # fmt: skip


def build_llava(share4v_model, shape: Shape, tower_dir: Path, device) -> torch.nn.Module:
    """transformers' Llava with the share4v model's weights (`share4v.convert` names)."""
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    llm_state = {k: v for k, v in share4v_model.state_dict().items() if not k.startswith("model.vision_tower.")}
    tower_state = load_file(str(next(tower_dir.glob("*.safetensors"))))
    config = LlavaConfig(
        vision_config=CLIPVisionConfig.from_pretrained(tower_dir).to_dict(),
        text_config=LlamaConfig(**{k: v for k, v in share4v_model.config.to_dict().items()
                                   if not k.startswith("mm_") and k not in ("model_type", "architectures")}).to_dict(),
        image_token_id=shape.image_token_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", image_seq_length=shape.patches, multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlavaForConditionalGeneration(config)
    state = _module_names(to_llava_names(llm_state, tower_state), set(model.state_dict()))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [key for key in missing if "rotary" not in key]:
        raise RuntimeError(f"weights do not map: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.model.vision_tower.to(torch.bfloat16).requires_grad_(False)
    model.config.text_config.use_cache = False
    return model


def _module_names(llava_checkpoint_state: dict, module_keys: set[str]) -> dict:
    """llava-hf checkpoint names → the module names of this transformers' Llava (what `from_pretrained` maps;
    the vision tower is a whole CLIPVisionModel in some releases and its transformer alone in others)."""
    renames = (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
               ("vision_tower.vision_model.", "model.vision_tower.vision_model."),
               ("vision_tower.vision_model.", "model.vision_tower."),
               ("multi_modal_projector.", "model.multi_modal_projector."))  # fmt: skip
    out = {}
    for key, value in llava_checkpoint_state.items():
        for old, new in renames:
            if key.startswith(old) and new + key[len(old) :] in module_keys:
                out[new + key[len(old) :]] = value
                break
        else:
            raise RuntimeError(f"no module takes {key!r}")
    return out


def save_tower(shape: Shape, folder: Path, device) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
        num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads, image_size=shape.image_size,
        patch_size=shape.patch, projection_dim=shape.vision_hidden, hidden_act="quick_gelu",
    )  # fmt: skip
    torch.manual_seed(1)
    with torch.device(device):
        CLIPVisionModel(config).to(torch.bfloat16).save_pretrained(folder)
    spec = TinySpec(image_size=shape.image_size, patch_size=shape.patch)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor_config_dict(spec)))


def check_packed_attention(device) -> dict:
    """The CUDA variable-length kernel against one SDPA call per sample, on three packed samples (bf16)."""
    from share4v.model.packed_attention import _causal_per_sample, _varlen_causal, _varlen_kernel_serves

    generator = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn((32, 3000, 128), device=device, dtype=torch.bfloat16, generator=generator) for _ in range(3))
    cu = torch.tensor([0, 700, 1900, 3000], device=device, dtype=torch.int32)
    if not _varlen_kernel_serves(q):
        return {"varlen_kernel": False}
    fast = _varlen_causal(q, k, v, cu, 1200, None)
    reference = _causal_per_sample(q, k, v, cu, None)
    return {"varlen_kernel": True, "max_abs_difference": float((fast.float() - reference.float()).abs().max())}


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(model, batches: list[dict], warmup: int, device, autocast_dtype, repeats: int = 3) -> dict:
    """AdamW steps over `batches`, `repeats` times; times the steps after `warmup` in each pass. Returns the
    first pass's losses, the median pass's seconds (all passes listed) and peak memory."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda")
    model.train()
    losses, passes = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeats):
        for index, batch in enumerate(batches):
            if index == warmup:
                synchronize(device)
                start = time.perf_counter()
            with torch.autocast(device.type, dtype=autocast_dtype):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        synchronize(device)
        passes.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del optimizer
    seconds = sorted(passes)[len(passes) // 2]
    run = {"losses": [round(float(x), 5) for x in losses[: len(batches)]], "seconds": seconds,
           "seconds_per_pass": [round(x, 4) for x in passes], "peak_gib": peak}  # fmt: skip
    emit({"measurement": "steps", "model": type(model).__name__, **run})
    return run


def eager_layers_run(shape: Shape, tower_dir: Path, device, initial: dict, batches: list[dict], args) -> dict:
    """share4v's step with `--compile_decoder_layers False` (where the defaults compile them)."""
    model = build_share4v(shape, tower_dir, device, compile_layers=False)
    model.load_state_dict(initial)
    run = train_steps(model, batches, args.warmup, device, torch.bfloat16)
    del model
    _free(device)
    return run


def profile_steps(model, batches: list[dict], device, autocast_dtype, path: Path) -> None:
    """Kernel times of `batches` (after the timed run: compiled and warm), the 40 largest, to `path`."""
    from torch.profiler import ProfilerActivity, profile

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for batch in batches:
            with torch.autocast(device.type, dtype=autocast_dtype):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        synchronize(device)
    path.write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90))


def first_losses(model, batches: list[dict], device, autocast_dtype) -> list[float]:
    model.train()  # the training path (share4v: packed rows, loss without full logits)
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype):
        return [float(model(**batch).loss) for batch in batches]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=8, help="decoder layers at 7B width (default: %(default)s)")
    parser.add_argument("--micro-batch", type=int, default=8, help="samples per step (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=2048, help="model_max_length (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (default: %(default)s)")
    parser.add_argument(
        "--eager-layers",
        action="store_true",
        help="also time share4v with --compile_decoder_layers False (on a GPU its default compiles)",
    )
    parser.add_argument("--profile", type=Path, help="write a kernel-time table of two share4v steps here")
    parser.add_argument("--tiny", action="store_true", help="tiny shape on the CPU: checks the script, times nothing")
    parser.add_argument("--out", type=Path, help="results JSON to write, or a folder for DATE-GPU-train.json")
    args = parser.parse_args(argv)

    shape = TINY if args.tiny else Shape(layers=args.layers)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    autocast_dtype = torch.bfloat16
    samples = make_samples(args.micro_batch * (args.warmup + args.steps), shape, args.max_length, seed=0)
    groups = [samples[i : i + args.micro_batch] for i in range(0, len(samples), args.micro_batch)]
    useful = [merged_length(s, shape) for s in samples[args.warmup * args.micro_batch :]]
    padded_positions = sum(max(merged_length(s, shape) for s in g) * len(g) for g in groups[args.warmup :])
    peak_flops = measure_matmul_peak(device) if device.type == "cuda" else None
    padding_fraction = round(1 - sum(useful) / padded_positions, 3)  # of the timed, right-padded batches
    emit({"measurement": "setup", "device": device_name(device), "peak_tflops": _tera(peak_flops),
          "useful_tokens": sum(useful), "padding_fraction": padding_fraction})  # fmt: skip

    if device.type == "cuda":
        emit({"measurement": "packed_attention_check", **check_packed_attention(device)})
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        tower_dir = Path(tmp) / "clip"
        save_tower(shape, tower_dir, device)
        share4v_model = build_share4v(shape, tower_dir, device)  # the trainer's defaults on this device
        compiled = compiles_decoder_layers(step_flags(device))
        initial = {k: v.detach().to("cpu", copy=True) for k, v in share4v_model.state_dict().items()}
        ours_batches = [share4v_batch(g, shape, device) for g in groups]
        ours_first = first_losses(share4v_model, ours_batches[:2], device, autocast_dtype)
        runs["share4v"] = train_steps(share4v_model, ours_batches, args.warmup, device, autocast_dtype)
        if compiled:
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            emit({"measurement": "compiled_graphs", "unique_graphs": graphs})
        if args.profile:
            profile_steps(share4v_model, ours_batches[:2], device, autocast_dtype, args.profile)
        del share4v_model
        _free(device)
        if args.eager_layers and compiled:  # the same step with the decoder layers left eager
            runs["share4v_eager_layers"] = eager_layers_run(shape, tower_dir, device, initial, ours_batches, args)

        reference = build_share4v(shape, tower_dir, device, compile_layers=False)
        reference.load_state_dict(initial)
        llava = build_llava(reference, shape, tower_dir, device)
        del reference
        _free(device)
        base_batches = [llava_batch(g, shape, device) for g in groups]
        base_first = first_losses(llava, base_batches[:2], device, autocast_dtype)
        runs["baseline"] = train_steps(llava, base_batches, args.warmup, device, autocast_dtype)
        del llava, base_batches
        _free(device)
        del ours_batches

    results = {"shape": shape.__dict__, "micro_batch": args.micro_batch, "steps": args.steps, "warmup": args.warmup,
               "padding_fraction": padding_fraction, "compiled_decoder_layers": compiled}  # fmt: skip
    config = _flops_config(shape)
    for name, run in [(name, run) for name, run in runs.items() if run is not None]:
        rate = sum(useful) / run["seconds"]
        mfu = training_flops(config, useful) / run["seconds"] / peak_flops if peak_flops else None
        results[name] = {**run, "useful_tokens_per_second": round(rate, 1), "mfu": mfu and round(mfu, 4)}
        emit({"measurement": name, **{k: v for k, v in results[name].items() if k != "losses"}})
    relative = max(abs(a - b) / abs(b) for a, b in zip(ours_first, base_first, strict=True))
    results["equality"] = {
        "first_losses_share4v": ours_first, "first_losses_baseline": base_first,
        "max_relative_difference": relative, "tolerance": LOSS_TOLERANCE, "equal": relative <= LOSS_TOLERANCE,
    }  # fmt: skip
    baseline_rate = results["baseline"]["useful_tokens_per_second"]
    results["train_speedup"] = round(results["share4v"]["useful_tokens_per_second"] / baseline_rate, 3)
    results["train_mfu"] = results["share4v"]["mfu"]
    if "share4v_eager_layers" in results:  # --compile_decoder_layers False
        eager = results["share4v_eager_layers"]
        results["train_speedup_eager_layers"] = round(eager["useful_tokens_per_second"] / baseline_rate, 3)
        results["train_mfu_eager_layers"] = eager["mfu"]
    results["environment"] = _environment(device, peak_flops)
    summary = {key: value for key, value in results.items() if key.startswith(("train_speedup", "train_mfu"))}
    emit({"measurement": "summary", **summary, "equal": results["equality"]["equal"], "loss_difference": relative})
    write_results(results_path(args.out, device, "train"), results)
    if not results["equality"]["equal"]:
        raise SystemExit(f"losses differ: {ours_first} vs {base_first}")
    return results


def _flops_config(shape: Shape):
    return argparse.Namespace(hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                              num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
                              intermediate_size=shape.intermediate, vocab_size=shape.vocab)  # fmt: skip


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _tera(flops: float | None) -> float | None:
    return round(flops / 1e12, 1) if flops else None


def _environment(device, peak_flops) -> dict:
    import transformers

    return {"device": device_name(device), "torch": torch.__version__, "transformers": transformers.__version__,
            "matmul_peak_tflops": _tera(peak_flops), "date": time.strftime("%Y-%m-%d")}  # fmt: skip


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
