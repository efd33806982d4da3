"""`share4v.inference.fp8_cache` and `Share4VEngine(kv_cache_dtype="fp8")`: keys and values stored as e4m3 bytes;
the fused step with them computes what transformers' Llama computes over a cache holding the same rounded values
(fp32, grouped and plain heads, left padding); the engine's loops, fixed and continuous batches, decode over such a
cache. The attention kernel that reads them: tests/inference/test_cache_attention.py."""

import argparse

import pytest
import torch
from transformers import StaticCache

from share4v.inference import fp8_cache
from share4v.inference.cli_args import add_model_args, engine_from_args
from share4v.inference.continuous import Seat, decode_continuously
from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.inference.fused_llama import FusedLlama
from share4v.model.builder import load_pretrained_model
from tests.helpers import random_image
from tests.inference.test_fused_llama import EAGER, left_padded, one_step_inputs, text_model


def rounded(x: torch.Tensor) -> torch.Tensor:
    return fp8_cache.from_bytes(fp8_cache.to_bytes(x), x.dtype)


class RoundingCache(StaticCache):
    """A static cache that stores what it is given rounded to e4m3 (kept in the model's dtype): the reference."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return super().update(rounded(key_states), rounded(value_states), layer_idx, *args, **kwargs)


def test_bytes_round_to_e4m3_and_saturate():
    x = torch.tensor([0.0, 1.0, -1.0, 0.3, 1000.0, -1e6, 1e-3, 447.0])
    stored = fp8_cache.to_bytes(x)
    assert stored.dtype == torch.uint8 and stored.shape == x.shape
    back = fp8_cache.from_bytes(stored, torch.float32)
    inside = x.abs() <= fp8_cache.FP8_MAX
    assert torch.equal(back[inside], x[inside].to(torch.float8_e4m3fn).float())
    assert back[3] != 0.3 and abs(back[3] - 0.3) < 0.3 / 16  # rounded to 3 mantissa bits
    assert back[4] == 448 and back[5] == -448  # saturated, not NaN


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_the_fp8_step_computes_the_models_step_over_rounded_keys_and_values(kv_heads, padded):
    """After the prompt (attended unrounded, written rounded), one step: transformers' own forward over a cache that
    holds the prompt's keys and values rounded and rounds the new ones is the reference."""
    model = text_model(kv_heads)
    embeds, mask = left_padded(model, padded)
    prompt = mask.shape[1]
    positions, step_mask, tokens, at = one_step_inputs(mask)
    with torch.inference_mode():
        reference = RoundingCache(config=model.config, max_cache_len=prompt + 4)
        plain = StaticCache(config=model.config, max_cache_len=prompt + 4)
        expected_first = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                               cache_position=torch.arange(prompt), past_key_values=plain).logits[:, -1]  # fmt: skip
        for ours, theirs in zip(reference.layers, plain.layers, strict=True):  # the prompt's, rounded
            ours.lazy_initialization(theirs.keys, theirs.values)
            ours.keys.copy_(rounded(theirs.keys))
            ours.values.copy_(rounded(theirs.values))
            ours.cumulative_length.fill_(prompt)
        expected = model(input_ids=tokens, attention_mask=step_mask, position_ids=positions[:, -1:] + 1,
                         cache_position=at, past_key_values=reference, use_cache=True).logits[:, -1]  # fmt: skip

        fused, cache = FusedLlama.of(model), StaticCache(config=model.config, max_cache_len=prompt + 4)
        first = fused.prompt_logits(embeds, positions, mask, cache, kv_fp8=True)
        torch.testing.assert_close(first, expected_first, rtol=1e-5, atol=1e-5)  # the prompt attends unrounded
        written = mask.bool()
        for layer, theirs in zip(cache.layers, plain.layers, strict=True):
            assert layer.keys.dtype == torch.uint8
            for stored, expected_values in ((layer.keys, theirs.keys), (layer.values, theirs.values)):
                slots = fp8_cache.from_bytes(stored, torch.float32)[:, :, :prompt].transpose(1, 2)
                torch.testing.assert_close(
                    slots[written], rounded(expected_values[:, :, :prompt].transpose(1, 2))[written]
                )
        logits = fused.logits(tokens, positions[:, -1:] + 1, at, step_mask, cache, kv_fp8=True)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # and the rounding is real: the unrounded step differs
        unrounded = model(input_ids=tokens, attention_mask=step_mask, position_ids=positions[:, -1:] + 1,
                          cache_position=at, past_key_values=plain, use_cache=True).logits[:, -1]  # fmt: skip
    assert not torch.allclose(logits, unrounded, rtol=1e-5, atol=1e-5)


def test_the_engine_decodes_over_an_fp8_cache(tiny_ckpt):
    tokenizer, model, processor, context = load_pretrained_model(str(tiny_ckpt), None, "fp8", device="cpu")
    chats = [Chat.single("What is shown?", [random_image(1)]), Chat.single("Tell me a story about the sea."),
             Chat.single("Describe it.", [random_image(3, (30, 90))])]  # fmt: skip
    params = GenerationParams(temperature=0, max_new_tokens=8)
    default = Share4VEngine(tokenizer, model, processor, context, compile_decode=EAGER)
    fp8 = Share4VEngine(tokenizer, model, processor, context, compile_decode=EAGER, kv_cache_dtype="fp8")
    expected = default.complete(chats, params)
    answers = fp8.complete(chats, params)
    assert fp8._cache.layers[0].keys.dtype == torch.uint8
    assert fp8._greedy_step is not default._greedy_step and fp8._greedy_step.kv_fp8
    # the first token comes from the prompt pass, which attends unrounded; later ones may part
    assert [a.token_ids[0] for a in answers] == [e.token_ids[0] for e in expected]
    assert all(a.finish_reason == "length" and len(a.token_ids) == 8 for a in answers)


