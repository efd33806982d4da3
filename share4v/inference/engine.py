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
"""

from __future__ import annotations

import copy
import logging
import math
import os
import queue
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from share4v.constants import DEFAULT_CONV_MODE
from share4v.conversation import Conversation, default_conv_mode, get_conv_template
from share4v.inference.requests import (
    FINISH_LENGTH,
    FINISH_STOP,
    Completion,
    Request,
    RequestEncoder,
    stack_pixels,
)
from share4v.mm_utils import KeywordsStoppingCriteria
from share4v.model.builder import load_pretrained_model

logger = logging.getLogger(__name__)

STREAM_TIMEOUT_S = 600.0


GREEDY_BELOW_TEMPERATURE = 1e-3  # as the original demo: a temperature this small samples like greedy (and overflows)


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings; `temperature` 0 (or below 0.001, as the original demo) means greedy."""

    temperature: float = 0.2
    top_p: float | None = None
    num_beams: int = 1
    max_new_tokens: int = 1024

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, not {self.temperature!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")
        if self.top_p is not None and not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        for name in ("num_beams", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, not {value!r}")

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
    """Prompting, batching, stopping and decoding around a loaded share4v model."""

    def __init__(
        self,
        tokenizer: Any,
        model: torch.nn.Module,
        image_processor: Any,
        context_len: int = 2048,
        conv_mode: str = DEFAULT_CONV_MODE,
        image_aspect_ratio: str | None = None,
    ):
        get_conv_template(conv_mode)  # fail now on an unknown template
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

    @classmethod
    def from_pretrained(
        cls,
        model_path: str,
        model_base: str | None = None,
        model_name: str | None = None,
        conv_mode: str | None = None,  # default: from model_name (vicuna_v1 for every released model)
        device: str | None = None,
        image_aspect_ratio: str | None = None,
        **load_kwargs: Any,
    ) -> Share4VEngine:
        """Load with `load_pretrained_model` (same keyword arguments) and wrap."""
        tokenizer, model, image_processor, context_len = load_pretrained_model(
            model_path, model_base, model_name, device=device or "auto", **load_kwargs
        )
        conv_mode = conv_mode or default_conv_mode(model_name)
        return cls(tokenizer, model, image_processor, context_len, conv_mode, image_aspect_ratio)

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
        config.update(
            do_sample=sampling,
            temperature=params.temperature if sampling else 1.0,
            top_p=params.top_p if sampling and params.top_p is not None else 1.0,
            num_beams=params.num_beams,
            max_new_tokens=self._max_new_tokens(batch, params),
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
        return {
            **prompt,
            "attention_mask": batch.attention_mask.to(embed_tokens.weight.device),
            "generation_config": config,
            "stopping_criteria": [KeywordsStoppingCriteria([batch.stop_str], self.tokenizer, start_len=0)],
        }

    def _max_new_tokens(self, batch: PreparedBatch, params: GenerationParams) -> int:
        """`params.max_new_tokens`, capped where prompt + answer reach the model's positions; a warning (once) when
        they pass the context the checkpoint was trained at."""
        budget = min(params.max_new_tokens, self.max_positions - batch.prompt_len)
        if batch.prompt_len + budget > self.context_len and not self._warned_past_context:
            self._warned_past_context = True
            logger.warning(
                "prompt (%d tokens) + up to %d new tokens pass the %d-token context this checkpoint was trained at; "
                "answers may degrade past it",
                batch.prompt_len,
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
        params = params or GenerationParams()
        kwargs = self._generate_kwargs(batch, params)
        output = self.model.generate(**kwargs)  # [B, new tokens]
        max_new_tokens = kwargs["generation_config"].max_new_tokens
        return [
            self._completion(row, batch.stop_str, prompt_tokens, max_new_tokens)
            for row, prompt_tokens in zip(output.tolist(), batch.prompt_tokens, strict=True)
        ]

    def complete(self, chats: Sequence[Chat], params: GenerationParams | None = None) -> list[Completion]:
        """`encode` → `collate` → `run` for `chats`, in order; a chat that cannot be encoded (a corrupt image,
        a prompt past the context) gets a Completion with `finish_reason` "error" and its reason, and the others
        are answered."""
        requests = [self.encode(chat) for chat in chats]
        good = [request for request in requests if request.error is None]
        answers = iter(self.run(self.collate(good), params) if good else [])
        return [next(answers) if request.error is None else Completion.failed(request) for request in requests]

    def _completion(self, tokens: list[int], stop_str: str, prompt_tokens: int, max_new_tokens: int) -> Completion:
        eos = self.tokenizer.eos_token_id
        ended = eos in tokens
        if ended:
            tokens = tokens[: tokens.index(eos)]
        else:
            while tokens and tokens[-1] == self.pad_token_id:
                tokens = tokens[:-1]  # a row stopped (by its stop string) before the longest one
        raw = self.tokenizer.decode(tokens, skip_special_tokens=True)
        stopped = ended or bool(stop_str and stop_str in raw) or len(tokens) < max_new_tokens
        text = self._decode(torch.tensor(tokens, dtype=torch.long), stop_str)
        reason = FINISH_STOP if stopped else FINISH_LENGTH
        return Completion(text, tokens, reason, prompt_tokens, len(tokens))

    def stream(self, chat: Chat, params: GenerationParams | None = None) -> Iterator[str]:
        """Yield the answer to one chat piece by piece; the pieces join to what `generate` returns."""
        params = params or GenerationParams()
        if params.num_beams > 1:
            raise ValueError("streaming needs num_beams=1 (beam search only knows its answer at the end)")
        batch = self.prepare([chat])
        kwargs = self._generate_kwargs(batch, params)
        cancel = threading.Event()  # set when the consumer stops early: generation then stops too
        kwargs["stopping_criteria"] = [*kwargs["stopping_criteria"], _Cancelled(cancel)]
        streamer = _TokenQueue(skip_first=True)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs, streamer=streamer)
            except BaseException as err:  # handed to the consumer below
                failure.append(err)
            finally:
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield from _stop_at(_lstrip_stream(_stable_text(streamer, self.tokenizer)), batch.stop_str)
        finally:
            cancel.set()
            thread.join()
        if failure:
            raise failure[0]


class _Cancelled(StoppingCriteria):
    """Stops every row once `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _TokenQueue(BaseStreamer):
    """Receives new token ids from `generate` (on its thread) and hands them out as an iterator."""

    _END = object()

    def __init__(self, skip_first: bool):
        self.queue: queue.Queue = queue.Queue()
        self.skip_next = skip_first  # generate() first puts the prompt

    def put(self, value: torch.Tensor) -> None:
        if self.skip_next:
            self.skip_next = False
            return
        self.queue.put(value.flatten().tolist())

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


def _stop_at(pieces: Iterator[str], stop_str: str) -> Iterator[str]:
    """Pass text through until `stop_str`, holding back any tail that could be its beginning; strip the end."""
    pending = ""
    for piece in pieces:
        pending += piece
        if stop_str and stop_str in pending:
            pending = pending[: pending.index(stop_str)]
            break
        keep = _longest_stop_prefix(pending, stop_str)
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
