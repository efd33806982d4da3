"""testing/tiny_tokenizer.py

Trains a small Llama-style sentencepiece tokenizer locally (BPE, byte fallback, `<unk>`=0 `<s>`=1 `</s>`=2) and
writes it the way released LLaVA/ShareGPT4V checkpoints ship theirs: `tokenizer.model`, `tokenizer_config.json`,
`special_tokens_map.json`, with no `tokenizer.json`.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from share4v.conversation import conv_templates

_WORDS = (
    "a an the this that there is are was were of in on at with and or but to from by for as it its image picture "
    "photo what where who how many which color colour red green blue yellow white black orange purple brown gray "
    "sky sun moon cloud tree house car road river mountain sea beach city street person man woman child dog cat "
    "bird horse table chair window door left right top bottom middle center small large big tall short bright dark "
    "describe detail detailed question answer answers assistant user human chat curious helpful polite artificial "
    "intelligence gives questions visual content provided following format please look carefully shown one two "
    "three four five six seven eight nine ten circle square triangle stripe pattern background foreground"
).split()


def _corpus(seed: int, num_sentences: int = 600) -> list[str]:
    rng = random.Random(seed)
    lines = [conv.system for conv in conv_templates.values() if conv.system]
    lines += ["USER: <image>\nWhat is in the picture? ASSISTANT: A picture.</s>", "Human: hi###Assistant: hello###"]
    for _ in range(num_sentences):
        words = rng.choices(_WORDS, k=rng.randint(4, 14))
        sentence = " ".join(words).capitalize() + rng.choice([".", "?", "!", ","])
        if rng.random() < 0.2:
            sentence += f" {rng.randint(0, 2024)}"
        lines.append(sentence)
    return lines


def train_sentencepiece(
    seed: int = 0, vocab_size: int = 512, sentences: list[str] | None = None, whole_words: Sequence[str] = ()
) -> bytes:
    """The serialized `tokenizer.model` of a Llama-like BPE sentencepiece model trained on a generated corpus
    (or on `sentences`, with the conversation templates' system prompts added). Each of `whole_words` is one piece
    wherever it stands (a user-defined symbol: after a space it is `▁` then the word, not one `▁WORD` piece)."""
    corpus = _corpus(seed) if sentences is None else [c.system for c in conv_templates.values() if c.system] + sentences
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
        user_defined_symbols=list(whole_words),
    )
    return model.getvalue()


def _added_token(content: str) -> dict:
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }


def write_llama_tokenizer(out_dir: str | Path, model_bytes: bytes, model_max_length: int = 2048) -> None:
    """Write `tokenizer.model` + the two JSON files in the layout of a ShareGPT4V release."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(model_bytes)
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": _added_token("<s>"),
        "clean_up_tokenization_spaces": False,
        "eos_token": _added_token("</s>"),
        "legacy": False,
        "model_max_length": model_max_length,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": _added_token("<unk>"),
    }
    special = {
        "bos_token": _added_token("<s>"),
        "eos_token": _added_token("</s>"),
        "pad_token": "<unk>",
        "unk_token": _added_token("<unk>"),
    }
    for token in special.values():
        if isinstance(token, dict):
            token.pop("__type")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
