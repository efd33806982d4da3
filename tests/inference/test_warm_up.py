"""`Share4VEngine.warm_up`: after it, batches of other sizes and cache lengths, greedy or sampled, with or without
images, run whole or through the queue, compile nothing more (torch only records their CUDA graphs on a GPU), so a
server's first users do not wait for the compiler; an engine that decodes eagerly has nothing to warm up."""

import torch
from transformers import CompileConfig

from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from tests.helpers import random_image


def test_after_the_warm_up_later_batches_compile_nothing(tiny):
    torch._dynamo.reset()  # earlier tests' graphs count towards the compiled functions' limits
    graphs = []

    def counting(graph, example_inputs, **options):  # a compile: one graph handed to the backend
        graphs.append(graph)
        return graph.forward

    engine = Share4VEngine(*tiny, compile_decode=CompileConfig(backend=counting))
    assert engine.warm_up() == 8
    assert graphs  # the decode steps and the prompt pass compiled
    warmed = len(graphs)
    text, image = Chat.single("Tell me more about it."), Chat.single("What is shown?", [random_image(2)])
    for rows, new_tokens in [(4, 5), (1, 700), (5, 300), (7, 40)]:
        for temperature in (0.0, 0.7):
            params = GenerationParams(temperature=temperature, max_new_tokens=new_tokens)
            answers = engine.complete([text, image] * (rows // 2) + [text] * (rows % 2), params)
            assert len(answers) == rows and all(answer.finish_reason != "error" for answer in answers)
    queued = [engine.submit(engine.encode(chat), GenerationParams(temperature=0, max_new_tokens=9))
              for chat in [text, image, text]]  # fmt: skip
    assert all(future.result(timeout=120).finish_reason != "error" for future in queued)
    assert len(graphs) == warmed


def test_an_eager_engine_has_nothing_to_warm_up(tiny, monkeypatch):
    engine = Share4VEngine(*tiny, compile_decode=False)
    monkeypatch.setattr(engine, "complete", lambda *args: (_ for _ in ()).throw(AssertionError("ran")))
    assert engine.warm_up() == 0
