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


def generated(model, embeds, mask, seed: int, eos: int | None = None, **settings) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.inference_mode():
        return model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=True,
                              eos_token_id=eos, pad_token_id=PAD, **settings)  # fmt: skip


def looped(model, embeds, mask, seed: int, sampling: Sampling, eos: int | None = None, **kwargs) -> torch.Tensor:
    step = GreedyStep.for_model(model, EAGER)  # the model's own forward: generate's logits, bit for bit
    cache_len = mask.shape[1] + NEW_TOKENS
    torch.manual_seed(seed)
    with torch.inference_mode():
        cache = StaticCache(config=model.config, max_cache_len=cache_len)
        return greedy_decode(step, cache, cache_len, embeds, mask, NEW_TOKENS, eos, PAD, sampling=sampling, **kwargs)


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.7, 20, 0.9), (1.0, 0, 0.5), (1.3, 5, 1.0)])
def test_the_loop_draws_what_generate_draws(prompt, temperature, top_k, top_p):
    model, embeds, mask = prompt
    expected = generated(model, embeds, mask, 7, temperature=temperature, top_k=top_k, top_p=top_p)
    assert len({tuple(row) for row in expected.tolist()}) == 3  # rows differ: the draws are not all alike
    assert torch.equal(looped(model, embeds, mask, 7, Sampling(temperature, top_k, top_p)), expected)
    # another random state, other tokens: the equality above is the draws', not a fixed answer's
    assert not torch.equal(looped(model, embeds, mask, 8, Sampling(temperature, top_k, top_p)), expected)


def test_a_row_that_ends_writes_padding_as_generate_does(prompt):
    model, embeds, mask = prompt
    settings = {"temperature": 0.9, "top_k": 0}
    ending = generated(model, embeds, mask, 5, **settings)[0, 3].item()  # row 0's fourth token
    expected = generated(model, embeds, mask, 5, eos=ending, **settings)
    assert (expected[0, 4:] == PAD).all() and expected.shape[1] == NEW_TOKENS  # the other rows went on
    assert torch.equal(looped(model, embeds, mask, 5, Sampling(0.9, 0, 1.0), ending), expected)


@pytest.mark.parametrize("lookbehind", [0, 2])
def test_draws_queued_past_the_end_are_undone(prompt, lookbehind):
    """A batch whose rows all end stops early; steps the host queued past that point drew tokens nobody reads:
    the random state after the batch is the one after generate's, so the next batch draws as after generate."""
    model, embeds, mask = prompt
    embeds, mask, settings = embeds[:1], mask[:1], {"temperature": 0.9, "top_k": 0}
    ending = generated(model, embeds, mask, 5, **settings)[0, 3].item()
    expected = generated(model, embeds, mask, 5, eos=ending, **settings)
    after_generate = torch.rand(4)
    assert expected.shape[1] <= 4 < NEW_TOKENS - lookbehind  # steps were queued past the end
    assert torch.equal(looped(model, embeds, mask, 5, Sampling(0.9, 0, 1.0), ending, lookbehind=lookbehind), expected)
    assert torch.equal(torch.rand(4), after_generate)


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


@pytest.mark.parametrize("top_k", [5, 0])
def test_the_checkpoints_top_k_is_kept(tiny, monkeypatch, top_k):
    chats = [Chat.single("What is shown?", [random_image(1)]), Chat.single("Tell me about the sea.")]
    params = GenerationParams(temperature=1.2, max_new_tokens=NEW_TOKENS)
    monkeypatch.setattr(tiny[1].generation_config, "top_k", top_k)
    answers = []
    for fast_sampling in (False, True):
        torch.manual_seed(2)
        engine = Share4VEngine(*tiny, compile_decode=EAGER, fast_sampling=fast_sampling)
        answers.append([completion.token_ids for completion in engine.complete(chats, params)])
    assert answers[0] == answers[1]


@pytest.mark.parametrize("setting", ["repetition_penalty", "assisted", "sequences"])
def test_batches_the_loop_cannot_sample_as_generate_go_to_generate(tiny, monkeypatch, setting):
    config = tiny[1].generation_config
    if setting == "repetition_penalty":
        monkeypatch.setattr(config, "repetition_penalty", 1.2)
    elif setting == "assisted":
        monkeypatch.setattr(config, "prompt_lookup_num_tokens", 3)
    else:
        monkeypatch.setattr(config, "num_return_sequences", 2)
    engine = Share4VEngine(*tiny, compile_decode=EAGER, fast_sampling=True)
    params = GenerationParams(temperature=0.7, max_new_tokens=4)
    batch = engine.prepare([Chat.single("What is shown?", [random_image(1)])])
    assert engine._fast_greedy(batch, params) is None


def test_the_command_line_flag_reaches_the_engine(tiny_ckpt):
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    base = ["--model-path", str(tiny_ckpt), "--device", "cpu"]
    assert engine_from_args(parser.parse_args(base)).fast_sampling is True  # on by default
    assert engine_from_args(parser.parse_args([*base, "--no-fast-sampling"])).fast_sampling is False
    assert Share4VEngine.from_pretrained(str(tiny_ckpt), device="cpu").fast_sampling is True


def test_whole_number_settings_sample_as_floats(tiny):
    """transformers' temperature warper takes floats only: an integer temperature (JSON's 1 or 2) samples too."""
    params = GenerationParams(temperature=2, top_p=1, max_new_tokens=3)
    assert isinstance(params.temperature, float) and isinstance(params.top_p, float)
    engine = Share4VEngine(*tiny, compile_decode=EAGER, fast_sampling=True)
    torch.manual_seed(0)
    (completion,) = engine.complete([Chat.single("What is shown?", [random_image(1)])], params)
    assert completion.error is None and 1 <= completion.completion_tokens <= 3


def test_each_row_draws_with_its_own_settings():
    """`RowSampling`: greedy rows take the arg-max, rows of one setting are drawn together (in the order of their
    first row), and one setting for every row is that `Sampling` itself (drawn as generate draws a batch)."""
    from share4v.inference.sampling import RowSampling

    warm, flat, narrow = Sampling(0.7, 50, 0.9), Sampling(1.5, 0, 1.0), Sampling(1.0, 0, 1e-6)
    assert RowSampling.of([None, None]) is None and RowSampling.of([warm, warm]) is warm
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(1))
    mixed = RowSampling.of([warm, None, warm, flat])
    torch.manual_seed(5)
    tokens = mixed.draw(logits)[:, 0].tolist()
    torch.manual_seed(5)
    warm_rows, flat_row = warm.draw(logits[[0, 2]])[:, 0].tolist(), flat.draw(logits[[3]])[:, 0].tolist()
    assert tokens == [warm_rows[0], logits[1].argmax().item(), warm_rows[1], flat_row[0]]
    # a top-p that leaves one token draws the arg-max, while a row beside it at temperature 1.5 spreads its draws
    draws = torch.stack([RowSampling.of([narrow, flat]).draw(logits[:2]) for _ in range(20)])[..., 0]
    assert (draws[:, 0] == logits[0].argmax()).all() and len(set(draws[:, 1].tolist())) > 5
