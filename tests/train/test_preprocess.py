"""Golden label masks: prompts and trained texts written by hand, checked token by token on the tiny tokenizer."""

import re

import pytest
import torch

from share4v.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from share4v.mm_utils import tokenizer_image_token
from share4v.train.preprocess import (
    SampleError,
    conv_mode_for_version,
    preprocess,
    preprocess_multimodal,
    tokenize_segments,
)

VICUNA = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
LLAMA_2_SYS = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make "
    "any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't "
    "know the answer to a question, please don't share false information."
)


def turns(*values):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def piece_text(tokenizer, ids):
    """The text a run of token ids stands for, spaces and bytes included (sentencepiece pieces, ▁ = space)."""
    out = bytearray()
    for piece in tokenizer.convert_ids_to_tokens(ids):
        byte = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
        out += bytes([int(byte.group(1), 16)]) if byte else piece.replace("▁", " ").encode()
    return out.decode()


def trained_runs(tokenizer, input_ids, labels):
    """Maximal runs of trained tokens, as text."""
    runs, current = [], []
    for token, label in zip(input_ids, labels, strict=True):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    if current:
        runs.append(current)
    return [piece_text(tokenizer, run) for run in runs]


# (template, has_image, turns, the prompt by hand, the trained texts by hand)
GOLDEN = [
    pytest.param(
        "vicuna_v1",
        True,
        turns("<image>\nWhat is it?", "A cat 12."),
        VICUNA + " USER: <image>\nWhat is it? ASSISTANT: A cat 12.</s>",
        [" A cat 12.</s>"],
        id="v1-one-turn-image",
    ),
    pytest.param(
        "vicuna_v1",
        False,
        turns("Count them?", "  3 dogs", "Ünïcode, ok?", "Ça va — 42 ASSISTANT: not a new turn"),
        VICUNA + " USER: Count them? ASSISTANT:   3 dogs</s>USER: Ünïcode, ok? ASSISTANT: Ça va — 42 ASSISTANT: "
        "not a new turn</s>",
        ["   3 dogs</s>", " Ça va — 42 ASSISTANT: not a new turn</s>"],
        id="v1-multi-turn-text-leading-spaces-unicode-separator-in-answer",
    ),
    pytest.param(
        "vicuna_v1",
        True,
        turns("<image>\nColour?", "Red.", "Size?", "Big 7 </s> tall"),
        VICUNA + " USER: <image>\nColour? ASSISTANT: Red.</s>USER: Size? ASSISTANT: Big 7 </s> tall</s>",
        [" Red.</s>", " Big 7 </s> tall</s>"],
        id="v1-multi-turn-image-end-token-in-answer",
    ),
    pytest.param(
        "llama_2",
        True,
        turns("<image>\nWhat is it?", "A cat 12."),
        "[INST] <<SYS>>\n" + LLAMA_2_SYS + "\n<</SYS>>\n\n<image>\nWhat is it? [/INST] A cat 12. </s>",
        [" A cat 12. </s>"],
        id="llama_2-one-turn-image",
    ),
    pytest.param(
        "llama_2",
        False,
        turns("Hi?", " ünï 5", "Again [/INST] ok?", "Sure [/INST] 9"),
        "[INST] <<SYS>>\n" + LLAMA_2_SYS + "\n<</SYS>>\n\nHi? [/INST]  ünï 5 </s><s>[INST] Again [/INST] ok? [/INST] "
        "Sure [/INST] 9 </s>",
        ["  ünï 5 </s>", " Sure [/INST] 9 </s>"],
        id="llama_2-multi-turn-text-separator-in-question-and-answer",
    ),
    pytest.param(
        "plain",
        True,
        turns("Describe this image.\n<image>", "A red circle, 3 dots.\nA line."),
        "<image>A red circle, 3 dots.\nA line.\n",
        [" A red circle, 3 dots.\nA line.\n"],  # the leading space is the tokenizer's dummy prefix of the chunk
        id="plain-caption",
    ),
    pytest.param(
        "share4v_v0",
        True,
        turns("<image>\nWhat?", "A sea 1."),
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions.###Human: <image>\nWhat?###Assistant: A sea 1.###",
        [" A sea 1.###"],
        id="v0-one-turn-image",
    ),
]


@pytest.mark.parametrize(("conv_mode", "has_image", "conversation", "prompt", "trained"), GOLDEN)
def test_golden_labels(tiny, conv_mode, has_image, conversation, prompt, trained):
    tokenizer = tiny[0]
    data_args = type("DataArgs", (), {"is_multimodal": has_image, "conv_mode": conv_mode})()
    sources = preprocess_multimodal([conversation], data_args)
    out = preprocess(sources, tokenizer, has_image=has_image, conv_mode=conv_mode)
    input_ids, labels = out["input_ids"][0].tolist(), out["labels"][0].tolist()
    assert out["input_ids"].shape == out["labels"].shape == (1, len(input_ids))
    expected_ids = tokenizer_image_token(prompt, tokenizer) if has_image else tokenizer(prompt).input_ids
    assert input_ids == expected_ids
    assert input_ids.count(IMAGE_TOKEN_INDEX) == (1 if has_image else 0)
    assert trained_runs(tokenizer, input_ids, labels) == trained
    assert labels[0] == IGNORE_INDEX  # BOS


