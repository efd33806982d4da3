"""benchmarks/bench_eval.py

Questions per second of the VQA answer loop, `share4v.eval.model_vqa_loader` (the driver of VQAv2, GQA, VizWiz,
TextVQA, MME, POPE), at `--batch-size 16` against batch size 1, on one GPU, with everything made here:

- a checkpoint in the released ShareGPT4V layout at 7B shape with random weights (Vicuna-7B: 4096/11008, 32 layers,
  32 heads, vocabulary 32000; CLIP ViT-L/14-336 tower in `vision_tower/`; mlp2x_gelu projector), bf16 safetensors
  (sharded, with an index), initialised on the GPU; and a sentencepiece tokenizer trained here with exactly the
  model's 32000 pieces, so every id a random model writes decodes to text (a smaller tokenizer would drop the ids
  past its end from the answers, and the answers compared below would be mostly empty);
- `--questions` VQAv2-style questions (JSON lines `question_id`, `image`, `text` = question + LLaVA's
  "\\nAnswer the question using a single word or phrase.") over `--images` random-pixel JPEGs of varied sizes.

The driver runs in this process, `model_vqa_loader.main(argv)`, with the evaluation scripts' flags
(`--temperature 0 --conv-mode vicuna_v1`, `--batch-size`, `--num-workers` image-loading workers) and `--dtype
bfloat16` (the weights' own; the driver's CUDA default, float16, runs at the same speed), the same questions for
both batch sizes. The model is loaded once, by the driver's own `engine_from_args` on the same flags, and `main` is
handed that engine (`share4v.eval.answer_loop.engine_from_args` is patched to return it): the
timed span is the whole of `main` but the load (reading the questions, the DataLoader and its workers, every
batch, the answer file). Each batch size first answers a few questions untimed (`--batch-size` + the last partial
batch's size, or 2 at batch 1): the engine compiles its decode step on first use on CUDA (batch 1 gets a graph of
its own, larger batches share one with a dynamic batch size) and records a CUDA graph per batch shape, so no
measurement pays for compilation; `graphs_compiled` per run says how many graphs dynamo compiled while it was timed
(0 expected).

Answers are `--max-new-tokens` (default 8) long: a random model almost never writes the end-of-sequence token, and
real VQA answers are a word or a phrase, so the loop is timed on the answer length it sees in evaluation (prefill of
the 576 image positions + about 60 text tokens, then a few decode steps); `answer_tokens_mean` per run says what was
written. Greedy answers at batch 16 and at batch 1 are compared question by question: equal texts
(`answers_equal_fraction`), equal first tokens, the mean common prefix in tokens. Reported, never a failure: bf16 on
random weights spreads the logits into near-ties that another batch shape's rounding flips (about 1 position in 11
in benchmarks/check_decode_equality.py), so only about half of the 8-token answers stay equal in full; trained
weights have clear winners.

    PYTHONPATH=$PWD python benchmarks/bench_eval.py --out benchmarks/results/   # GPU: DATE-GPU-eval.json, ~3 min
    python benchmarks/bench_eval.py --smoke                                   # tiny shapes on the CPU, seconds

Prints one JSON line per measurement (setup, load, each warm-up and timed run, equality, summary); the results file
holds `questions_per_s` per batch size, `speedup` (batch 16 over batch 1), `answers_equal_fraction`,
`first_token_equal_fraction`, `common_prefix_tokens_mean`, the settings, the time spent writing and loading the
checkpoint, and the device and versions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import sentencepiece
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import _environment, default_dtype, emit, free_memory, shape_and_device
from bench_train import Shape, save_tower
from results_file import results_path, write_results

from share4v.eval import answer_loop, model_vqa_loader
from share4v.inference.cli_args import engine_from_args
from share4v.model import Share4VConfig, Share4VLlamaForCausalLM
from share4v.testing.make_tiny_checkpoint import TinySpec, _write_weights, llm_config_dict
from share4v.testing.tiny_tokenizer import train_sentencepiece, write_llama_tokenizer

SUFFIX = "\nAnswer the question using a single word or phrase."  # LLaVA-1.5's short-answer prompt (VQAv2, GQA)
SHARD_BYTES = 5 * 2**30  # as transformers' save_pretrained

# fmt: off
TEMPLATES = ("What color is the {thing}?", "How many {things} are in the picture?", "Is there a {thing} in the image?",
             "What is the {person} holding?", "Where is the {thing}?", "What is on the {thing}?",
             "Is the {thing} {adjective}?", "What kind of {thing} is this?", "Are there any {things} visible?",
             "What is the {person} doing?", "Is this photo taken indoors?", "What sport is being played?",
             "What time of day is it?", "What is next to the {thing}?", "Is the {person} wearing a hat?")
THINGS = ("dog", "cat", "car", "umbrella", "table", "chair", "clock", "kite", "pizza", "train", "horse", "plate",
          "sign", "bicycle", "boat", "laptop", "banana", "bed", "window", "truck")
PERSONS = ("man", "woman", "child", "player", "person", "girl", "boy")
ADJECTIVES = ("red", "open", "empty", "wooden", "large", "clean", "white", "old")
SYLLABLES = tuple(c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou") + tuple(
    c + v + e for c in "bdgkmnprst" for v in "aeiou" for e in "nrs")
# fmt: on


# ---- inputs -----------------------------------------------------------------------------------------------------


def write_questions(folder: Path, count: int, images: int, sizes: tuple[int, int], seed: int = 0) -> list[dict]:
    """`count` VQAv2-style questions (about count / images per image, in image order, as in VQAv2's files) in
    `folder/questions.jsonl`, over `images` random-pixel JPEGs of `sizes[0]..sizes[1]` px a side in
    `folder/images/`."""
    rng = random.Random(seed)
    image_dir = folder / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(images):
        width, height = rng.randint(*sizes), rng.randint(*sizes)
        generator = torch.Generator().manual_seed(index)
        pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
        names.append(f"COCO_test2015_{100000 + 7 * index:012d}.jpg")
        Image.fromarray(pixels.numpy()).save(image_dir / names[-1], quality=90)
    rows = []
    for index in range(count):
        image = index * images // count
        question = rng.choice(TEMPLATES).format(
            thing=rng.choice(THINGS), things=rng.choice(THINGS) + "s", person=rng.choice(PERSONS),
            adjective=rng.choice(ADJECTIVES),
        )  # fmt: skip
        rows.append({"question_id": (100000 + 7 * image) * 1000 + index, "image": names[image],
                     "text": question + SUFFIX, "category": "default"})  # fmt: skip
    _write_lines(folder / "questions.jsonl", rows)
    return rows


def tokenizer_corpus(questions: list[dict], vocab: int, seed: int = 0) -> list[str]:
    """The questions (so their words are whole pieces, as in a real tokenizer) and enough sentences of made-up
    words for sentencepiece to learn exactly `vocab` pieces."""
    rng = random.Random(seed)
    words = sorted({"".join(rng.choices(SYLLABLES, k=rng.randint(2, 4))) for _ in range(2 * vocab)})
    made_up = [" ".join(rng.sample(words, 12)) for _ in range(vocab // 2)]
    roles = "USER: <image>\nWhat is in the picture? ASSISTANT: A picture.</s>"
    return [roles, *sorted({row["text"] for row in questions}), *made_up]


def write_checkpoint(folder: Path, shape: Shape, corpus: list[str], device: torch.device, dtype: torch.dtype) -> int:
    """A random ShareGPT4V checkpoint of `shape` in the released layout (see the module docstring), weights in
    `dtype` made on `device`; returns the LLM's weight bytes."""
    tokenizer_model = train_sentencepiece(0, shape.vocab, sentences=corpus)
    pieces = sentencepiece.SentencePieceProcessor(model_proto=tokenizer_model).get_piece_size()
    if pieces != shape.vocab:  # fewer pieces: ids past the tokenizer's end would vanish from the answers
        raise RuntimeError(f"the tokenizer learned {pieces} pieces, not the model's {shape.vocab}: a larger corpus")
    write_llama_tokenizer(folder, tokenizer_model)
    save_tower(shape, folder / "vision_tower", device)
    spec = TinySpec(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                    num_layers=shape.layers, num_heads=shape.heads, vision_hidden_size=shape.vision_hidden,
                    vision_layers=shape.vision_layers, vision_heads=shape.vision_heads, image_size=shape.image_size,
                    patch_size=shape.patch, initializer_range=0.02)  # fmt: skip
    config = {**llm_config_dict(spec, vision_tower="vision_tower"), "_name_or_path": folder.name,
              "torch_dtype": str(dtype).removeprefix("torch.")}  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        model = Share4VLlamaForCausalLM(Share4VConfig(**config))
    state = {k: v.to("cpu") for k, v in model.state_dict().items() if not k.startswith("model.vision_tower.")}
    del model
    size = sum(t.numel() * t.element_size() for t in state.values())
    _write_weights(folder, state, "safetensors", shards=math.ceil(size / SHARD_BYTES))
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return size


# ---- the driver -------------------------------------------------------------------------------------------------


def load_engine(flags: list[str]):
    """The engine the driver would build from `flags` (the model flags), built once."""
    args = model_vqa_loader.build_parser().parse_args([*flags, "--question-file", "-", "--answers-file", "-"])
    return engine_from_args(args)


def answer(engine, flags: list[str], question_file: Path, answers_file: Path, batch: int) -> dict:
    """Run `model_vqa_loader.main` on `engine` (not loading a model) and time it; the counts of what it wrote, and
    each question's answer (`answers`: question id -> (text, token ids))."""
    answers_file.unlink(missing_ok=True)  # the driver resumes: a file left from an earlier run would be skipped
    completions = []
    run = engine.run

    def kept(prepared, params=None):  # what the engine gave, in the order the driver writes the answer lines
        completions.extend(run(prepared, params))
        return completions[-len(prepared.input_ids) :]

    argv = [*flags, "--question-file", str(question_file), "--answers-file", str(answers_file),
            "--batch-size", str(batch)]  # fmt: skip
    graphs = _compiled_graphs()
    device = engine.model.device
    with (
        mock.patch.object(answer_loop, "engine_from_args", lambda args: engine),
        mock.patch.object(engine, "run", kept),
        contextlib.redirect_stdout(sys.stderr),  # the driver's count line: stdout holds JSON lines only
    ):
        _synchronize(device)
        start = time.perf_counter()
        model_vqa_loader.main(argv)
        _synchronize(device)
        seconds = time.perf_counter() - start
    rows = _read_lines(answers_file)
    if [row["text"] for row in rows] != [c.text for c in completions]:
        raise RuntimeError(f"the answer lines of {answers_file} are not the engine's completions, in order")
    tokens = [c.completion_tokens for c in completions]
    answers = {str(row["question_id"]): (row["text"], c.token_ids) for row, c in zip(rows, completions, strict=True)}
    return {
        "seconds": round(seconds, 3), "questions": len(rows), "questions_per_s": round(len(rows) / seconds, 3),
        "answer_tokens_mean": round(sum(tokens) / max(len(tokens), 1), 2),
        "stopped_early": sum(c.finish_reason == "stop" for c in completions),
        "empty_answers": sum(not row["text"] for row in rows), "graphs_compiled": _compiled_graphs() - graphs,
        "answers": answers,
    }  # fmt: skip


def compare(single: dict, batched: dict) -> dict:
    """Question by question (`answer`'s `answers`): equal answer texts, equal first tokens, common token prefix."""
    prefixes, texts = [], 0
    for qid, (text, tokens) in single.items():
        other_text, other_tokens = batched.get(qid, ("", []))
        texts += text == other_text
        common = 0
        while common < min(len(tokens), len(other_tokens)) and tokens[common] == other_tokens[common]:
            common += 1
        prefixes.append(common)
    count = max(len(prefixes), 1)
    return {
        "answers_compared": len(prefixes), "answers_equal": texts, "answers_equal_fraction": round(texts / count, 4),
        "first_token_equal_fraction": round(sum(p > 0 for p in prefixes) / count, 4),
        "common_prefix_tokens_mean": round(sum(prefixes) / count, 2),
    }  # fmt: skip


def warmup_count(questions: int, batch: int) -> int:
    """Questions answered untimed before a batch size's run: a full batch and the run's last partial one (each
    shape compiles or records its graph), or 2 at batch 1 (the second call replays the recorded graph)."""
    if batch == 1:
        return min(2, questions)
    return min(questions, batch + (questions % batch))


# ---- the run ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=None, help="questions per batch size (default: 500)")
    parser.add_argument("--images", type=int, default=None, help="distinct images (default: 100)")
    parser.add_argument("--batch-size", type=int, default=16, help="compared with 1 (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="answer length (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=None, help="image-loading workers (default: 4, the "
                        "driver's own; 0 with --smoke)")  # fmt: skip
    parser.add_argument("--work-dir", type=Path, help="where the checkpoint, images and answers go (default: a "
                        "temporary folder, removed at the end)")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, fp32, on the CPU: checks the script")
    parser.add_argument("--out", type=Path, help="results JSON, or a folder for DATE-GPU-eval.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    shape, device = shape_and_device(args.smoke)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    args.questions = args.questions or (20 if args.smoke else 500)
    args.images = min(args.images or (5 if args.smoke else 100), args.questions)
    args.num_workers = args.num_workers if args.num_workers is not None else (0 if args.smoke else 4)
    sizes = (40, 120) if args.smoke else (240, 640)
    out = results_path(args.out, device, "eval")
    dtype_name = str(dtype).removeprefix("torch.")
    results = {"shape": shape.__dict__, "dtype": dtype_name, "questions": args.questions, "images": args.images,
               "image_sides": list(sizes), "max_new_tokens": args.max_new_tokens, "batch_sizes": [1, args.batch_size],
               "num_workers": args.num_workers, "conv_mode": "vicuna_v1", "temperature": 0, "runs": {},
               "environment": _environment(device)}  # fmt: skip

    with _work_dir(args.work_dir) as work:
        start = time.perf_counter()
        bench = work / "vqa"
        questions = write_questions(bench, args.questions, args.images, sizes)
        checkpoint = work / ("share4v-tiny-random" if args.smoke else "share4v-7b-random")
        checkpoint.mkdir(parents=True, exist_ok=True)
        weight_bytes = write_checkpoint(checkpoint, shape, tokenizer_corpus(questions, shape.vocab), device, dtype)
        free_memory(device)
        results["checkpoint_write_s"] = round(time.perf_counter() - start, 1)
        results["weight_gb"] = round(weight_bytes / 1e9, 2)
        emit({"measurement": "setup", "device": results["environment"]["device"], "weight_gb": results["weight_gb"],
              "write_s": results["checkpoint_write_s"]})  # fmt: skip

        flags = ["--model-path", str(checkpoint), "--image-folder", str(bench / "images"), "--conv-mode",
                 "vicuna_v1", "--temperature", "0", "--max-new-tokens", str(args.max_new_tokens), "--dtype",
                 dtype_name, "--device", device.type, "--num-workers", str(args.num_workers)]  # fmt: skip
        start = time.perf_counter()
        engine = load_engine(flags)
        results["load_s"] = round(time.perf_counter() - start, 1)
        results["compile_decode"] = bool(engine.compile_decode)
        emit({"measurement": "load", "seconds": results["load_s"], "compile_decode": results["compile_decode"]})

        answers = {}
        for batch in (1, args.batch_size):
            warmup = warmup_count(args.questions, batch)
            warmup_file = bench / f"questions-warmup-{batch}.jsonl"
            _write_lines(warmup_file, questions[:warmup])
            warm = answer(engine, flags, warmup_file, bench / f"answers-warmup-{batch}.jsonl", batch)
            warm.pop("answers")
            emit({"measurement": "warmup", "batch": batch, **warm})
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            run = answer(engine, flags, bench / "questions.jsonl", bench / f"answers-{batch}.jsonl", batch)
            answers[batch] = run.pop("answers")
            run["warmup"] = {
                "questions": warmup,
                "seconds": warm["seconds"],
                "graphs_compiled": warm["graphs_compiled"],
            }
            if device.type == "cuda":
                run["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            results["runs"][str(batch)] = run
            emit({"measurement": "answer", "batch": batch, **{k: v for k, v in run.items() if k != "warmup"}})
            write_results(out, results)

    equality = compare(answers[1], answers[args.batch_size])
    results.update(equality)
    emit({"measurement": "equality", **equality})
    runs = results["runs"]
    results["speedup"] = round(runs[str(args.batch_size)]["questions_per_s"] / runs["1"]["questions_per_s"], 3)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    write_results(out, results)
    emit({"measurement": "summary", "questions_per_s": {b: r["questions_per_s"] for b, r in runs.items()},
          "speedup": results["speedup"], "answers_equal_fraction": results["answers_equal_fraction"],
          "total_s": results["total_seconds"], "out": out and str(out)})  # fmt: skip
    unanswered = [b for b, r in runs.items() if r["questions"] != args.questions]
    if unanswered:
        raise SystemExit(f"batch size(s) {unanswered} did not answer all {args.questions} questions")
    return results


@contextlib.contextmanager
def _work_dir(path: Path | None):
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="bench_eval-") as tmp:
        yield Path(tmp)


def _compiled_graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _write_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    main()
