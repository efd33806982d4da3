"""inference/engine.py

The one generation engine every front end uses (eval_model, the chat CLI, benchmark inference, the demo, the
server, the captioner): chat → prompt in a conversation template → tokens with image placeholders → left-padded
batch + pixel values → `model.generate` with stop strings → text, whole or streamed.

    engine = Share4VEngine.from_pretrained("checkpoints/share4v-7b")
    [answer] = engine.generate([Chat.single("What is shown?", images=["photo.png"])])
    for piece in engine.stream(Chat.single("Describe it.", images=["photo.png"])):
        print(piece, end="")

For batch work and serving, the same in three steps: `encode(chat) -> Request` (CPU only, picklable, see
`share4v.inference.requests`; a bad image fails only its own request), `collate(requests)` and `run(batch)`, whose
results are `Completion`s (text, token ids, finish reason, token counts). `complete(chats)` does all three.

Decoding speed (`compile_decode`; on by default for a model on one CUDA device, see `COMPILE_DECODE_BY_DEFAULT`): the
engine hands `generate` a pre-allocated `StaticCache` of its own and a `CompileConfig`, so transformers compiles the
one-token decode step (inductor, "reduce-overhead": CUDA graphs) and runs the prompt (images spliced in) eagerly
(the engine's own greedy loop below compiles its prompt pass too).
Greedy answers are those of the dynamic-cache path up to floating-point rounding of the compiled kernels (equal on
the fp32 CPU tests, and over 128 tokens at 7B shape in fp32 on the GPU: `benchmarks/check_decode_equality.py`, run
before greedy decoding had its own loop below).
Stopping needs no text: the templates of the released models end answers with the end-of-sequence token, which
is checked on the device; only a stop string that is not that token (a request's `stop`, `share4v_v0`'s `###`) is
matched in decoded text, every step, by the host as it reads the tokens. Greedy batches (streamed or not) skip
`generate`'s per-step host work: they run the engine's own small loop over a compiled greedy step
(`share4v.inference.fast_greedy`), with `generate`'s tokens in fp32
(tests on the CPU, and over 128 tokens at 7B shape on H100s and H200s; in bf16 its other kernels round differently,
so a near tie can go the other way). Sampled batches run the same loop too (`fast_sampling`, default on), with
`generate`'s warpers and draw (`share4v.inference.sampling`); beam search and settings the loop does not take (a
repetition penalty, other warpers) go through `generate`. By default (`fused_projections`) that step runs each Llama
layer's q/k/v and gate/up projections as one product each (`share4v.inference.fused_llama`, weights re-laid in
place, no copies), and at batch 1 on a GPU every projection through a Triton matrix-vector kernel
(`share4v.inference.matvec`): batch-1 decode at 78 % of the HBM roofline on an H200, 1.63x transformers'
static-cache compiled `generate` (1.51x without the kernel on the same machine;
benchmarks/results/2026-11-27-h200-matvec/). The loop's prompt pass runs the fused layers too (`fused_prompt`),
compiled with the batch size and length dynamic (one graph for every layer, batch size and prompt length, batch
size 1 and unpadded batches aside). From batch 2 the step's attention is a Triton kernel that reads only the
cache slots written so far (`share4v.inference.cache_attention`; the static cache is longer, rounded up to
`CACHE_BUCKET`). 128-token captions ran at 1.30x the baseline's images/s, each at its best batch size (96), on an
H100 (benchmarks/results/2026-11-27-h100-cache-kernel/; 1.19x on another H100 before the kernel). With the opt-in
fp8 KV cache (`kv_cache_dtype="fp8"`, keys and values rounded to e4m3: answers change slightly) they ran at 1.83x
there and 1.55x on an H200 (benchmarks/results/2026-11-27-h200-fp8-kv/), each side at its best batch size.

What compiles and what re-records, so callers can keep one graph busy:
- The first compiled generation traces and compiles the decode step (a minute or so at 7B; the benchmark
  `benchmarks/bench_generate.py` reports it as `compile_s`).
- The cache length is the longest prompt + `max_new_tokens`, rounded up to a multiple of `CACHE_BUCKET`
  (256) positions and capped at the model's positions, so prompts of different lengths share one graph. The
  engine keeps one cache: a batch of another size or bucket allocates a new one. torch compiles a static graph
  for the first shape and, at the second distinct batch size or bucket, one graph with those sizes dynamic
  (batch size 1 keeps its own); after that a new shape only records a new CUDA graph (a few decode steps' time).
- Sampling settings and prompt contents change nothing; beam search (`num_beams` > 1) takes the dynamic cache.
- `warm_up()` runs the few generations after which no batch size or cache length compiles anything more (the
  server and the demo call it before serving).
- CUDA graphs are recorded per thread, so every generation runs on the engine's one decoding thread. Concurrent
  callers of `submit` and `stream` are queued and run as one batch (up to `MAX_BATCH_SIZE` rows) when the model is
  free: any settings where the engine's own loop serves them (below), else equal settings; each streamed row gets
  its own tokens, and a consumer that leaves stops its row only. Where the engine's own loop serves the oldest
  request (greedy, or sampled with `fast_sampling`), the batch is continuous (`share4v.inference.continuous`) and
  takes every such request, whatever its settings: a queued one (any `max_new_tokens`, temperature or top-p) takes
  the row of an answer that has ended while the others decode, where its prompt and budget fit the batch's cache
  (which gets `JOIN_ROOM` more positions when it has two rows or more), each row draws with its own settings, and
  each answer is handed back as soon as it ends.
- A cache that would not fit in free device memory is not allocated: that batch takes the dynamic cache.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import copy
import logging
import math
import os
import queue
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers import CompileConfig, StaticCache, StoppingCriteria
from transformers.generation.streamers import BaseStreamer
from transformers.generation.utils import ALL_CACHE_NAMES

from share4v.constants import DEFAULT_CONV_MODE
from share4v.conversation import Conversation, default_conv_mode, get_conv_template
from share4v.inference.cache_attention import has_kernel
from share4v.inference.continuous import JOIN_ROOM, Seat, decode_continuously
from share4v.inference.fast_greedy import GreedyStep, greedy_decode
from share4v.inference.fp8_cache import DEFAULT_KV_CACHE_DTYPE, KV_CACHE_DTYPES
from share4v.inference.fused_llama import FusedLlama
from share4v.inference.placement import default_device_map
from share4v.inference.requests import (
    FINISH_LENGTH,
    FINISH_STOP,
    Completion,
    Request,
    RequestEncoder,
    stack_pixels,
)
from share4v.inference.sampling import Sampling
from share4v.mm_utils import KeywordsStoppingCriteria
from share4v.model.builder import load_pretrained_model

logger = logging.getLogger(__name__)

STREAM_TIMEOUT_S = 600.0
# On where `_compiles_by_default` holds. Measured at 7B shape on an H200 (benchmarks/results/2026-11-26-h200-*): 4.2x
# the eager path's batch-1 decode; greedy tokens equal in fp32; in bf16 as close to the fp32 logits as the eager path.
COMPILE_DECODE_BY_DEFAULT = True
CACHE_BUCKET = 256  # static KV caches are sized in multiples of this many positions (see the module docstring)
CACHE_MEMORY_FRACTION = 0.8  # a new static cache may take at most this share of the device's free memory
_CACHE_KWARG = ALL_CACHE_NAMES[0]  # generate()'s keyword for a cache: past_key_values (5.1x), cache (5.2x)


# Generation-config settings that would change greedy's arg-max, with the values that do not (the fast greedy path
# runs only where every one of them has such a value; elsewhere generate applies them)
_NO_EFFECT_ON_ARGMAX = {
    "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "min_length": (None, 0), "min_new_tokens": (None, 0), "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,), "guidance_scale": (None, 1.0), "stop_strings": (None,),
    "watermarking_config": (None,),
}  # fmt: skip

GREEDY_BELOW_TEMPERATURE = 1e-3  # as the original demo: a temperature this small samples like greedy (and overflows)


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings; `temperature` 0 (or below 0.001, as the original demo) means greedy. `stop`: texts that
    end an answer where they first appear, besides the template's own stop (OpenAI's `stop`); the answer is cut
    before it and finishes with "stop"."""

    temperature: float = 0.2
    top_p: float | None = None
    num_beams: int = 1
    max_new_tokens: int = 1024
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, not {self.temperature!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")
        if self.top_p is not None and not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        # floats, as transformers' warpers require (a JSON or Python 1 is an int)
        object.__setattr__(self, "temperature", float(self.temperature))
        if self.top_p is not None:
            object.__setattr__(self, "top_p", float(self.top_p))
        for name in ("num_beams", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (tuple, list)) or not all(isinstance(text, str) and text for text in stop):
            raise ValueError(f"stop must be a string or a list of non-empty strings, not {self.stop!r}")
        object.__setattr__(self, "stop", tuple(stop))  # hashable, and equal settings compare equal

    @property
    def sampling(self) -> bool:
        return self.temperature >= GREEDY_BELOW_TEMPERATURE


@dataclass
class Chat:
    """A conversation to continue: alternating user/assistant texts ending with a user turn, plus its images.

    Images are paths, URLs, base64 data URIs or PIL images. They fill the `<image>` markers of the user texts in
    order; with no marker at all, one `<image>\\n` per image is put in front of the first user text.
    """

    turns: list[str]
    images: list[Any] = field(default_factory=list)

    def __post_init__(self):
        if isinstance(self.turns, str):
            self.turns = [self.turns]
        if not isinstance(self.turns, (list, tuple)) or not all(isinstance(turn, str) for turn in self.turns):
            raise TypeError(f"Chat turns must be a string or a list of strings, not {self.turns!r:.80}")
        self.turns = list(self.turns)
        if isinstance(self.images, (str, os.PathLike, Image.Image)):  # one image, not a sequence of them
            self.images = [self.images]
        self.images = list(self.images)

    @classmethod
    def single(cls, query: str, images: Any = ()) -> Chat:
        return cls([query], images)


@dataclass
class PreparedBatch:
    input_ids: torch.Tensor  # [B, S], left-padded, with IMAGE_TOKEN_INDEX placeholders
    attention_mask: torch.Tensor  # [B, S]
    images: torch.Tensor | list[torch.Tensor] | None  # [N, 3, H, W] in placeholder order
    stop_str: str
    prompt_len: int  # longest prompt in tokens once images are spliced in
    prompt_tokens: list[int] = field(default_factory=list)  # each row's prompt length with its images


class Share4VEngine:
    """Prompting, batching, stopping and decoding around a loaded share4v model.

    `compile_decode`: decode with a static KV cache and a compiled step (True: transformers' default
    `CompileConfig`, on any device; a `CompileConfig`: that one), or with transformers' dynamic cache, eagerly
    (False). None (the default): `COMPILE_DECODE_BY_DEFAULT` and the model sits on one CUDA device without quantized
    weights.

    `fused_projections` (default True): the compiled greedy step runs each Llama layer's q/k/v and gate/up
    projections as one matrix product each (`share4v.inference.fused_llama`; the weights are re-laid in place, no
    copies; a model that is not a plain Llama keeps its own forward). False: the model's own forward.

    `fused_prompt` (default True): with `fused_projections`, the greedy loops' prompt pass runs the fused layers too,
    compiled with dynamic shapes, attending over the prompt rather than the whole cache. False: the model's own
    forward runs the prompt.

    `fast_sampling` (default True): with compiled decoding, sampled batches (one beam, stopping on the
    end-of-sequence token) run the engine's own loop too, over a compiled step that returns the logits, drawing with
    `generate`'s warpers and draw (`share4v.inference.sampling`): from the same random state, the same tokens where
    the logits agree bit for bit (the fp32 CPU tests; the fused kernels round differently in bf16, so a draw near a
    boundary can go the other way: at 7B shape on an H200, 55 of 64 first tokens equal `generate`'s). 1.42-1.53x
    `generate`'s sampled batch-1 decoding there. False: `generate` samples.

    `kv_cache_dtype` ("auto", the default: the model's dtype; or "fp8"): "fp8" keeps the engine's loops' cache as
    e4m3 values, one byte each (`share4v.inference.fp8_cache`): half the cache's memory and of what a step reads from
    it, for larger and faster captioning batches, at the cost of rounding keys and values to 3 mantissa bits (answers
    change slightly). It needs compiled decoding, `fused_projections` and `fused_prompt`, a plain Llama LLM and, on a
    GPU, compute capability 8.9 or higher. Batches with text stop strings decode on the loops, over the fp8 cache
    (since 2026-11-28; before, `generate` decoded them in the model's dtype). Batches that `generate` decodes (beam
    search, a static cache that does not fit) run uncompiled there, over a dynamic cache in the model's dtype.
    """

    def __init__(
        self,
        tokenizer: Any,
        model: torch.nn.Module,
        image_processor: Any,
        context_len: int = 2048,
        conv_mode: str = DEFAULT_CONV_MODE,
        image_aspect_ratio: str | None = None,
        compile_decode: bool | CompileConfig | None = None,
        fused_projections: bool = True,
        fused_prompt: bool = True,
        fast_sampling: bool = True,
        kv_cache_dtype: str = DEFAULT_KV_CACHE_DTYPE,
    ):
        get_conv_template(conv_mode)  # fail now on an unknown template
        if kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, not {kv_cache_dtype!r}")
        if kv_cache_dtype == "fp8" and not (fused_projections and fused_prompt):
            raise ValueError("kv_cache_dtype='fp8' needs fused_projections and fused_prompt")
        self.tokenizer = tokenizer
        self.model = model
        self.image_processor = image_processor
        self.context_len = context_len  # what the checkpoint was trained at: longer prompts + answers get a warning
        # the hard limit: the model's position embeddings (released configs: 4096), else the training context
        self.max_positions = getattr(model.config, "max_position_embeddings", None) or context_len
        self._warned_past_context = False
        self.conv_mode = conv_mode
        self.image_aspect_ratio = image_aspect_ratio
        self.pad_token_id = next((i for i in (tokenizer.pad_token_id, tokenizer.unk_token_id) if i is not None), 0)
        if compile_decode is None:
            compile_decode = COMPILE_DECODE_BY_DEFAULT and _compiles_by_default(model)
        self.compile_decode = compile_decode
        if kv_cache_dtype == "fp8":
            _check_fp8_cache(model, compile_decode)
        self.fused_projections = fused_projections
        self.fused_prompt = fused_prompt
        self.fast_sampling = fast_sampling
        self.kv_cache_dtype = kv_cache_dtype
        self._cache: StaticCache | None = None  # the one pre-allocated KV cache, reused while its shape fits
        self._greedy_step: GreedyStep | None = None  # the compiled step of `fast_greedy`, made at first use
        self._cache_shape: tuple[int, int] | None = None  # (batch size, positions)
        self._refused: tuple[int, int] | None = None  # the shape `_static_cache` found no room for in this batch
        self._decoder: _DecodeThread | None = None
        self._answers: _DecodeThread | None = None  # hands continuous batches' answers to their futures
        self._batcher: _Batcher | None = None
        self._starting = threading.Lock()  # the decoding and batching threads start once, whoever calls first

    @classmethod
    def from_pretrained(
        cls,
        model_path: str,
        model_base: str | None = None,
        model_name: str | None = None,
        conv_mode: str | None = None,  # default: from model_name (vicuna_v1 for every released model)
        device: str | None = None,
        image_aspect_ratio: str | None = None,
        compile_decode: bool | CompileConfig | None = None,
        fused_projections: bool = True,
        fused_prompt: bool = True,
        fast_sampling: bool = True,
        kv_cache_dtype: str = DEFAULT_KV_CACHE_DTYPE,
        **load_kwargs: Any,
    ) -> Share4VEngine:
        """Load with `load_pretrained_model` (same keyword arguments) and wrap.

        On CUDA without a `device_map`, a model that fits the current GPU stays on it, where the builder's default
        (the original's "auto") spreads even a small model over every visible GPU and a spread model decodes
        uncompiled; a larger one is spread as before (`share4v.inference.placement`). One process per GPU: give
        each its `device` (the captioner does under torchrun)."""
        if "device_map" not in load_kwargs and torch.cuda.is_available() and str(device or "auto") in ("auto", "cuda"):
            load_kwargs["device_map"] = default_device_map(model_path, load_kwargs)
        tokenizer, model, image_processor, context_len = load_pretrained_model(
            model_path, model_base, model_name, device=device or "auto", **load_kwargs
        )
        conv_mode = conv_mode or default_conv_mode(model_name)
        return cls(tokenizer, model, image_processor, context_len, conv_mode, image_aspect_ratio, compile_decode,
                   fused_projections, fused_prompt, fast_sampling, kv_cache_dtype)  # fmt: skip

    # ---- prompt building -------------------------------------------------------------------------------------

    @property
    def encoder(self) -> RequestEncoder:
        """What `encode` uses: template, tokenizer and image pre-processing, without the model (picklable)."""
        return RequestEncoder(
            tokenizer=self.tokenizer,
            image_processor=self.image_processor,
            conv_mode=self.conv_mode,
            image_aspect_ratio=self.image_aspect_ratio
            or getattr(self.model.config, "image_aspect_ratio", None)
            or "square",
            image_tokens=self._image_tokens(),
            max_positions=self.max_positions,
            wrap_image_tokens=bool(getattr(self.model.config, "mm_use_im_start_end", False)),
        )

    def conversation(self, chat: Chat) -> Conversation:
        """The filled template for `chat`, with the assistant slot left open."""
        return self.encoder.conversation(chat.turns, len(chat.images))

    def encode(self, chat: Chat) -> Request:
        """`chat` → `Request` (CPU work only); a chat that cannot be encoded carries its `error` instead of raising."""
        return self.encoder.encode(chat)

    def prepare(self, chats: Sequence[Chat]) -> PreparedBatch:
        """Tokenize and left-pad the prompts; load and pre-process all images in placeholder order (raises on the
        first chat that cannot be encoded)."""
        if isinstance(chats, Chat) or not chats:
            raise ValueError("expected a non-empty list of Chat objects (wrap a single chat in a list)")
        if not all(isinstance(chat, Chat) for chat in chats):
            raise TypeError(f"expected Chat objects, got {sorted({type(c).__name__ for c in chats})}")
        encoder = self.encoder
        return self.collate([encoder._encode(chat) for chat in chats])

    def collate(self, requests: Sequence[Request]) -> PreparedBatch:
        """Left-pad encoded requests (none of them failed) into one batch, images moved to the vision tower."""
        failed = [request.error for request in requests if request.error is not None]
        if failed or not requests:
            raise ValueError(f"cannot batch requests that failed to encode: {failed[0]}" if failed else "no requests")
        width = max(len(request.prompt_ids) for request in requests)
        input_ids = torch.full((len(requests), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, request in enumerate(requests):
            input_ids[i, width - len(request.prompt_ids) :] = torch.tensor(request.prompt_ids, dtype=torch.long)
            attention_mask[i, width - len(request.prompt_ids) :] = 1
        prompt_len = max(request.prompt_tokens for request in requests)
        return PreparedBatch(
            input_ids, attention_mask, self._on_tower(stack_pixels(list(requests))), requests[0].stop_str, prompt_len,
            [request.prompt_tokens for request in requests],
        )  # fmt: skip

    def _image_tokens(self) -> int:
        tower = self.model.get_vision_tower() if hasattr(self.model, "get_vision_tower") else None
        if tower is None or not tower.is_loaded:
            return 1
        return tower.num_patches + (1 if tower.select_feature == "cls_patch" else 0)

    def _on_tower(self, pixels: torch.Tensor | list[torch.Tensor] | None) -> torch.Tensor | list[torch.Tensor] | None:
        if pixels is None:
            return None
        tower = self.model.get_vision_tower()
        if isinstance(pixels, list):
            return [p.to(device=tower.device, dtype=tower.dtype) for p in pixels]
        return pixels.to(device=tower.device, dtype=tower.dtype)

    # ---- generation ------------------------------------------------------------------------------------------

    def _generate_kwargs(self, batch: PreparedBatch, params: GenerationParams) -> dict[str, Any]:
        config = copy.deepcopy(self.model.generation_config)
        sampling = params.sampling
        max_new_tokens = self._max_new_tokens(batch, params)
        config.update(
            do_sample=sampling,
            temperature=params.temperature if sampling else 1.0,
            top_p=params.top_p if sampling and params.top_p is not None else 1.0,
            num_beams=params.num_beams,
            max_new_tokens=max_new_tokens,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            use_cache=True,
        )
        embed_tokens = self.model.get_input_embeddings()
        input_ids = batch.input_ids.to(embed_tokens.weight.device)
        # Generation starts from prompt embeddings (share4v's generate() with images does the same), so every
        # model returns, and the stop check sees, new tokens only.
        prompt = {"inputs": input_ids, "images": batch.images} if batch.images is not None else {}
        if batch.images is None:
            prompt["inputs_embeds"] = embed_tokens(input_ids)
        kwargs = {
            **prompt,
            "attention_mask": batch.attention_mask.to(embed_tokens.weight.device),
            "generation_config": config,
            "stopping_criteria": self._stopping_criteria(batch.stop_str, params.stop),
        }
        # a checkpoint whose generation_config names a cache implementation keeps it (generate takes one or the other)
        # (an fp8 cache holds bytes that only the engine's loops read: generate gets its dynamic cache)
        if (
            self.compile_decode
            and not self.kv_fp8
            and params.num_beams == 1
            and self.model.generation_config.cache_implementation is None
        ):
            cache = self._static_cache(batch.input_ids.shape[0], batch.prompt_len + max_new_tokens)
            if cache is not None:  # generate() compiles the decode step for a cache that can be compiled
                config.update(cache_implementation=None, compile_config=self._compile_config())
                kwargs[_CACHE_KWARG] = cache
        return kwargs

    def _stopping_criteria(self, stop_str: str, stops: tuple[str, ...] = ()) -> list[StoppingCriteria]:
        """Nothing when the template's stop string is the end-of-sequence token and no other `stops` are asked for
        (generate stops rows on its id, on the device, and `_decode` cuts a stop string spelled out in pieces);
        else the text check, which decodes every step."""
        keywords = self._text_stops(stop_str, stops)
        return [KeywordsStoppingCriteria(keywords, self.tokenizer, start_len=0)] if keywords else []

    def _text_stops(self, stop_str: str, stops: tuple[str, ...] = ()) -> list[str]:
        """The stop strings that only a check of the text finds: the template's `stop_str` unless it is the
        end-of-sequence token, then `stops`."""
        eos = getattr(self.tokenizer, "eos_token", None)
        keywords = [*stops]
        if stop_str and not (stop_str == eos and self.tokenizer.eos_token_id is not None):
            keywords.insert(0, stop_str)
        return keywords

    def _ends_by_text(self, stop_str: str, stops: tuple[str, ...] = ()) -> Callable[[Sequence[int]], bool] | None:
        """For the engine's loops: whether a row's new tokens so far end its answer by a stop string, as the text
        check that `generate` gets (`_stopping_criteria`) judges them; None where there is none to find."""
        criteria = self._stopping_criteria(stop_str, stops)
        return criteria[0].ends if criteria else None

    @property
    def kv_fp8(self) -> bool:
        """Whether the engine's loops keep keys and values as e4m3 bytes (`kv_cache_dtype="fp8"`)."""
        return self.kv_cache_dtype == "fp8"

    def release_cache(self) -> None:
        """Let the pre-allocated KV cache go (a batch decoding now keeps it until it ends); the next batch allocates
        one again, and checks again whether it fits. For a process that gives the GPU to other work between batches:
        call it between batches, from the thread that runs them (or while the engine's queue is idle), not while
        another thread starts one."""
        self._cache = self._cache_shape = self._refused = None

    def _static_cache(self, batch_size: int, positions: int) -> StaticCache | None:
        """The engine's KV cache for `batch_size` rows of `positions` rounded up to `CACHE_BUCKET` (capped at the
        model's positions): the one it holds when the shape matches, else a new one (None: it would not fit)."""
        length = min(-(-positions // CACHE_BUCKET) * CACHE_BUCKET, max(self.max_positions, positions))
        if self._cache_shape != (batch_size, length):
            self._cache = self._cache_shape = None  # let the old one go before sizing the new one
            if (batch_size, length) == self._refused or not self._cache_fits(batch_size, length):
                self._refused = (batch_size, length)  # asked again for this batch: no second check or warning
                return None
            with torch.inference_mode():  # as generation runs: its position counter must not need a recompile
                self._cache = StaticCache(config=self.model.config, max_cache_len=length)
            self._cache_shape = (batch_size, length)
        return self._cache

    def _allocate_cache(self, cache: StaticCache, rows: int) -> None:
        """Allocate `cache`'s keys and values for `rows` rows now, where the LLM's layers are on one device: on the
        decoding thread as its batch starts (a batch still decoding keeps its own cache until then), before the
        batch's activations. transformers allocates them at the first write, which here is inside the prompt pass:
        each layer's keys and values then took pieces of the blocks the pass's activations had freed, and a
        128-image bf16 batch on an 80 GB card ran out of memory with 18 GiB reserved but unallocated."""
        if all(layer.is_initialized for layer in cache.layers):
            return
        llm = self.model.get_model() if hasattr(self.model, "get_model") else self.model
        devices = {parameter.device for parameter in getattr(llm, "layers", llm).parameters()}
        if len(devices) == 1:  # layers spread over devices: each cache layer goes where its layer is, at its write
            heads, head_dim, dtype = self._cache_geometry()
            cache.early_initialization(rows, heads, head_dim, dtype, devices.pop())

    def _cache_geometry(self) -> tuple[int, int, torch.dtype]:
        """Key/value heads, head dimension and the dtype the engine's cache holds them in (bytes for fp8)."""
        text = self.model.config.get_text_config(decoder=True)
        heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        dtype = torch.uint8 if self.kv_fp8 else self.model.get_input_embeddings().weight.dtype
        return heads, head_dim, dtype

    def _cache_fits(self, batch_size: int, length: int) -> bool:
        """Whether keys and values for `batch_size` x `length` positions take at most `CACHE_MEMORY_FRACTION` of
        the device memory free now (a CPU model: always)."""
        weight = self.model.get_input_embeddings().weight
        if weight.device.type != "cuda":
            return True
        heads, head_dim, dtype = self._cache_geometry()
        layers = self.model.config.get_text_config(decoder=True).num_hidden_layers
        need = 2 * layers * batch_size * heads * head_dim * length * dtype.itemsize
        free, _ = torch.cuda.mem_get_info(weight.device)
        free += torch.cuda.memory_reserved(weight.device) - torch.cuda.memory_allocated(weight.device)
        if need <= CACHE_MEMORY_FRACTION * free:
            return True
        logger.warning(
            "a static KV cache of %d x %d positions (%.1f GiB) does not fit in %.1f GiB free: this batch decodes "
            "with the dynamic cache",
            batch_size,
            length,
            need / 2**30,
            free / 2**30,
        )
        return False

    def _compile_config(self) -> CompileConfig:
        if isinstance(self.compile_decode, CompileConfig):
            config = self.compile_decode
        else:
            config = CompileConfig()  # transformers' defaults: inductor, "reduce-overhead" (CUDA graphs)
        if self.model.device.type != "cuda":
            config = copy.copy(config)
            config._compile_all_devices = True  # generate() compiles on CUDA only unless told so
        return config

    def _generate(self, kwargs: dict[str, Any], streamer: BaseStreamer | None = None) -> Future:
        """`model.generate(**kwargs)` on the engine's decoding thread; the future gives its output `[B, new tokens]`."""

        def work() -> torch.Tensor:
            if (cache := kwargs.get(_CACHE_KWARG)) is not None:
                self._allocate_cache(cache, kwargs["attention_mask"].shape[0])
                cache.reset()  # positions from 0, keys and values zeroed, the same memory (no re-recording)
            return self.model.generate(**kwargs, streamer=streamer)

        return self._on_decoding_thread(work)

    def _on_decoding_thread(self, work: Callable[[], torch.Tensor]) -> Future:
        """Run `work` on the engine's decoding thread (CUDA graphs are recorded per thread), under inference mode
        with the model's device current."""

        def job() -> torch.Tensor:
            device = self.model.device
            on_gpu = device.type == "cuda"  # a new thread starts on cuda:0: make the model's device current
            with torch.inference_mode(), torch.cuda.device(device) if on_gpu else contextlib.nullcontext():
                if on_gpu:
                    _cuda_graph_thread_state()
                return work()

        if self._decoder is None:
            with self._starting:
                if self._decoder is None:
                    self._decoder = _DecodeThread()
        return self._decoder.submit(job)

    def _fast_greedy(
        self, batch: PreparedBatch, params: GenerationParams, streamer: _RowStreamer | None = None
    ) -> tuple[Future, int] | None:
        """Greedy decoding of `batch` by `fast_greedy` (the future gives `[B, new tokens]`, with the token budget;
        `streamer` gets each step's tokens and stops the rows whose reader left), where it answers as `generate`
        would and is faster: compiled decoding, greedy, a generation config that changes no arg-max, and a static
        cache that fits (text stop strings are checked as each step's tokens are read: `_TextStops`); with
        `fast_sampling`, sampled batches too, where `Sampling.of` takes the settings. None elsewhere (then `generate`
        runs)."""
        sampling = None
        if not self._plain_greedy(params):
            sampling = self._plain_sampling(params)
            if sampling is None:
                return None
        max_new_tokens = self._max_new_tokens(batch, params)
        cache = self._static_cache(batch.input_ids.shape[0], batch.prompt_len + max_new_tokens)
        if cache is None:
            return None
        length = self._cache_shape[1]  # now: another caller may size a new cache before the job runs
        self._make_greedy_step()

        ends = self._ends_by_text(batch.stop_str, params.stop)
        by_text = _TextStops(ends, batch.input_ids.shape[0], self.tokenizer.eos_token_id) if ends else None

        def on_tokens(tokens: list[int]) -> list[int]:
            stopped = by_text(tokens) if by_text is not None else []
            if streamer is None:
                return stopped
            cancelled = streamer.put_tokens(tokens)  # the token that completed a stop string is streamed too
            streamer.close_rows(stopped)
            return sorted({*cancelled, *stopped})

        def work() -> torch.Tensor:
            self._allocate_cache(cache, batch.input_ids.shape[0])
            embeds, mask = self._prompt_embeddings(batch)
            eos, pad = self.tokenizer.eos_token_id, self.pad_token_id
            step = self._greedy_step
            read = on_tokens if by_text is not None or streamer is not None else None
            return greedy_decode(step, cache, length, embeds, mask, max_new_tokens, eos, pad, read,
                                 sampling=sampling)  # fmt: skip

        return self._on_decoding_thread(work), max_new_tokens

    def _plain_greedy(self, params: GenerationParams) -> bool:
        """Whether the engine's own greedy loops answer as `generate` would and faster: greedy, and `_loop_serves`."""
        return not params.sampling and self._loop_serves(params)

    def _plain_sampling(self, params: GenerationParams) -> Sampling | None:
        """The settings `generate` would sample this batch with, where the engine's loop draws as it would: with
        `fast_sampling`, sampled, `_loop_serves`, and a generation config that asks `generate` for nothing beyond
        temperature, top-k and top-p (`Sampling.of`); else None."""
        if not (self.fast_sampling and params.sampling and self._loop_serves(params)):
            return None
        return Sampling.of(self.model.generation_config, params.temperature, params.top_p)

    def _in_loop(self, params: GenerationParams) -> bool:
        """Whether the engine's own loops decode a request with these settings: greedy, or sampled as `generate`
        would (`_plain_sampling`)."""
        return self._plain_greedy(params) or self._plain_sampling(params) is not None

    def _loop_serves(self, params: GenerationParams) -> bool:
        """What the engine's own loops need, greedy or sampled: compiled decoding, one beam, no cache implementation
        of the checkpoint's own, and a generation config whose logits processors change no arg-max (or are off).
        Stop strings are no obstacle: the loops' host reads every token and checks them as `generate` would
        (`_ends_by_text`)."""
        config = self.model.generation_config
        return bool(
            self.compile_decode
            and params.num_beams == 1
            and config.cache_implementation is None
            and all(getattr(config, name, None) in neutral for name, neutral in _NO_EFFECT_ON_ARGMAX.items())
        )

    def _make_greedy_step(self) -> None:
        if self._greedy_step is None:
            self._greedy_step = GreedyStep.for_model(
                self.model, self._compile_config(), self.fused_projections, self.fused_prompt, self.kv_fp8
            )

    def _serve_continuously(
        self,
        items: list[tuple[Request, GenerationParams, Future, _StreamRow | None]],
        take_items: Callable[[Callable[[Request, GenerationParams], bool], int], list[tuple]],
    ) -> bool:
        """Answer the queued `items` (request, settings, future, stream) as one continuous batch
        (`share4v.inference.continuous`): as rows end, requests still waiting in the queue take them
        (`take_items(fits, free rows)` hands over at most that many queued items that `fits` accepts). Each future
        gets its `Completion` as soon as its answer ends. False, with nothing run, where the batch cannot decode so
        (one that the engine's loops do not serve, `_in_loop`, or no static cache fits): then it runs as a fixed
        batch. Greedy and sampled requests share the batch, each drawn with its own settings."""
        requests = [item[0] for item in items]
        if not all(self._in_loop(params) for _, params, *_ in items):
            return False
        budgets = [self._budget(request.prompt_tokens, params) for request, params, *_ in items]
        longest = max(request.prompt_tokens for request in requests)
        room = JOIN_ROOM if len(items) > 1 else 0  # one row: nobody can join before it ends (then a new batch)
        cache = self._static_cache(len(items), longest + max(budgets) + room)
        if cache is None:
            return False
        length = self._cache_shape[1]
        self._make_greedy_step()
        seated: list[tuple[Seat, Future, _StreamRow | None]] = []  # every seat, first rows and joined

        def seat(item: tuple[Request, GenerationParams, Future, _StreamRow | None], budget: int) -> Seat:
            request, params, future, stream = item
            ending = _Answering(self, request, budget, future, stream, params.stop)
            new = Seat(request.prompt_tokens, budget, self.tokenizer.eos_token_id, ending.end,
                       _streaming(stream) if stream else None, ending.fail,
                       self._ends_by_text(request.stop_str, params.stop), request=request,
                       sampling=self._plain_sampling(params))  # fmt: skip
            seated.append((new, future, stream))
            return new

        def fits(request: Request, params: GenerationParams, written: int, left: int) -> bool:
            return (  # the cheap checks first: this runs under the queue's lock, often
                request.prompt_tokens <= written
                and self._budget(request.prompt_tokens, params, warn=False) - 1 <= left
                and self._in_loop(params)
            )

        def take(free: int, written: int, left: int) -> list[Seat]:
            chosen = take_items(lambda request, params: fits(request, params, written, left), free)
            return [seat(item, self._budget(item[0].prompt_tokens, item[1])) for item in chosen]

        def embed(seats) -> tuple[torch.Tensor, torch.Tensor]:
            return self._prompt_embeddings(self.collate([s.request for s in seats]))

        with self._starting:
            if self._answers is None:
                self._answers = _DecodeThread("share4v-answers")
        first = [seat(item, budget) for item, budget in zip(items, budgets, strict=True)]

        def work() -> int:
            self._allocate_cache(cache, len(items))
            return decode_continuously(self._greedy_step, cache, length, first, embed, take)

        try:
            self._on_decoding_thread(work).result()
        except BaseException as err:  # every answer not yet given gets the error
            for started, _, _ in seated:
                if not started.finished:
                    started.fail(err)
        finally:
            self._answers.submit(lambda: None).result()  # every answer handed over before the batch counts as done
        return True

    def _prompt_embeddings(self, batch: PreparedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's prompt embeddings `[B, P, D]` (images spliced in, left-padded) and their mask `[B, P]`, as
        share4v's `generate` makes them."""
        embed_tokens = self.model.get_input_embeddings()
        input_ids = batch.input_ids.to(embed_tokens.weight.device)
        attention_mask = batch.attention_mask.to(embed_tokens.weight.device)
        if batch.images is None:
            return embed_tokens(input_ids), attention_mask
        merged = self.model.prepare_multimodal_inputs(input_ids, batch.images, attention_mask, padding_side="left")
        return merged.inputs_embeds, merged.attention_mask

    def _max_new_tokens(self, batch: PreparedBatch, params: GenerationParams) -> int:
        """`params.max_new_tokens`, capped where prompt + answer reach the model's positions; a warning (once) when
        they pass the context the checkpoint was trained at."""
        return self._budget(batch.prompt_len, params)

    def _budget(self, prompt_len: int, params: GenerationParams, warn: bool = True) -> int:
        """New tokens at most for a prompt of `prompt_len` positions (see `_max_new_tokens`; `warn`: the warning
        past the trained context may be given, for a prompt about to run)."""
        budget = min(params.max_new_tokens, self.max_positions - prompt_len)
        if warn and prompt_len + budget > self.context_len and not self._warned_past_context:
            self._warned_past_context = True
            logger.warning(
                "prompt (%d tokens) + up to %d new tokens pass the %d-token context this checkpoint was trained at; "
                "answers may degrade past it",
                prompt_len,
                budget,
                self.context_len,
            )
        return budget

    def _decode(self, tokens: torch.Tensor, stop_str: str) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        if stop_str and stop_str in text:
            text = text[: text.index(stop_str)]
        return text.strip()

    @torch.inference_mode()
    def generate(self, chats: Sequence[Chat], params: GenerationParams | None = None) -> list[str]:
        """Answers for a batch of chats (left-padded together; equal to answering each alone)."""
        return [completion.text for completion in self.run(self.prepare(chats), params)]

    @torch.inference_mode()
    def run(self, batch: PreparedBatch, params: GenerationParams | None = None) -> list[Completion]:
        """Generate for a collated batch: one `Completion` per row."""
        return self._run(batch, params or GenerationParams())

    @torch.inference_mode()
    def _run(
        self, batch: PreparedBatch, params: GenerationParams, streams: Sequence[_StreamRow | None] = ()
    ) -> list[Completion]:
        """`run`, with the new tokens of the rows that have a `_StreamRow` also handed to it as they come (a row
        whose consumer cancels stops; the others go on)."""
        self._refused = None  # a cache refused for an earlier batch may fit now
        streamer = _RowStreamer(streams, self.tokenizer.eos_token_id) if any(streams) else None
        if (fast := self._fast_greedy(batch, params, streamer)) is not None:
            done, max_new_tokens = fast
        else:
            kwargs = self._generate_kwargs(batch, params)
            if streamer is not None:
                cancelled = _RowsCancelled([row.cancel if row else None for row in streams])
                kwargs["stopping_criteria"] = [*kwargs["stopping_criteria"], cancelled]
            done, max_new_tokens = self._generate(kwargs, streamer), kwargs["generation_config"].max_new_tokens
        if streamer is not None:
            done.add_done_callback(lambda _: streamer.end())  # also when generation fails before its first token
        return self._completions(done.result(), batch, max_new_tokens, params.stop)

    def _completions(
        self, output: torch.Tensor, batch: PreparedBatch, max_new_tokens: int, stops: tuple[str, ...] = ()
    ) -> list[Completion]:
        """One `Completion` per row of the new tokens `output` `[B, steps]`."""
        return [
            self._completion(row, batch.stop_str, prompt_tokens, max_new_tokens, stops)
            for row, prompt_tokens in zip(output.tolist(), batch.prompt_tokens, strict=True)
        ]

    def submit(
        self, request: Request, params: GenerationParams | None = None, stream: _StreamRow | None = None
    ) -> Future:
        """Queue one encoded request for generation; the `Future` gives its `Completion`.

        Requests submitted while the model is busy wait, then run together as one batch (at most `MAX_BATCH_SIZE`
        rows, oldest first): concurrent callers, such as a server's handlers, share the model's batch instead of
        queueing one by one. Where the engine's own loop serves them (compiled decoding, greedy or sampled with
        `fast_sampling`), any settings share the batch and a waiting request also takes the row of an answer that
        has ended while the batch decodes, first come first served (see the module docstring); otherwise requests
        with equal `params` run together. Greedy answers equal those of the request run alone (on a GPU, up to the
        rounding of kernels chosen by batch size and cache length). A request that failed to encode completes at
        once with its error. With `stream`, its new tokens also go
        to that row's queue as they are decoded (what `stream` reads)."""
        if self._batcher is None:
            with self._starting:
                if self._batcher is None:
                    self._batcher = _Batcher(self)
        return self._batcher.submit(request, params or GenerationParams(), stream)

    def complete(self, chats: Sequence[Chat], params: GenerationParams | None = None) -> list[Completion]:
        """`encode` → `collate` → `run` for `chats`, in order; a chat that cannot be encoded (a corrupt image,
        a prompt past the context) gets a Completion with `finish_reason` "error" and its reason, and the others
        are answered."""
        requests = [self.encode(chat) for chat in chats]
        good = [request for request in requests if request.error is None]
        answers = iter(self.run(self.collate(good), params) if good else [])
        return [next(answers) if request.error is None else Completion.failed(request) for request in requests]

    def _completion(
        self, tokens: list[int], stop_str: str, prompt_tokens: int, max_new_tokens: int, stops: tuple[str, ...] = ()
    ) -> Completion:
        """A row's `Completion` from its new tokens: up to the end-of-sequence token; with `stops`, up to the first
        token whose text completes one of them (the text cut before it)."""
        eos = self.tokenizer.eos_token_id
        ended = eos in tokens
        if ended:
            tokens = tokens[: tokens.index(eos)]
        else:
            while tokens and tokens[-1] == self.pad_token_id:
                tokens = tokens[:-1]  # a row stopped (by its stop string) before the longest one
        raw = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if stops and _first_stop(raw, stops) is not None:
            every = (stop_str, *stops)  # the template's stop may come first
            while _first_stop(self.tokenizer.decode(tokens[:-1], skip_special_tokens=True), every) is not None:
                tokens = tokens[:-1]  # the row may run on past it (a stream stops a step late)
            text = self._decode(torch.tensor(tokens, dtype=torch.long), stop_str)
            at = _first_stop(text, stops)
            text = text if at is None else text[:at].strip()
            return Completion(text, tokens, FINISH_STOP, prompt_tokens, len(tokens))
        stopped = ended or bool(stop_str and stop_str in raw) or len(tokens) < max_new_tokens
        text = self._decode(torch.tensor(tokens, dtype=torch.long), stop_str)
        reason = FINISH_STOP if stopped else FINISH_LENGTH
        return Completion(text, tokens, reason, prompt_tokens, len(tokens))

    def warm_up(self) -> int:
        """Compile now what the first requests would otherwise wait for (with `compile_decode`: the decode steps and
        the prompt pass; 20-60 s a compile at 7B on a GPU): a few short text-only generations of `WARM_UP_SHAPES`,
        greedy and sampled, whose answers are dropped. Returns how many ran (0 where nothing compiles)."""
        if not self.compile_decode:
            return 0
        logger.info("warming up: compiling the decoding steps before the first request")
        started, chat, longer = time.perf_counter(), Chat.single("Hello."), Chat.single("Hello, and welcome here.")
        for temperature in (0.0, 1.0):
            for rows, new_tokens, padded in WARM_UP_SHAPES:
                chats = [longer if padded and row % 2 else chat for row in range(rows)]
                self.complete(chats, GenerationParams(temperature=temperature, max_new_tokens=new_tokens))
        logger.info("warmed up in %.0f s", time.perf_counter() - started)
        return 2 * len(WARM_UP_SHAPES)

    def stream(
        self, chat: Chat, params: GenerationParams | None = None, completion: Future | None = None
    ) -> Iterator[str]:
        """Yield the answer to one chat piece by piece; the pieces join to what `generate` returns.

        Streams go through `submit`'s queue like whole answers: concurrent callers (a demo's users, a server's
        streaming requests) share one batch, as `submit` says. Stopping early (closing the iterator) stops this
        chat's row only. `completion`, when given, gets the answer's `Completion` (finish reason, token counts, from
        the tokens this stream read) as the stream ends, or the error that ended it."""
        params = params or GenerationParams()
        try:
            if params.num_beams > 1:
                raise ValueError("streaming needs num_beams=1 (beam search only knows its answer at the end)")
            if not isinstance(chat, Chat):
                raise TypeError(f"expected a Chat, got {type(chat).__name__}")
            request = self.encoder._encode(chat)  # a chat that cannot be encoded raises here, as `generate` does
        except Exception as err:
            _settle(completion, err)
            raise
        row = _StreamRow()
        done = self.submit(request, params, stream=row)
        read: list[int] = []  # the row's tokens as this stream reads them
        try:
            text = _lstrip_stream(_stable_text(_recorded(row.tokens, read), self.tokenizer))
            yield from _stop_at(text, (request.stop_str, *params.stop))
        finally:
            row.cancel.set()  # a consumer that stops reading stops its row (the rest of its batch goes on) ...
            row.closed.wait(STREAM_TIMEOUT_S)  # ... at the next step: return once it has
            if completion is not None and not completion.done():
                _settle(completion, self._stream_outcome(done, row, read, request, params))
        if row.batch_over and (error := done.exception()) is not None:  # the row ended with its batch: failed?
            raise error

    def _stream_outcome(
        self, done: Future, row: _StreamRow, read: list[int], request: Request, params: GenerationParams
    ) -> Completion | BaseException:
        """A stream's `Completion` from the tokens it read (at once, not when its whole batch ends), or the error
        its batch ended with."""
        if row.batch_over and (error := done.exception()) is not None:
            return error
        try:
            budget = self._budget(request.prompt_tokens, params, warn=False)
            return self._completion(read, request.stop_str, request.prompt_tokens, budget, params.stop)
        except Exception as err:  # decoding failed: the caller waiting on the completion hears it
            return err


# (rows, new tokens, prompts of two lengths) of the warm-up's generations, each run greedily and sampled: batch 1
# and larger batches, at two cache lengths each, larger batches with and without padding (the prompt pass compiles
# a graph for each), after which torch has compiled every graph later batches need (they only record CUDA graphs;
# tests/inference/test_warm_up.py counts the compiles)
WARM_UP_SHAPES = ((1, 2, False), (1, 300, False), (2, 2, False), (3, 300, True))


def _check_fp8_cache(model: torch.nn.Module, compile_decode: Any) -> None:
    """Refuse `kv_cache_dtype='fp8'` where the engine's loops would not use it or could not read it fast."""
    if not compile_decode:
        devices = {parameter.device for parameter in model.parameters()}
        gpus = sorted(device.index or 0 for device in devices if device.type == "cuda")
        where = f"device 'cuda:{gpus[0]}'" if gpus else "one device"
        names = ", ".join(sorted(str(device) for device in devices))
        why = f"; the model is spread over {names}: load it onto {where}" if len(devices) > 1 else ""
        raise ValueError(f"kv_cache_dtype='fp8' needs compiled decoding (compile_decode), whose loops read it{why}")
    if not FusedLlama.can_fuse(model):
        raise ValueError(
            "kv_cache_dtype='fp8' needs the fused step, which takes transformers' Llama layers with plain nn.Linear "
            "projections (not LoRA or quantized ones)"
        )
    device = model.get_input_embeddings().weight.device
    if device.type == "cuda" and not has_kernel(device, fp8=True):
        raise ValueError(
            "kv_cache_dtype='fp8' needs a GPU with fp8 conversions (compute capability 8.9 or higher: Ada, Hopper) "
            "and Triton"
        )


def _compiles_by_default(model: torch.nn.Module) -> bool:
    """Static cache + compiled decode where it pays and is safe: all weights on one CUDA device, none quantized."""
    devices = {parameter.device for parameter in model.parameters()}
    on_one_gpu = len(devices) == 1 and next(iter(devices)).type == "cuda"
    return on_one_gpu and getattr(model, "hf_quantizer", None) is None


def _cuda_graph_thread_state() -> None:
    """Set up the per-thread state of torch's CUDA-graph trees in this thread, as torch does itself since
    pytorch/pytorch#184357 (2.13 has it, 2.11 not): before, only the thread that imported them had it, and compiled
    code run in any other thread failed an assertion (pytorch/pytorch#123177)."""
    from torch._inductor import cudagraph_trees

    if not hasattr(cudagraph_trees, "_initialize_tls") and not hasattr(cudagraph_trees.local, "tree_manager_locks"):
        cudagraph_trees.local.tree_manager_containers = {}
        cudagraph_trees.local.tree_manager_locks = collections.defaultdict(threading.Lock)


MAX_BATCH_SIZE = 16  # rows `submit` puts in one batch

# The engines' threads still running when the interpreter exits end first: a thread that has run torch code and is
# still alive while the process tears down can abort it ("terminate called without an active exception").
_LIVE_THREADS: weakref.WeakSet = weakref.WeakSet()
_EXIT_JOIN_S = 5.0


@atexit.register
def _end_threads() -> None:
    for owner in list(_LIVE_THREADS):
        owner.close()


class _Batcher:
    """The requests `submit` queued, run in batches by one thread (on the engine's decoding thread), oldest first:
    requests the engine's own loop serves (greedy, or sampled with `fast_sampling`: `_in_loop`) as one continuous
    batch of any settings, which takes more from the queue as its rows end (`take`, first come first served); other
    requests in batches of equal settings. It holds the engine
    weakly: an engine nobody uses can be freed."""

    def __init__(self, engine: Share4VEngine):
        self.engine = weakref.ref(engine)
        self.pending: list[tuple[Request, GenerationParams, Future, _StreamRow | None]] = []
        self.ready = threading.Condition()
        self.stopped = False
        weakref.finalize(engine, self.stop)  # the thread ends with its engine
        self.thread = threading.Thread(target=self._serve, name="share4v-batcher", daemon=True)
        self.thread.start()
        _LIVE_THREADS.add(self)

    def stop(self) -> None:
        with self.ready:
            self.stopped = True
            self.ready.notify()

    def close(self) -> None:
        """`stop`, and wait a moment for the thread to end (at exit)."""
        self.stop()
        self.thread.join(timeout=_EXIT_JOIN_S)

    def submit(self, request: Request, params: GenerationParams, stream: _StreamRow | None = None) -> Future:
        future: Future = Future()
        if request.error is not None:
            future.set_result(Completion.failed(request))
            if stream is not None:
                stream.close(batch_over=True)
            return future
        with self.ready:
            self.pending.append((request, params, future, stream))
            self.ready.notify()
        return future

    def _next_batch(self) -> list[tuple[Request, GenerationParams, Future, _StreamRow | None]]:
        """Up to `MAX_BATCH_SIZE` waiting requests, oldest first: those with the oldest request's settings, or,
        where the engine's own loop would serve the oldest request, those it would serve (each keeping its own
        settings). A request whose caller cancelled its future while it waited is dropped."""
        while True:
            with self.ready:
                while not self.pending and not self.stopped:
                    self.ready.wait()
                if not self.pending:
                    return []  # stopped, nothing left to run
                together = self._together(self.pending[0])
                batch = [item for item in self.pending if together(item)][:MAX_BATCH_SIZE]
                self.pending = [item for item in self.pending if all(item is not taken for taken in batch)]
            if running := _started(batch):
                return running

    def _together(self, oldest: tuple) -> Callable[[tuple], bool]:
        """Which waiting items may share a batch with `oldest`: those the engine's own loop serves too, where it
        serves `oldest`; else those with equal settings."""
        engine = self.engine()

        def in_loop(item: tuple) -> bool:
            try:
                return engine._in_loop(item[1])
            except Exception:  # whatever asking raised: not this way (the run reports the error)
                return False

        if engine is not None and in_loop(oldest):
            return in_loop
        return lambda item: item[1] == oldest[1]

    def take(self, fits: Callable[[Request, GenerationParams], bool], free: int) -> list[tuple]:
        """Up to `free` of the oldest waiting requests, taken off the queue while `fits` accepts them (for a
        continuous batch: first come, first served, so no request passes an older one that cannot join; a request
        whose caller cancelled its future is dropped)."""
        with self.ready:
            chosen = []
            for item in self.pending[:free]:
                if not fits(item[0], item[1]):
                    break
                chosen.append(item)
            self.pending = self.pending[len(chosen) :]
        return _started(chosen)

    def _serve(self) -> None:
        while batch := self._next_batch():
            outcomes: list[Any]
            engine = self.engine()
            try:
                if engine is None:
                    raise RuntimeError("the engine was garbage-collected with requests still queued")
                if not engine._serve_continuously(batch, self.take):
                    _run_by_settings(engine, batch)
                missing = RuntimeError("the batch ended without this request's answer")
                outcomes = [missing] * len(batch)  # each future has its answer already: none of these is given
            except BaseException as err:  # every request of the batch without an answer gets the error
                outcomes = [err] * len(batch)
            finally:
                for *_, stream in batch:
                    if stream is not None:
                        stream.close(batch_over=True)  # also a stream whose batch failed before generating
                del engine
            for (_, _, future, _), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)


def _run_by_settings(engine: Share4VEngine, batch: list[tuple]) -> None:
    """Each group of the queued `batch` with equal settings as one fixed batch (`Share4VEngine._run`), in the order
    they came; each group's futures get their answers (or the group's error) and its streams close as it ends."""
    groups: list[tuple[GenerationParams, list[tuple]]] = []
    for item in batch:
        group = next((members for settings, members in groups if settings == item[1]), None)
        if group is None:
            groups.append((item[1], group := []))
        group.append(item)
    for params, members in groups:
        try:
            answers = engine._run(engine.collate([m[0] for m in members]), params, [m[3] for m in members])
        except BaseException as err:  # this group's requests get the error
            answers = [err] * len(members)
        for (_, _, future, stream), answer in zip(members, answers, strict=True):
            if stream is not None:
                stream.close(batch_over=True)
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)


def _started(items: list[tuple]) -> list[tuple]:
    """The queued items whose futures now run; a stream whose caller cancelled meanwhile is closed."""
    running = []
    for item in items:
        if item[2].set_running_or_notify_cancel():
            running.append(item)
        elif item[3] is not None:
            item[3].close(batch_over=False)
    return running


@dataclass
class _Answering:
    """How a continuous batch hands one queued request its end: the `Completion` (made on the decoding thread)
    or the error goes to its future on the engine's answers thread (callbacks on the future must not run on the
    decoding thread: one that generates would wait for itself), then its stream closes."""

    engine: Share4VEngine
    request: Request
    budget: int
    future: Future
    stream: _StreamRow | None
    stops: tuple[str, ...] = ()  # the request's own stop strings (`GenerationParams.stop`)

    def end(self, tokens: list[int]) -> None:
        try:
            request = self.request
            outcome = self.engine._completion(tokens, request.stop_str, request.prompt_tokens, self.budget, self.stops)
        except BaseException as err:  # decoding the text failed: this request's error alone
            outcome = err
        self._hand(outcome)

    def fail(self, error: BaseException) -> None:
        self._hand(error)

    def _hand(self, outcome: Any) -> None:
        def job() -> None:
            if isinstance(outcome, BaseException):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)
            if self.stream is not None:
                self.stream.close(batch_over=True)

        self.engine._answers.submit(job)


def _streaming(stream: _StreamRow) -> Callable[[int], bool]:
    """A continuous batch's `on_token` for a streamed request: each token to its queue; False once its reader has
    left (the row then ends)."""

    def on_token(token: int) -> bool:
        if stream.cancel.is_set():
            stream.close(batch_over=False)
            return False
        stream.tokens.put([token])
        return True

    return on_token


class _DecodeThread:
    """One thread that runs jobs in turn (a daemon: an interrupted caller can still exit): the engine's generations,
    or (`name` "share4v-answers") handing continuous batches' answers to their futures, so that callbacks on those
    futures never run on the decoding thread."""

    def __init__(self, name: str = "share4v-decode"):
        self.jobs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=_serve, args=(self.jobs,), name=name, daemon=True)
        self.thread.start()
        _LIVE_THREADS.add(self)

    def close(self) -> None:
        """End the thread after the jobs queued, and wait a moment for it (at exit)."""
        self.jobs.put(None)
        self.thread.join(timeout=_EXIT_JOIN_S)

    def submit(self, job: Callable[[], Any]) -> Future:
        future: Future = Future()
        self.jobs.put((job, future))
        return future

    def __del__(self):
        self.jobs.put(None)  # the thread ends with its engine


def _serve(jobs: queue.Queue) -> None:
    while (item := jobs.get()) is not None:
        job, future = item
        try:
            future.set_result(job())
        except BaseException as err:  # handed to whoever waits on the future
            future.set_exception(err)
        del job, future, item  # hold nothing (a cache, a batch) while waiting for the next job


@dataclass
class _StreamRow:
    """One streamed request's side of its batch: the queue its new tokens arrive in, the event its consumer sets
    when it stops reading, and how the queue ended (at the row's end-of-sequence token, or with the whole batch)."""

    tokens: _TokenQueue = field(default_factory=lambda: _TokenQueue())
    cancel: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)  # no more tokens will come
    ended: bool = False
    batch_over: bool = False

    def close(self, batch_over: bool) -> None:
        if not self.ended:
            self.ended, self.batch_over = True, batch_over
            self.tokens.end()
            self.closed.set()


class _RowsCancelled(StoppingCriteria):
    """Stops each row whose event is set (rows without one run on)."""

    def __init__(self, events: Sequence[threading.Event | None]):
        self.events = list(events)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        stopped = [event is not None and event.is_set() for event in self.events]
        return torch.tensor(stopped, dtype=torch.bool, device=input_ids.device)


class _RowStreamer(BaseStreamer):
    """Hands each row's new token from `generate` to that row's stream (rows without one are skipped); a row's
    stream closes at its end-of-sequence token, the others when generation ends."""

    def __init__(self, rows: Sequence[_StreamRow | None], eos_token_id: int | None):
        self.rows, self.eos_token_id = list(rows), eos_token_id
        self.skip_next = True  # generate() first puts the prompt

    def put(self, value: torch.Tensor) -> None:
        if self.skip_next:
            self.skip_next = False
            return
        self.put_tokens(value.reshape(len(self.rows), -1)[:, -1].tolist())

    def put_tokens(self, tokens: list[int]) -> list[int]:
        """One step's new token of each row; returns the rows whose reader has left (to stop them)."""
        cancelled = []
        for index, (row, token) in enumerate(zip(self.rows, tokens, strict=True)):
            if row is None or row.ended:
                continue
            if row.cancel.is_set():  # the stopping criteria (or the returned rows) end this row at this step
                row.close(batch_over=False)
                cancelled.append(index)
                continue
            row.tokens.put([token])
            if token == self.eos_token_id:
                row.close(batch_over=False)
        return cancelled

    def close_rows(self, rows: Sequence[int]) -> None:
        """End the streams of `rows`, whose answers have ended (a stop string); later tokens are not theirs."""
        for index in rows:
            if (row := self.rows[index]) is not None:
                row.close(batch_over=False)

    def end(self) -> None:
        for row in self.rows:
            if row is not None:
                row.close(batch_over=True)


class _TextStops:
    """`on_tokens` of a fixed batch in the engine's loops: keeps each row's new tokens as the host reads them, one
    step at a time, and returns the rows whose tokens a stop string has just ended (`ends`), as `generate`'s text
    check would stop them at that step."""

    def __init__(self, ends: Callable[[Sequence[int]], bool], rows: int, eos_token_id: int | None):
        self.ends, self.eos_token_id = ends, eos_token_id
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.over = [False] * rows

    def __call__(self, step_tokens: list[int]) -> list[int]:
        stopped = []
        for row, token in enumerate(step_tokens):
            if self.over[row]:
                continue
            self.tokens[row].append(token)
            if token == self.eos_token_id:
                self.over[row] = True
            elif self.ends(self.tokens[row]):
                self.over[row] = True
                stopped.append(row)
        return stopped


class _TokenQueue:
    """One streamed row's new token ids, put by the decoding thread and read as an iterator by its consumer."""

    _END = object()

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()

    def put(self, token_ids: list[int]) -> None:
        self.queue.put(token_ids)

    def end(self) -> None:
        self.queue.put(self._END)

    def __iter__(self) -> Iterator[list[int]]:
        while (item := self.queue.get(timeout=STREAM_TIMEOUT_S)) is not self._END:
            yield item


_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")  # sentencepiece byte-fallback pieces


def _stable_text(token_batches: Iterator[list[int]], tokenizer: Any) -> Iterator[str]:
    """Decode the growing token list and yield only text that later tokens cannot change.

    A trailing run of byte-fallback tokens may still be an incomplete character (and decodes differently once the
    run ends), and a trailing U+FFFD may be the start of a character of a byte-level BPE; both are held back.
    """
    tokens: list[int] = []
    open_bytes = 0  # length of the trailing run of byte tokens
    emitted = 0
    for new_tokens in token_batches:
        for token in new_tokens:
            tokens.append(token)
            piece = tokenizer.convert_ids_to_tokens(token)
            open_bytes = open_bytes + 1 if isinstance(piece, str) and _BYTE_TOKEN.match(piece) else 0
        text = tokenizer.decode(tokens[: len(tokens) - open_bytes], skip_special_tokens=True)
        stable = len(text.rstrip("\ufffd"))
        if stable > emitted:
            yield text[emitted:stable]
            emitted = stable
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if len(text) > emitted:
        yield text[emitted:]


def _lstrip_stream(pieces: Iterator[str]) -> Iterator[str]:
    started = False
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        if piece:
            yield piece


def _settle(future: Future | None, outcome: Any) -> None:
    """`outcome` (a result, or an exception) to `future`, unless there is none or it is settled or cancelled."""
    if future is None or future.done():
        return
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:  # cancelled meanwhile (a server's waiter whose client left)
        pass


def _recorded(token_batches: Iterator[list[int]], into: list[int]) -> Iterator[list[int]]:
    """`token_batches` passed through, each token also added to `into`."""
    for tokens in token_batches:
        into.extend(tokens)
        yield tokens


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first of `stops` (non-empty texts) begins in `text`; None where none is in it."""
    found = [text.index(stop) for stop in stops if stop and stop in text]
    return min(found) if found else None


def _stop_at(pieces: Iterator[str], stops: Sequence[str]) -> Iterator[str]:
    """Pass text through until the first of `stops`, holding back any tail that could begin one; strip the end."""
    pending = ""
    for piece in pieces:
        pending += piece
        if (at := _first_stop(pending, stops)) is not None:
            pending = pending[:at]
            break
        keep = max((_longest_stop_prefix(pending, stop) for stop in stops if stop), default=0)
        ready, pending = pending[: len(pending) - keep], pending[len(pending) - keep :]
        ready_body = ready.rstrip()
        if ready_body:
            yield ready_body
            pending = ready[len(ready_body) :] + pending
        else:
            pending = ready + pending
    tail = pending.rstrip()
    if tail:
        yield tail


def _longest_stop_prefix(text: str, stop_str: str) -> int:
    for size in range(min(len(text), len(stop_str) - 1), 0, -1):
        if stop_str.startswith(text[-size:]):
            return size
    return 0
