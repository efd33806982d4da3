"""The engine's fast decoding (a static KV cache and a compiled decode step) answers exactly like the dynamic-cache
path on the tiny fp32 model: batches mixing text-only, one-image and two-image chats, rows ending at different steps,
batch equal to single, streaming, the cache reused across calls — both on the fast greedy loop (`fast_greedy`,
stopping on the end-of-sequence token, or on a stop string in text) and through `generate` with the compiled step
(a repetition penalty, which the loop leaves to generate). Compiled with inductor on the CPU, as
`compile_decode=True` asks."""

import copy
import threading

import pytest
import torch
from transformers import CompileConfig

import share4v.inference.engine as engine_module
from share4v.inference.engine import (
    _CACHE_KWARG,
    CACHE_BUCKET,
    Chat,
    GenerationParams,
    Share4VEngine,
    _cuda_graph_thread_state,
)
from share4v.inference.fast_greedy import GreedyStep
from share4v.mm_utils import KeywordsStoppingCriteria
from share4v.model.builder import load_pretrained_model
from tests.helpers import random_image

GREEDY = GenerationParams(temperature=0, max_new_tokens=12)


def chats():
    return [
        Chat.single("What is shown?", [random_image(1)]),
        Chat.single("Tell me a long story about the sea, please."),
        Chat(["<image> and <image>: which is brighter?", "The first.", "Why?"], [random_image(5), random_image(6)]),
        Chat.single("Describe it.", [random_image(3, (30, 90))]),
    ]


@pytest.fixture(scope="module")
def eos_tokenizer(tiny):
    """The tiny tokenizer with an end-of-sequence token that the tiny model writes at different steps in
    different rows (it never writes `</s>` itself), so rows of one batch stop at different steps."""
    tokenizer = tiny[0]
    rows = [c.token_ids for c in Share4VEngine(*tiny, compile_decode=False).complete(chats(), GREEDY)]
    first_steps = {}
    for token in {t for row in rows for t in row}:
        first_steps[token] = {row.index(token) if token in row else None for row in rows}
    token = max(first_steps, key=lambda t: (len(first_steps[t] - {None}), None in first_steps[t]))
    assert len(first_steps[token] - {None}) >= 2, "no token ends two rows at different steps"
    copied = copy.deepcopy(tokenizer)
    copied.eos_token = copied.convert_ids_to_tokens(token)
    return copied


def stop_on_eos(engine: Share4VEngine) -> Share4VEngine:
    """`engine` stopping on its tokenizer's end-of-sequence id alone, as with the released templates, whose stop
    string is that token (the tiny model never writes `</s>`; `eos_tokenizer` names a token it does write)."""
    engine._stopping_criteria = lambda stop_str, stops=(): []
    return engine


@pytest.fixture(scope="module")
def engines(tiny, eos_tokenizer):
    _, model, processor, context_len = tiny
    fast = stop_on_eos(Share4VEngine(eos_tokenizer, model, processor, context_len, compile_decode=True))
    eager = stop_on_eos(Share4VEngine(eos_tokenizer, model, processor, context_len, compile_decode=False))
    return fast, eager


@pytest.mark.parametrize("path", ["fast greedy loop", "fast greedy loop, text stop", "generate, penalty"])
def test_compiled_static_cache_gives_the_dynamic_cache_answers(engines, tiny, eos_tokenizer, path, monkeypatch):
    fast, eager = engines
    if path != "fast greedy loop":  # the template's `</s>` is matched in text (no longer the end-of-sequence token)
        _, model, processor, context_len = tiny
        if path == "generate, penalty":  # a logits processor the loops leave to generate's loop
            monkeypatch.setattr(model.generation_config, "repetition_penalty", 1.3)
        fast = Share4VEngine(eos_tokenizer, model, processor, context_len, compile_decode=True)
        eager = Share4VEngine(eos_tokenizer, model, processor, context_len, compile_decode=False)
    breaks_before = sum(torch._dynamo.utils.counters["graph_break"].values())
    expected = eager.complete(chats(), GREEDY)
    assert len({len(c.token_ids) for c in expected}) >= 2  # rows end at different steps
    assert "stop" in {c.finish_reason for c in expected}
    got = fast.complete(chats(), GREEDY)
    assert [(c.text, c.token_ids, c.finish_reason) for c in got] == [
        (c.text, c.token_ids, c.finish_reason) for c in expected
    ]
    assert fast._cache_shape == (4, CACHE_BUCKET)  # the prompts + 12 tokens fit the first bucket
    if path.startswith("fast greedy loop"):
        assert fast._greedy_step is not None
    else:
        assert fast._greedy_step is None and hasattr(fast.model, "_compiled_call")  # generate() compiled the step
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == breaks_before  # one graph, no breaks
    cache = fast._cache
    again = fast.complete(chats(), GREEDY)  # the same cache, reset: same answers
    assert fast._cache is cache and [c.token_ids for c in again] == [c.token_ids for c in got]
    fast.release_cache()  # let go: the next batch allocates a new one and answers the same
    assert fast._cache is None
    assert [c.token_ids for c in fast.complete(chats(), GREEDY)] == [c.token_ids for c in got]
    assert fast._cache is not None and fast._cache is not cache and fast._cache_shape == (4, CACHE_BUCKET)