def test_requests_join_a_continuous_batch_over_an_fp8_cache_and_answer_as_alone(tiny):
    """Two seats start; when the short one ends a waiting request takes its row (its keys and values copied in as
    bytes) while the other decodes; every answer is the one the fp8 engine gives it alone."""
    engine = Share4VEngine(*tiny, compile_decode=EAGER, kv_cache_dtype="fp8")
    chats = [Chat.single("What is here?", [random_image(3)]), Chat.single("Count."), Chat.single("Tell me a story.")]
    budgets = [9, 2, 4]
    expected = [engine.complete([chat], GenerationParams(temperature=0, max_new_tokens=budget))[0].token_ids
                for chat, budget in zip(chats, budgets, strict=True)]  # fmt: skip
    requests = [engine.encode(chat) for chat in chats]
    end, answers, joined = engine.tokenizer.eos_token_id, {}, []
    seats = [Seat(request.prompt_tokens, budget, end,
                  lambda tokens, index=index: answers.__setitem__(index, [t for t in tokens if t != end]),
                  request=request)
             for index, (request, budget) in enumerate(zip(requests, budgets, strict=True))]  # fmt: skip
    waiting = [seats[2]]

    def take(free: int, written: int, left: int) -> list[Seat]:
        fitting = [seat for seat in waiting if seat.prompt_len <= written and seat.budget - 1 <= left][:free]
        waiting[:] = [seat for seat in waiting if seat not in fitting]
        joined.extend(fitting)
        return fitting

    def embed(batch):
        return engine._prompt_embeddings(engine.collate([seat.request for seat in batch]))

    engine._make_greedy_step()
    with torch.inference_mode():
        cache = engine._static_cache(2, max(request.prompt_tokens for request in requests) + 64)
        decode_continuously(engine._greedy_step, cache, engine._cache_shape[1], seats[:2], embed, take)
    assert joined == [seats[2]] and cache.layers[0].keys.dtype == torch.uint8
    assert [answers[index] for index in range(3)] == expected


def test_an_fp8_cache_needs_the_fused_loops(tiny):
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of"):
        Share4VEngine(*tiny, compile_decode=EAGER, kv_cache_dtype="int4")
    with pytest.raises(ValueError, match="fused_projections and fused_prompt"):
        Share4VEngine(*tiny, compile_decode=EAGER, fused_prompt=False, kv_cache_dtype="fp8")
    with pytest.raises(ValueError, match="compiled decoding") as refused:
        Share4VEngine(*tiny, compile_decode=False, kv_cache_dtype="fp8")
    assert "spread over" not in str(refused.value)


def test_the_fp8_refusal_names_the_devices_of_a_spread_model(tiny_ckpt):
    """Compiled decoding is off by default for a model over several devices: the refusal says so and where."""
    tokenizer, model, processor, context_len = load_pretrained_model(str(tiny_ckpt), None, None, device="cpu")
    model.lm_head.to("meta")  # a second device, as a device_map over two GPUs would give
    with pytest.raises(ValueError, match=r"the model is spread over cpu, meta: load it onto one device$"):
        Share4VEngine(tokenizer, model, processor, context_len, kv_cache_dtype="fp8")


def test_the_command_line_flag_reaches_the_engine(tiny_ckpt):
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    base = ["--model-path", str(tiny_ckpt), "--device", "cpu"]
    assert engine_from_args(parser.parse_args(base)).kv_cache_dtype == "auto"  # the model's dtype by default
    fp8 = engine_from_args(parser.parse_args([*base, "--compile-decode", "--kv-cache-dtype", "fp8"]))
    assert fp8.kv_cache_dtype == "fp8" and fp8.kv_fp8
    with pytest.raises(ValueError, match="compiled decoding"):  # on the CPU decoding is not compiled by default
        engine_from_args(parser.parse_args([*base, "--kv-cache-dtype", "fp8"]))


def test_batches_that_generate_decodes_keep_the_models_dtype_in_its_own_cache(tiny_ckpt):
    """A generation config the engine's loops do not serve (a repetition penalty) sends the batch through
    `generate`, which cannot read e4m3 bytes: it decodes over its own cache, as without the fp8 option."""
    tokenizer, model, processor, context = load_pretrained_model(str(tiny_ckpt), None, "fp8", device="cpu")
    model.generation_config.repetition_penalty = 1.3
    chats = [Chat.single("What is shown?", [random_image(1)]), Chat.single("Tell me a story about the sea.")]
    params = GenerationParams(temperature=0, max_new_tokens=6)
    fp8 = Share4VEngine(tokenizer, model, processor, context, compile_decode=EAGER, kv_cache_dtype="fp8")
    default = Share4VEngine(tokenizer, model, processor, context, compile_decode=EAGER)
    assert [a.token_ids for a in fp8.complete(chats, params)] == [a.token_ids for a in default.complete(chats, params)]
    assert fp8._cache is None and fp8._greedy_step is None  # neither the static cache nor the loop's step made
