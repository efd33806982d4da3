"""serve/sharecaptioner.py

ShareCaptioner (`Lin-Chen/ShareCaptioner`, InternLM-XComposer-7B tuned to write ShareGPT4V-style captions: the model
that captioned ShareGPT4V-PT) run as the original `tools/share-cap_batch_infer.py` runs it, behind the same
fault-tolerant, resumable loop as share4v models (`share4v.serve.captioner.caption_images`). Its model class ships
with the checkpoint as Python code, so loading it executes that code (transformers' `trust_remote_code`): share4v
does so only when the user passes `--trust-remote-code`.

The original's recipe, kept: the model in half precision on the GPU (autocast), the prompt `<|User|>:` (tokenized with
special tokens), the image's embeddings (`model.vis_processor` → `model.encode_img`), then the instruction +
`model.eoh` + "\\n<|Bot|>:" (without special tokens); `model.internlm_model.generate` from those embeddings with beam
sampling (3 beams, temperature 1.0, repetition penalty 1.5, length penalty 1.0, at most 500 tokens); ids of -1
(InternLM's padding) read as 2 before `model.decode_text`. Images are decoded and pre-processed in the DataLoader's
workers, and a bad one fails only itself, as for share4v models.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from share4v.inference.engine import GenerationParams
from share4v.inference.requests import FINISH_LENGTH, FINISH_STOP, Completion, Request
from share4v.mm_utils import load_image

# The original's decoding settings; the command line's defaults when it runs ShareCaptioner.
SHARECAPTIONER_DEFAULTS = {"temperature": 1.0, "num_beams": 3, "max_new_tokens": 500}
REPETITION_PENALTY = 1.5
USER_PREFIX = "<|User|>:"
BOT_PREFIX = "\n<|Bot|>:"
INTERNLM_PAD_ID, INTERNLM_EOS_ID = -1, 2
SHARECAPTIONER_INTERFACE = ("vis_processor", "encode_img", "encode_text", "internlm_model", "decode_text", "eoh")


def ships_model_code(path: str | Path) -> bool:
    """Whether `path` is a local checkpoint folder whose config names model classes of its own (`auto_map`)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("auto_map"))
    except (OSError, ValueError):
        return False


@dataclass
class ShareCaptionerEncoder:
    """The CPU half, picklable for DataLoader workers: one image loaded, checked and pre-processed by the model's own
    `vis_processor`, and the instruction's token ids. A bad image gives a `Request` with its `error`."""

    vis_processor: Any
    tokenizer: Any
    eoh: str

    def encode(self, chat: Any) -> Request:
        try:
            if len(chat.turns) != 1 or len(chat.images) != 1:
                raise ValueError("ShareCaptioner captions one image per request, with one instruction")
            pixels = self.vis_processor(load_image(chat.images[0]))
            instruction = chat.turns[0] + self.eoh + BOT_PREFIX
            ids = self.tokenizer(instruction, add_special_tokens=False).input_ids
            return Request(prompt_ids=list(ids), pixel_values=pixels[None], num_images=1)
        except Exception as err:  # whatever one image raises stays that image's error
            return Request(error=str(err) or type(err).__name__)


@dataclass
class CaptionBatch:
    pixel_values: torch.Tensor  # [B, 3, H, W]
    instruction_ids: list[int]  # shared by the batch


class ShareCaptionerEngine:
    """`encoder` / `collate` / `run`, as `Share4VEngine` offers them to the captioning loop, for a ShareCaptioner
    model (its remote code loaded by transformers)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any):
        model.tokenizer = tokenizer  # the remote code's encode_text / decode_text read it from the model
        self.model, self.tokenizer = model.eval(), tokenizer
        self.encoder = ShareCaptionerEncoder(model.vis_processor, tokenizer, model.eoh)
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype

    @classmethod
    def from_pretrained(
        cls, path: str, *, trust_remote_code: bool, device: str | None = None, dtype: str | None = None
    ) -> ShareCaptionerEngine:
        """Load `path` with its own model code, which runs only when `trust_remote_code` carries the user's explicit
        consent (the command line's `--trust-remote-code`). On CUDA the weights are float16, as the original's
        `.half()`; on the CPU float32.

        Raises:
            ValueError: without that consent, for a local folder without model code of its own, or for a model
                without ShareCaptioner's interface (`vis_processor`, `encode_img`, `encode_text`, `internlm_model`,
                `decode_text`, `eoh`).
        """
        if not trust_remote_code:
            raise ValueError(f"{path}: ShareCaptioner's model code runs only with --trust-remote-code")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from share4v.utils import resolve_device, resolve_dtype

        if Path(path).is_dir() and not ships_model_code(path):
            raise ValueError(f"{path} ships no model code of its own: --trust-remote-code is for ShareCaptioner")
        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, dtype=torch_dtype)
        missing = [name for name in SHARECAPTIONER_INTERFACE if not hasattr(model, name)]
        if missing:
            raise ValueError(f"{path} is not a ShareCaptioner model: it has no {', '.join(missing)}")
        return cls(model.to(device), tokenizer)

    def collate(self, requests: list[Request]) -> CaptionBatch:
        failed = [request.error for request in requests if request.error is not None]
        if failed or not requests:
            raise ValueError(f"cannot batch requests that failed to encode: {failed[0]}" if failed else "no requests")
        if any(request.prompt_ids != requests[0].prompt_ids for request in requests):
            raise ValueError("a ShareCaptioner batch shares one instruction")
        return CaptionBatch(torch.cat([request.pixel_values for request in requests]), requests[0].prompt_ids)

    @torch.no_grad()
    def run(self, batch: CaptionBatch, params: GenerationParams | None = None) -> list[Completion]:
        params = params or GenerationParams(**SHARECAPTIONER_DEFAULTS)
        model, rows = self.model, batch.pixel_values.shape[0]
        half = self.dtype in (torch.float16, torch.bfloat16) and self.device.type == "cuda"
        autocast = torch.autocast("cuda", dtype=self.dtype) if half else contextlib.nullcontext()
        with autocast:
            user = model.encode_text(USER_PREFIX, add_special_tokens=True)  # [1, L1, D]
            images = model.encode_img(batch.pixel_values.to(self.device))  # [B, patches, D]
            ids = torch.tensor([batch.instruction_ids], device=self.device)
            instruction = model.internlm_model.get_input_embeddings()(ids)  # [1, L2, D]
            embeds = torch.cat([user.expand(rows, -1, -1), images, instruction.expand(rows, -1, -1)], dim=1)
            sampling = params.sampling
            output = model.internlm_model.generate(
                inputs_embeds=embeds,
                max_new_tokens=params.max_new_tokens,
                num_beams=params.num_beams,
                min_length=1,
                do_sample=sampling,
                temperature=params.temperature if sampling else 1.0,
                top_p=params.top_p if sampling and params.top_p is not None else 1.0,
                repetition_penalty=REPETITION_PENALTY,
                length_penalty=1.0,
                eos_token_id=self.tokenizer.eos_token_id,
                num_return_sequences=1,
            )
        completions = []
        for row in output:
            row = row.clone()
            row[row == INTERNLM_PAD_ID] = INTERNLM_EOS_ID
            ids = row.tolist()
            stopped = self.tokenizer.eos_token_id in ids
            new = ids[: ids.index(self.tokenizer.eos_token_id)] if stopped else ids
            text = model.decode_text([row])
            text = text[0] if isinstance(text, (list, tuple)) else text
            finish = FINISH_STOP if stopped else FINISH_LENGTH
            completions.append(Completion(str(text), new, finish, embeds.shape[1], len(new)))
        return completions
