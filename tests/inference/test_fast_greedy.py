"""`fast_greedy.greedy_decode` writes what transformers' `generate` writes for greedy decoding (tiny fp32 model,
left-padded batches with images, rows ending at different steps), whatever the host's look-behind, and stops the
rows its caller asks it to stop."""

import copy
import gc
import weakref

import pytest
import torch
from transformers import CompileConfig, StaticCache

from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.inference.fast_greedy import GreedyStep, greedy_decode
from tests.helpers import random_image

NEW_TOKENS = 10
PAD = 0


def reference(model, embeds, mask, eos: int | None) -> torch.Tensor:
    with torch.inference_mode():
        return model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                              eos_token_id=eos, pad_token_id=PAD)  # fmt: skip


def fast(model, embeds, mask, eos: int | None, **kwargs) -> torch.Tensor:
    step = GreedyStep.for_model(model, CompileConfig(backend="eager"))
    cache_len = mask.shape[1] + NEW_TOKENS + 3
    with torch.inference_mode():
        cache = StaticCache(config=model.config, max_cache_len=cache_len)
        return greedy_decode(step, cache, cache_len, embeds, mask, NEW_TOKENS, eos, PAD, **kwargs)


def ending_token(model, embeds, mask) -> tuple[int, list[int]]:
    """A token that two or more rows write, first at different steps, and those rows: rows end at different steps."""
    rows = reference(model, embeds, mask, eos=None).tolist()
    candidates = []
    for token in {t for row in rows for t in row} - {PAD}:
        writers = [i for i, row in enumerate(rows) if token in row]
        if len({rows[i].index(token) for i in writers}) > 1:
            candidates.append((len(writers), token, writers))
    assert candidates, "no token that two rows write first at different steps"
    _, token, writers = max(candidates)
    return token, writers


@pytest.mark.parametrize("lookbehind", [0, 2])
def test_greedy_decode_writes_what_generate_writes(prompt, lookbehind):
    model, embeds, mask = prompt
    assert torch.equal(fast(model, embeds, mask, None, lookbehind=lookbehind), reference(model, embeds, mask, None))
    eos, writers = ending_token(model, embeds, mask)
    expected = reference(model, embeds, mask, eos)
    assert (expected == PAD).any()  # a row that ended wrote padding while others went on
    assert torch.equal(fast(model, embeds, mask, eos, lookbehind=lookbehind), expected)
    embeds, mask = embeds[writers], mask[writers]  # every row ends: generate stops at the last row's end
    expected = reference(model, embeds, mask, eos)
    assert expected.shape[1] < NEW_TOKENS
    assert torch.equal(fast(model, embeds, mask, eos, lookbehind=lookbehind), expected)  # steps queued past it: gone


def test_rows_the_caller_stops_write_padding_and_the_others_go_on(prompt):
    model, embeds, mask = prompt
    seen: list[list[int]] = []

    def stop_row_0_after_two_steps(tokens: list[int]) -> list[int]:
        seen.append(tokens)
        return [0] if len(seen) == 2 else []

    full = fast(model, embeds, mask, None)
    got = fast(model, embeds, mask, None, on_tokens=stop_row_0_after_two_steps)
    assert torch.equal(got[0, :2], full[0, :2]) and (got[0, 2:] == PAD).all()
    assert torch.equal(got[1:], full[1:])
    assert seen == got.T.tolist()  # every step's tokens, in order


def test_a_cache_without_room_is_checked_once_and_the_batch_still_answers(tiny, monkeypatch):
    engine = Share4VEngine(*tiny, compile_decode=CompileConfig(backend="eager"))  # </s> stops: the loop is tried
    checks = []
    monkeypatch.setattr(engine, "_cache_fits", lambda *shape: checks.append(shape) or False)
    chats = [Chat.single("What is shown?", [random_image(1)]), Chat.single("Hello there.")]
    params = GenerationParams(temperature=0, max_new_tokens=6)
    assert engine.generate(chats, params) == Share4VEngine(*tiny, compile_decode=False).generate(chats, params)
    assert len(checks) == 1 and engine._greedy_step is None  # one check (one warning); the dynamic cache served
    engine.generate(chats, params)
    assert len(checks) == 2  # the next batch asks again: memory may have been freed


def test_the_compiled_step_lives_and_dies_with_its_model(tiny_ckpt):
    from share4v.model.builder import load_pretrained_model

    _, model, _, _ = load_pretrained_model(str(tiny_ckpt), None, "share4v-tiny", device="cpu")
    config = CompileConfig(backend="eager")
    step = GreedyStep.for_model(model, config)
    assert GreedyStep.for_model(model, config) is step  # engines over one model share it
    assert GreedyStep.for_model(model, CompileConfig(backend="aot_eager")) is not step
    gone = weakref.ref(model)
    del model, step
    gc.collect()
    assert gone() is None


def test_a_copy_of_a_model_decodes_with_its_own_weights(tiny_ckpt):
    """A deep copy of a model carries the steps kept on it: each must be the copy's, not bound to the original's
    weights (a copy cast to another dtype, or changed, would otherwise decode with the original's)."""
    from share4v.model.builder import load_pretrained_model

    tokenizer, model, processor, context_len = load_pretrained_model(str(tiny_ckpt), None, "tiny", device="cpu")
    chat = [Chat.single("Tell me a story.")]
    params = GenerationParams(temperature=0, max_new_tokens=6)
    original = Share4VEngine(tokenizer, model, processor, context_len, compile_decode=CompileConfig(backend="eager"))
    before = original.complete(chat, params)[0].token_ids  # the original's steps are made and kept on it
    copied = copy.deepcopy(model)
    with torch.no_grad():
        copied.lm_head.weight.neg_()  # the copy answers otherwise
    fast = Share4VEngine(tokenizer, copied, processor, context_len, compile_decode=CompileConfig(backend="eager"))
    plain = Share4VEngine(tokenizer, copied, processor, context_len, compile_decode=False)
    expected = plain.complete(chat, params)[0].token_ids
    assert expected != before
    assert fast.complete(chat, params)[0].token_ids == expected
    assert original.complete(chat, params)[0].token_ids == before