def test_compiled_batch_equals_single_and_streams_join(engines, tiny):
    fast, eager = engines
    together = fast.generate(chats(), GREEDY)
    alone = [fast.generate([chat], GREEDY)[0] for chat in chats()]
    assert together == alone == eager.generate(chats(), GREEDY)
    assert fast.generate(chats()[:3], GREEDY) == together[:3]  # a third batch size: the graph with a dynamic batch
    streaming = Share4VEngine(*tiny, compile_decode=True)  # the real </s>: a stream leaves out the end token
    chat = chats()[0]
    streamed = "".join(streaming.stream(chat, GREEDY))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    plain = Share4VEngine(*tiny, compile_decode=False)
    assert streamed == streaming.generate([chat], GREEDY)[0] == plain.generate([chat], GREEDY)[0]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # the batch-1 graph serves streams too
    assert streaming._greedy_step is GreedyStep.for_model(
        streaming.model, streaming._compile_config(), streaming.fused_projections
    )


def test_cache_length_is_bucketed_and_reused(tiny):
    engine = Share4VEngine(*tiny, compile_decode=True)
    first = engine._static_cache(3, 300)
    assert engine._cache_shape == (3, 2 * CACHE_BUCKET)
    assert engine._static_cache(3, 2 * CACHE_BUCKET) is first  # another prompt length, the same bucket
    assert engine._static_cache(3, 2 * CACHE_BUCKET + 1) is not first
    assert engine._cache_shape == (3, 3 * CACHE_BUCKET)
    engine._static_cache(2, 100)
    assert engine._cache_shape == (2, CACHE_BUCKET)  # another batch size: another cache
    engine._static_cache(1, engine.max_positions - 5)
    assert engine._cache_shape == (1, engine.max_positions)  # never past the model's positions


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_cache_is_allocated_as_its_batch_starts_before_any_activation(tiny_ckpt, dtype, monkeypatch):
    """Keys and values allocated on the decoding thread before the batch's prompt embeddings, not at their first
    write inside the prompt pass (where they fragmented the memory that the pass's activations freed), in the
    dtype the model writes them in."""
    loaded = load_pretrained_model(str(tiny_ckpt), None, "weights", device="cpu", dtype=dtype)
    tokenizer, model, processor, context_len = loaded
    assert model.dtype == dtype
    engine = Share4VEngine(tokenizer, model, processor, context_len, compile_decode=CompileConfig(backend="eager"))
    allocated = []
    embeddings = engine._prompt_embeddings

    def prompt_embeddings(batch):
        allocated.append([layer.is_initialized for layer in engine._cache.layers])
        return embeddings(batch)

    monkeypatch.setattr(engine, "_prompt_embeddings", prompt_embeddings)
    answers = engine.complete(chats()[:3], GREEDY)
    assert all(answer.error is None and answer.token_ids for answer in answers)
    text = model.config.get_text_config(decoder=True)
    assert allocated == [[True] * text.num_hidden_layers]
    for layer in engine._cache.layers:
        for tensor in (layer.keys, layer.values):
            assert tensor.shape == (3, text.num_key_value_heads, CACHE_BUCKET, text.head_dim)
            assert tensor.dtype == dtype and tensor.device.type == "cpu"


def test_when_the_static_cache_is_used(tiny, monkeypatch):
    batch = Share4VEngine(*tiny).prepare([Chat.single("hi", [random_image(0)])])
    assert _CACHE_KWARG not in Share4VEngine(*tiny)._generate_kwargs(batch, GREEDY)  # CPU: off by default
    # a model where the engine compiles by default (one CUDA device, not quantized): on unless asked off
    monkeypatch.setattr(engine_module, "_compiles_by_default", lambda model: True)
    assert Share4VEngine(*tiny).compile_decode and not Share4VEngine(*tiny, compile_decode=False).compile_decode
    monkeypatch.undo()
    fast = Share4VEngine(*tiny, compile_decode=CompileConfig(backend="eager"))
    kwargs = fast._generate_kwargs(batch, GREEDY)
    assert kwargs[_CACHE_KWARG] is fast._cache and kwargs["generation_config"].compile_config.backend == "eager"
    beams = GenerationParams(temperature=0, num_beams=2, max_new_tokens=4)
    assert _CACHE_KWARG not in fast._generate_kwargs(batch, beams)  # beam search keeps the dynamic cache
    monkeypatch.setattr(fast, "_cache_fits", lambda *shape: False)
    fast._cache_shape = None
    assert _CACHE_KWARG not in fast._generate_kwargs(batch, GREEDY)  # no room: the dynamic cache


def test_stop_strings_that_are_the_eos_token_are_not_decoded_every_step(tiny):
    engine = Share4VEngine(*tiny)
    assert engine._stopping_criteria("</s>") == []  # vicuna_v1, llama_2: generate stops on the id
    assert engine._stopping_criteria("") == []
    (criterion,) = engine._stopping_criteria("###")  # v0: a text check
    assert isinstance(criterion, KeywordsStoppingCriteria)


def test_older_torch_gets_cuda_graph_state_in_the_decoding_thread(monkeypatch):
    from torch._inductor import cudagraph_trees

    monkeypatch.delattr(cudagraph_trees, "_initialize_tls", raising=False)  # as torch 2.11: no lazy set-up
    seen = []

    def decoding_thread():
        before = hasattr(cudagraph_trees.local, "tree_manager_locks")
        _cuda_graph_thread_state()
        seen.append((before, isinstance(cudagraph_trees.local.tree_manager_containers, dict)))

    thread = threading.Thread(target=decoding_thread)
    thread.start()
    thread.join()
    assert seen == [(False, True)]
