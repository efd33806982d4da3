"""Sampled decoding on the engine's own loop (`fast_sampling`): from the same random state it draws the tokens
`generate` draws (tiny fp32 model, a left-padded batch with images), with generate's warpers and its default top-k,
and batches whose generation config asks for other warpers go to `generate`."""

import argparse

import pytest
import torch
from transformers import CompileConfig, StaticCache

from share4v.inference.cli_args import add_model_args, engine_from_args
from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.inference.fast_greedy import GreedyStep, greedy_decode
from share4v.inference.sampling import GENERATE_DEFAULT_TOP_K, Sampling
from tests.helpers import random_image

NEW_TOKENS = 12
PAD = 0
EAGER = CompileConfig(backend="eager")


@pytest.fixture(scope="module")
def prompt(tiny):
    """Prompt embeddings and mask of a left-padded batch (two images, one text-only row), and the engine's model."""
    engine = Share4VEngine(*tiny, compile_decode=False)
    chats = [
        Chat.single("What is shown?", [random_image(1)]),
        Chat.single("Tell me a long story about the sea, please."),
        Chat.single("Describe it.", [random_image(3, (30, 90))]),
    ]
    with torch.inference_mode():
        embeds, mask = engine._prompt_embeddings(engine.prepare(chats))
    return engine.model, embeds, mask


def generated(model, embeds, mask, seed: int, **settings) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.inference_mode():
        return model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=True,
                              eos_token_id=None, pad_token_id=PAD, **settings)  # fmt: skip


def looped(model, embeds, mask, seed: int, sampling: Sampling) -> torch.Tensor:
    step = GreedyStep.for_model(model, EAGER)  # the model's own forward: generate's logits, bit for bit
    cache_len = mask.shape[1] + NEW_TOKENS
    torch.manual_seed(seed)
    with torch.inference_mode():
        cache = StaticCache(config=model.config, max_cache_len=cache_len)
        return greedy_decode(step, cache, cache_len, embeds, mask, NEW_TOKENS, None, PAD, sampling=sampling)


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.7, 20, 0.9), (1.0, 0, 0.5), (1.3, 5, 1.0)])
def test_the_loop_draws_what_generate_draws(prompt, temperature, top_k, top_p):
    model, embeds, mask = prompt
    expected = generated(model, embeds, mask, 7, temperature=temperature, top_k=top_k, top_p=top_p)
    assert len({tuple(row) for row in expected.tolist()}) == 3  # rows differ: the draws are not all alike
    assert torch.equal(looped(model, embeds, mask, 7, Sampling(temperature, top_k, top_p)), expected)
    # another random state, other tokens: the equality above is the draws', not a fixed answer's
    assert not torch.equal(looped(model, embeds, mask, 8, Sampling(temperature, top_k, top_p)), expected)


def test_an_unset_top_k_is_generates_default(prompt):
    model, embeds, mask = prompt
    assert model.config.vocab_size > GENERATE_DEFAULT_TOP_K  # the default cuts something here
    sampling = Sampling.of(model.generation_config, 1.5, None)
    assert sampling == Sampling(1.5, GENERATE_DEFAULT_TOP_K, 1.0)
    assert torch.equal(looped(model, embeds, mask, 3, sampling), generated(model, embeds, mask, 3, temperature=1.5))


def test_other_warpers_are_left_to_generate(tiny):
    config = tiny[1].generation_config
    for name, value in [("min_p", 0.1), ("typical_p", 0.9), ("epsilon_cutoff", 3e-4), ("renormalize_logits", True)]:
        changed = config.__class__.from_dict({**config.to_dict(), name: value})
        assert Sampling.of(changed, 0.7, 0.9) is None, name
    assert Sampling.of(config, 0.7, 0.9) is not None


def test_the_engine_samples_on_its_loop_as_generate_does(tiny, monkeypatch):
    """With `fast_sampling`, a sampled batch runs the engine's loop (generate is never called) and answers as the
    engine's `generate` path does from the same random state (fused projections: the same draws to rounding)."""
    chats = [Chat.single("What is shown?", [random_image(1)]), Chat.single("Tell me about the sea.")]
    params = GenerationParams(temperature=0.7, top_p=0.9, max_new_tokens=NEW_TOKENS)
    slow = Share4VEngine(*tiny, compile_decode=EAGER)
    torch.manual_seed(11)
    expected = [completion.token_ids for completion in slow.complete(chats, params)]

    fast = Share4VEngine(*tiny, compile_decode=EAGER, fast_sampling=True)

    def no_generate(*args, **kwargs):
        raise AssertionError("generate ran")

    monkeypatch.setattr(fast.model, "generate", no_generate)
    torch.manual_seed(11)
    assert [completion.token_ids for completion in fast.complete(chats, params)] == expected
    # a greedy batch still takes the greedy loop; beam search still goes to generate
    fast.complete(chats, GenerationParams(temperature=0, max_new_tokens=4))
    with pytest.raises(AssertionError, match="generate ran"):
        fast.complete(chats, GenerationParams(temperature=0.7, num_beams=2, max_new_tokens=4))


def test_the_command_line_flag_reaches_the_engine(tiny_ckpt):
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    base = ["--model-path", str(tiny_ckpt), "--device", "cpu"]
    assert engine_from_args(parser.parse_args([*base, "--fast-sampling"])).fast_sampling is True
    assert engine_from_args(parser.parse_args(base)).fast_sampling is False
