"""benchmarks/check_device_map.py

A model split over two GPUs (`load_pretrained_model(..., device_map=...)`, as a 13B model on two smaller cards), on
a small random model in fp32: the embeddings, the vision tower, the projector and the first half of the decoder
layers on the first GPU, the rest on the second. The engine's greedy answers to a batch of image and text-only chats,
batched, one at a time and streamed, equal those of the same model on one GPU.

    python benchmarks/check_device_map.py --out results.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import report_checks

from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.model.builder import load_pretrained_model
from share4v.testing.make_tiny_checkpoint import TinySpec, make_tiny_checkpoint
from share4v.testing.tiny_training import make_tiny_dataset

SPEC = TinySpec(hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4)


def split_map(checkpoint: Path) -> dict[str, int]:
    """Every child of the decoder on GPU 0 up to the middle layer, the later layers, the norm and lm_head on GPU 1."""
    _, model, _, _ = load_pretrained_model(str(checkpoint), None, None, device="cpu")
    half = model.config.num_hidden_layers // 2
    device_map = {}
    for name, _ in model.model.named_children():
        if name == "layers":
            device_map |= {f"model.layers.{i}": int(i >= half) for i in range(model.config.num_hidden_layers)}
        else:
            device_map[f"model.{name}"] = 1 if name == "norm" else 0
    return device_map | {"lm_head": 1}


def answers(engine: Share4VEngine, chats: list[Chat], params: GenerationParams) -> dict[str, list[str]]:
    return {
        "batched": [c.text for c in engine.complete(chats, params)],
        "one_at_a_time": [engine.complete([chat], params)[0].text for chat in chats],
        "streamed": ["".join(engine.stream(chat, params)) for chat in chats],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=Path("/tmp/share4v-device-map-check"))
    args = parser.parse_args()
    if torch.cuda.device_count() < 2:
        raise SystemExit("needs two GPUs")
    shutil.rmtree(args.root, ignore_errors=True)
    checkpoint = make_tiny_checkpoint(args.root / "ckpt", SPEC)
    make_tiny_dataset(args.root / "data", "instruct", num_samples=4)
    images = sorted((args.root / "data" / "images").iterdir())
    chats = [Chat.single("Describe the image.", images=[str(images[0])]), Chat.single("Tell me a story."),
             Chat.single("What is in the picture?", images=[str(images[1])])]  # fmt: skip
    params = GenerationParams(temperature=0.0, max_new_tokens=24)

    one_gpu = Share4VEngine.from_pretrained(str(checkpoint), device="cuda:0", dtype=torch.float32)
    reference = answers(one_gpu, chats, params)
    del one_gpu
    device_map = split_map(checkpoint)
    tokenizer, model, processor, context_len = load_pretrained_model(
        str(checkpoint), None, None, device="cuda", device_map=device_map, dtype=torch.float32
    )
    split = Share4VEngine(tokenizer, model, processor, context_len)
    devices = sorted({str(p.device) for p in model.parameters()})
    result = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "device_map": device_map,
        "parameter_devices": devices, "tower_device": str(next(model.get_vision_tower().parameters()).device),
        "one_gpu": reference, "split": answers(split, chats, params),
        "split_compiles_decoding": bool(split.compile_decode),
    }  # fmt: skip
    result["checks"] = {
        "split_over_two_gpus": devices == ["cuda:0", "cuda:1"],
        "answers_equal_one_gpu": all(result["split"][key] == reference["batched"] for key in result["split"]),
        "one_gpu_batch_equals_single": reference["batched"] == reference["one_at_a_time"] == reference["streamed"],
    }
    report_checks(args.out, result)


if __name__ == "__main__":
    main()
