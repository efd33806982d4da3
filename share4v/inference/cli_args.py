"""inference/cli_args.py

Command-line flags shared by every front end that loads a model and generates (flag names follow the original
scripts: `--model-path`, `--model-base`, `--conv-mode`, `--temperature`, `--top_p`, `--num_beams`,
`--max_new_tokens`; `--compile-decode` is share4v's), and the engine built from them.
"""

from __future__ import annotations

import argparse
from typing import Any

from share4v.constants import DEFAULT_CONV_MODE, MINIATURE_MODEL_PATH
from share4v.inference.engine import GenerationParams, Share4VEngine
from share4v.inference.fp8_cache import DEFAULT_KV_CACHE_DTYPE, KV_CACHE_DTYPES
from share4v.mm_utils import get_model_name_from_path


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model-path",
        default=MINIATURE_MODEL_PATH,
        help="checkpoint folder (or hub id); default: the shipped miniature model (docs/Miniature.md)",
    )
    group.add_argument("--model-base", default=None, help="base LLM for LoRA / projector-only checkpoints")
    group.add_argument(
        "--model-name", default=None, help="only picks the default --conv-mode (default: from --model-path)"
    )
    group.add_argument("--vision-tower", default=None, help="local CLIP tower folder overriding mm_vision_tower")
    conv_help = (
        f"conversation template; None picks {DEFAULT_CONV_MODE} (share4v_llama_2 for llama-2 model names) "
        "(default: %(default)s)"
    )
    group.add_argument("--conv-mode", default=None, help=conv_help)
    group.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    group.add_argument("--dtype", default=None, help="float16 (CUDA default), bfloat16 or float32 (CPU default)")
    group.add_argument("--attn-implementation", default=None, help="sdpa (default), flash_attention_2 or eager")
    group.add_argument(
        "--image-aspect-ratio",
        default=None,
        choices=["pad", "square"],
        help="override the checkpoint's image pre-processing",
    )
    group.add_argument("--load-8bit", action="store_true", help="8-bit weights (bitsandbytes, CUDA)")
    group.add_argument("--load-4bit", action="store_true", help="4-bit NF4 weights (bitsandbytes, CUDA)")
    group.add_argument(
        "--compile-decode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode with a static KV cache and a compiled step (default: on for a model on one CUDA device "
        "without quantized weights, off otherwise; the first batch of each shape compiles)",
    )
    group.add_argument(
        "--fast-sampling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with compiled decoding, sampled batches run the engine's own loop instead of generate (generate's "
        "warpers and draw); --no-fast-sampling samples through generate",
    )
    group.add_argument(
        "--kv-cache-dtype",
        default=DEFAULT_KV_CACHE_DTYPE,
        choices=KV_CACHE_DTYPES,
        help="with compiled decoding, the engine's KV cache: auto (the model's dtype) or fp8 (e4m3, one byte a "
        "value: half the cache memory, faster large batches, answers change slightly) (default: %(default)s)",
    )


def add_warm_up_arg(group: Any) -> None:
    """`--warm-up` / `--no-warm-up` on a parser or argument group, for front ends that serve requests as they come
    (the server, the demo); `warm_up` acts on it."""
    group.add_argument(
        "--warm-up",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with compiled decoding, compile before serving so that the first requests do not wait for it (a few "
        "minutes at 7B); --no-warm-up serves at once",
    )


def warm_up(engine: Share4VEngine, args: Any) -> None:
    """`engine.warm_up()` unless `--no-warm-up`; a failure ends the program with a one-line error (it would have
    failed the first requests the same way)."""
    if not getattr(args, "warm_up", True):
        return
    try:
        engine.warm_up()
    except Exception as err:  # the compiler's or the device's: reported in one line, not as a traceback
        raise SystemExit(
            f"error: the warm-up failed ({type(err).__name__}: {str(err)[:300]}); --no-compile-decode serves "
            "without compiling"
        ) from None


def add_generation_args(parser: argparse.ArgumentParser, max_new_tokens: int = 1024) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--temperature", type=float, default=0.2, help="0 = greedy (default: %(default)s)")
    group.add_argument("--top_p", "--top-p", type=float, default=None, help="nucleus sampling (default: %(default)s)")
    group.add_argument("--num_beams", "--num-beams", type=int, default=1, help="beams (default: %(default)s)")
    group.add_argument(
        "--max_new_tokens", "--max-new-tokens", type=int, default=max_new_tokens, help="(default: %(default)s)"
    )


def generation_params(args: Any) -> GenerationParams:
    """The decoding settings of parsed flags (or any object with those names); only missing or None ones default.

    Raises:
        ValueError: for a value `GenerationParams` rejects (0 beams, 0 new tokens, NaN temperature, ...).
    """
    defaults = GenerationParams()
    values = {
        name: getattr(args, name, None) if getattr(args, name, None) is not None else getattr(defaults, name)
        for name in ("temperature", "num_beams", "max_new_tokens")
    }
    return GenerationParams(top_p=getattr(args, "top_p", None), **values)


def engine_from_args(args: Any) -> Share4VEngine:
    """Build the engine from parsed flags or any object with the same attribute names (missing ones default)."""
    load_kwargs = {
        key: value
        for key, value in {
            "vision_tower": getattr(args, "vision_tower", None),
            "dtype": getattr(args, "dtype", None),
            "attn_implementation": getattr(args, "attn_implementation", None),
        }.items()
        if value is not None
    }
    return Share4VEngine.from_pretrained(
        args.model_path,
        getattr(args, "model_base", None),
        getattr(args, "model_name", None) or get_model_name_from_path(args.model_path),
        conv_mode=getattr(args, "conv_mode", None),
        device=getattr(args, "device", None),
        image_aspect_ratio=getattr(args, "image_aspect_ratio", None),
        load_8bit=getattr(args, "load_8bit", False),
        load_4bit=getattr(args, "load_4bit", False),
        compile_decode=getattr(args, "compile_decode", None),
        fast_sampling=getattr(args, "fast_sampling", True),
        kv_cache_dtype=getattr(args, "kv_cache_dtype", None) or DEFAULT_KV_CACHE_DTYPE,
        **load_kwargs,
    )