def test_plain_takes_the_image_only(tiny):
    """The caption prompt is dropped: [BOS, image, caption..., \\n] with only BOS and the image masked."""
    tokenizer = tiny[0]
    out = preprocess([turns("<image>\nDescribe it.", "Blue sky.")], tokenizer, has_image=True, conv_mode="plain")
    ids, labels = out["input_ids"][0].tolist(), out["labels"][0].tolist()
    assert ids[:2] == [tokenizer.bos_token_id, IMAGE_TOKEN_INDEX]
    assert labels[:2] == [IGNORE_INDEX, IGNORE_INDEX] and labels[2:] == ids[2:]


def test_no_image_keeps_the_marker_as_text(tiny):
    out = preprocess([turns("what is <image>?", "a word")], tiny[0], has_image=False)
    assert IMAGE_TOKEN_INDEX not in out["input_ids"][0].tolist()


def test_preprocess_multimodal_moves_markers_first():
    args = type("DataArgs", (), {"is_multimodal": True, "conv_mode": "vicuna_v1", "mm_use_im_start_end": False})()
    sources = preprocess_multimodal([turns("Look: <image> here", "ok")], args)
    assert sources[0][0]["value"] == "<image>\nLook:  here"
    args.conv_mode = "v1_mmtag"
    assert preprocess_multimodal([turns("<image> x", "ok")], args)[0][0]["value"] == "<Image><image></Image>\nx"
    args.conv_mode, args.mm_use_im_start_end = "vicuna_v1", True
    assert preprocess_multimodal([turns("<image> x", "ok")], args)[0][0]["value"] == "<im_start><image><im_end>\nx"


@pytest.mark.parametrize(
    ("conversation", "message"),
    [
        (turns("q", "a", "q2"), "ends with a human turn"),
        ([{"from": "human", "value": "q"}, {"from": "human", "value": "q2"}], "expected 'gpt'"),
        ([{"from": "gpt", "value": "a"}], "no human turn"),
    ],
)
def test_malformed_conversations_are_sample_errors(tiny, conversation, message):
    with pytest.raises(SampleError, match=message):
        preprocess([conversation], tiny[0], conv_mode="vicuna_v1")


def test_plain_takes_one_round_and_text_only_captions(tiny):
    tokenizer = tiny[0]
    with pytest.raises(SampleError, match="one \\(image, caption\\) pair, not 2 rounds"):
        preprocess([turns("<image>\nq", "a", "q2", "b")], tokenizer, has_image=True, conv_mode="plain")
    out = preprocess([turns("Describe.", "Blue sky.")], tokenizer, has_image=False, conv_mode="plain")
    ids, labels = out["input_ids"][0].tolist(), out["labels"][0].tolist()
    assert ids == tokenizer("Blue sky.\n").input_ids and labels[1:] == ids[1:]  # all but BOS is the caption


def test_empty_turns_are_sample_errors(tiny):
    with pytest.raises(SampleError, match="turn 1 \\(gpt\\) is empty"):
        preprocess([turns("q", "  ")], tiny[0], conv_mode="vicuna_v1")


def test_leading_gpt_turn_is_dropped(tiny):
    tokenizer = tiny[0]
    with_lead = preprocess([[{"from": "gpt", "value": "x"}, *turns("q", "a")]], tokenizer, conv_mode="vicuna_v1")
    without = preprocess([turns("q", "a")], tokenizer, conv_mode="vicuna_v1")
    assert torch.equal(with_lead["input_ids"], without["input_ids"])


class _NoOffsets:
    """A tokenizer whose offsets are all empty: no answer can be located."""

    def __init__(self, tokenizer):
        self.tokenizer, self.bos_token_id = tokenizer, tokenizer.bos_token_id

    def __call__(self, text, return_offsets_mapping=False):
        encoding = self.tokenizer(text, return_offsets_mapping=True)
        return {"input_ids": encoding["input_ids"], "offset_mapping": [(0, 0)] * len(encoding["input_ids"])}


def test_unlocatable_answer_is_an_error_not_a_silent_full_mask(tiny):
    with pytest.raises(SampleError, match="cannot locate"):
        tokenize_segments([("USER: q ASSISTANT:", False), (" a</s>", True)], _NoOffsets(tiny[0]))


def test_version_maps_to_templates():
    assert conv_mode_for_version("v1") == "v1"
    assert conv_mode_for_version("plain") == "plain"
    assert conv_mode_for_version("v0.5") == "vicuna_v1"
    with pytest.raises(ValueError, match="known templates"):
        conv_mode_for_version("mpt")
