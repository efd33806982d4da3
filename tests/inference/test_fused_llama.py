"""`fused_llama.FusedLlama`: the greedy step with q/k/v and gate/up as one product each writes `generate`'s tokens
(fp32; grouped or not grouped key/value heads, left padding, images through the engine), re-lays the weights in
place (the modules' weights are views of the fused tensors, nothing added, outputs and training unchanged), lays
them out again when they are replaced, and leaves a model it cannot fuse to the model's own forward."""

import pytest
import torch
from transformers import CompileConfig, StaticCache
from transformers.cache_utils import StaticLayer

from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.inference.fast_greedy import GreedyStep, greedy_decode
from share4v.inference.fused_llama import FusedLlama, _static_slots, prompt_layer
from share4v.model.builder import load_pretrained_model
from share4v.model.language_model.share4v_llama import Share4VConfig, Share4VLlamaForCausalLM
from tests.helpers import random_image

NEW_TOKENS = 10
PAD = 0
EAGER = CompileConfig(backend="eager")  # dynamo's capture without inductor's code generation: seconds on a CPU


def text_model(kv_heads: int, bias: bool = False) -> Share4VLlamaForCausalLM:
    torch.manual_seed(0)
    config = Share4VConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=256, attention_bias=bias, pad_token_id=PAD,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return Share4VLlamaForCausalLM(config).eval()


def left_padded(model, padded: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt embeddings `[3, 9, D]` of three rows of 9, 5 and 2 tokens, left-padded, and their mask (`padded`
    False: three rows of 9 tokens, no padding)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 300, (3, 9), generator=generator)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :4] = mask[2, :7] = 0
    ids = ids.masked_fill(mask == 0, PAD)
    with torch.inference_mode():
        return model.get_input_embeddings()(ids), mask


def decode(model, embeds, mask, step: GreedyStep) -> torch.Tensor:
    cache_len = mask.shape[1] + NEW_TOKENS + 3
    with torch.inference_mode():
        cache = StaticCache(config=model.config, max_cache_len=cache_len)
        return greedy_decode(step, cache, cache_len, embeds, mask, NEW_TOKENS, None, PAD)


def generated(model, embeds, mask) -> torch.Tensor:
    with torch.inference_mode():
        return model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                              eos_token_id=None, pad_token_id=PAD)  # fmt: skip


def one_step_inputs(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For one decode step after `left_padded`'s prompt: its positions `[3, 9]`, the step's mask (the prompt's,
    then 4 free slots), the rows' last tokens `[3, 1]` and the cache position `[1]` they are written at."""
    rows, prompt = mask.shape
    step_mask = torch.ones(rows, prompt + 4, dtype=mask.dtype)
    step_mask[:, :prompt] = mask
    return (mask.cumsum(-1) - 1).clamp(min=0), step_mask, torch.tensor([[5], [6], [7]]), torch.tensor([prompt])


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_the_fused_step_writes_what_generate_writes(kv_heads, monkeypatch):
    model = text_model(kv_heads)
    embeds, mask = left_padded(model)
    expected = generated(model, embeds, mask)
    calls = []
    logits = FusedLlama.logits
    count = torch.compiler.disable(lambda: calls.append(1))  # outside the graph: no guard on the list, no recompile
    monkeypatch.setattr(FusedLlama, "logits", lambda self, *args: count() or logits(self, *args))
    step = GreedyStep.for_model(model, EAGER, fused=True)
    assert torch.equal(decode(model, embeds, mask, step), expected)
    assert step.fused is not None and len(calls) == NEW_TOKENS - 1  # every step after the prompt pass
    assert len(set(expected[:, 0].tolist())) > 1  # the rows differ: the padding and positions were honoured


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_one_fused_step_gives_the_models_logits(kv_heads):
    # after the same prompt pass, one step over the cache: the model's own forward and the fused step
    model = text_model(kv_heads)
    embeds, mask = left_padded(model)
    prompt = mask.shape[1]
    positions, step_mask, tokens, at = one_step_inputs(mask)

    def prefilled() -> StaticCache:
        cache = StaticCache(config=model.config, max_cache_len=prompt + 4)
        model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache_position=torch.arange(prompt),
              past_key_values=cache, use_cache=True)  # fmt: skip
        return cache

    with torch.inference_mode():
        expected = model(input_ids=tokens, attention_mask=step_mask, position_ids=positions[:, -1:] + 1,
                         cache_position=at, past_key_values=prefilled(), use_cache=True).logits[:, -1]  # fmt: skip
        logits = FusedLlama.of(model).logits(tokens, positions[:, -1:] + 1, at, step_mask, prefilled())
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


# the whole batch (27 positions) at once, one row a group, and groups of 1 and 2 rows
# allocated: the cache allocated before the pass, as the engine does, so that the pass writes into its slots itself
# (else `cache.update` writes each layer's keys and values and allocates the cache at its first write)
@pytest.mark.parametrize("allocated", [True, False], ids=["allocated", "lazy"])
@pytest.mark.parametrize("group_positions", [None, 9, 18], ids=["one-group", "rows-alone", "rows-1-2"])
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_the_fused_prompt_pass_gives_the_models_logits_and_cache(kv_heads, padded, group_positions, allocated):
    model = text_model(kv_heads)
    embeds, mask = left_padded(model, padded)  # unpadded: causal attention without a mask
    prompt = mask.shape[1]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ours, theirs = (StaticCache(config=model.config, max_cache_len=prompt + 4) for _ in range(2))
    if allocated:
        ours.early_initialization(3, kv_heads, model.config.head_dim, embeds.dtype, embeds.device)
    updates = []
    ours.update = lambda *args, **kwargs: updates.append(args[2]) or StaticCache.update(ours, *args, **kwargs)
    passes = []

    def layer_pass(*args, **kwargs):
        passes.append(args[4].shape[0])  # the rows it ran over
        return prompt_layer(*args, **kwargs)

    given = embeds.clone()
    with torch.inference_mode():
        expected = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                         cache_position=torch.arange(prompt), past_key_values=theirs).logits[:, -1]  # fmt: skip
        fused = FusedLlama.of(model)
        logits = fused.prompt_logits(embeds, positions, mask, ours, layer_pass, group_positions=group_positions)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert passes == {None: [3], 9: [1, 1, 1], 18: [1, 2]}[group_positions] * 2  # per layer
    assert updates == ([] if allocated else [0, 1])  # an allocated cache's slots are written directly
    assert torch.equal(embeds, given)  # the caller's embeddings are left as they were
    written = mask.bool()  # the cache's padding slots are masked later: only the written ones must agree
    for layer, reference in zip(ours.layers, theirs.layers, strict=True):
        assert int(layer.get_seq_length()) == prompt
        for tensor, expected_tensor in [(layer.keys, reference.keys), (layer.values, reference.values)]:
            assert tensor[:, :, prompt:].abs().sum() == 0 and torch.isfinite(tensor).all()
            slots, expected_slots = (t[:, :, :prompt].transpose(1, 2) for t in (tensor, expected_tensor))
            torch.testing.assert_close(slots[written], expected_slots[written], rtol=1e-5, atol=1e-5)


def _prompt_pass_into(model, cache, group_positions=9, kv_fp8=False) -> tuple[torch.Tensor, list[int]]:
    """The fused prompt pass of `left_padded`'s prompts into `cache`: its logits and the layers `cache.update` wrote."""
    embeds, mask = left_padded(model)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    updates = []
    cache.update = lambda *args, **kwargs: updates.append(args[2]) or type(cache).update(cache, *args, **kwargs)
    with torch.inference_mode():
        logits = FusedLlama.of(model).prompt_logits(
            embeds, positions, mask, cache, group_positions=group_positions, kv_fp8=kv_fp8
        )
    return logits, updates


@pytest.mark.parametrize("group_positions", [None, 9], ids=["one-group", "rows-alone"])
def test_the_prompt_pass_writes_e4m3_bytes_into_an_allocated_cache_as_update_does(group_positions):
    model = text_model(2)
    allocated, lazy = (StaticCache(config=model.config, max_cache_len=13) for _ in range(2))
    allocated.early_initialization(3, 2, model.config.head_dim, torch.uint8, torch.device("cpu"))
    logits, updates = _prompt_pass_into(model, allocated, group_positions, kv_fp8=True)
    expected, lazy_updates = _prompt_pass_into(model, lazy, group_positions, kv_fp8=True)
    assert updates == [] and lazy_updates == [0, 1]
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    for ours, theirs in zip(allocated.layers, lazy.layers, strict=True):
        assert ours.keys.dtype == torch.uint8 and int(ours.get_seq_length()) == int(theirs.get_seq_length()) == 9
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)


# the pass writes into a cache itself only where it is a static cache allocated for exactly this batch: rows,
# at least its positions, the dtype it writes (e4m3 bytes with kv_fp8), its device, no offloading
@pytest.mark.parametrize(
    "allocation, writes_itself",
    [
        ((3, 13, torch.float32), True),
        ((3, 9, torch.float32), True),
        ((2, 13, torch.float32), False),
        ((4, 13, torch.float32), False),
        ((3, 8, torch.float32), False),
        ((3, 13, torch.float64), False),
        (None, False),
        ("offloading", False),
        ("subclass", False),
    ],
    ids=["fits", "exactly", "fewer-rows", "more-rows", "too-short", "other-dtype", "lazy", "offloading", "subclass"],
)
def test_the_pass_writes_only_into_a_static_cache_allocated_for_the_batch(allocation, writes_itself):
    model = text_model(2)
    rows, length, dtype = allocation if isinstance(allocation, tuple) else (3, 13, torch.float32)
    cache = StaticCache(config=model.config, max_cache_len=length)
    if allocation is not None:
        cache.early_initialization(rows, 2, model.config.head_dim, dtype, torch.device("cpu"))
    if allocation == "offloading":
        cache.offloading = True
    if allocation == "subclass":  # another kind of layer may keep other state: not ours to write
        cache.layers[0].__class__ = type("OtherStaticLayer", (StaticLayer,), {})
    assert (_static_slots(cache, 0, 3, 9, torch.float32, torch.device("cpu")) is cache.layers[0]) == writes_itself
    if writes_itself:  # and the bytes it would write with kv_fp8 are not this cache's dtype
        assert _static_slots(cache, 0, 3, 9, torch.uint8, torch.device("cpu")) is None
        assert _static_slots(cache, 0, 3, 9, torch.float32, torch.device("meta")) is None


def test_one_compiled_graph_serves_every_layer_batch_size_and_prompt_length():
    # a graph per layer would exhaust dynamo's limit of recompiles at 32 layers and leave the prompt pass eager
    torch._dynamo.reset()  # every step wraps one function: earlier tests' graphs count towards its limit
    model = text_model(2)
    graphs = []

    def counting(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    step = GreedyStep.for_model(model, CompileConfig(backend=counting), fused=True)
    step.check_weights()
    generator = torch.Generator().manual_seed(3)
    counts = []
    for rows, prompt, padded in [(3, 9, True), (2, 12, True), (4, 5, True), (1, 7, True), (1, 11, True),
                                 (3, 6, False), (2, 8, False), (1, 6, False)]:  # fmt: skip
        ids = torch.randint(3, 300, (rows, prompt), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, :2] = 0 if padded else 1
        with torch.inference_mode():
            cache = StaticCache(config=model.config, max_cache_len=prompt + 2)
            embeds = model.get_input_embeddings()(ids)
            step.prompt(embeds, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache)
        counts.append(len(graphs))
    assert len(model.get_model().layers) == 2
    # batch size 1 gets a graph of its own (torch specializes size 1), and so do prompts without padding (no mask)
    assert counts == [1, 1, 1, 2, 2, 3, 3, 4]
    for graph in graphs:  # only rows and positions are dynamic: inductor's element-wise kernels know the widths
        sizes = {node.name: node.meta["example_value"].shape for node in graph.graph.nodes
                 if node.op == "placeholder" and isinstance(node.meta.get("example_value"), torch.Tensor)}  # fmt: skip
        dynamic = {str(size) for shape in sizes.values() for size in shape if not isinstance(size, int)}
        rows_and_positions = {str(size) for size in sizes["l_hidden_"][:2] if not isinstance(size, int)}
        assert dynamic == rows_and_positions and len(dynamic) == (1 if sizes["l_hidden_"][0] == 1 else 2)


def test_the_weights_are_relaid_in_place_and_compute_what_they_computed(tmp_path):
    model = text_model(2)
    ids = torch.randint(3, 300, (2, 7), generator=torch.Generator().manual_seed(2))
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    fused = FusedLlama.of(model)
    assert FusedLlama.of(model) is fused  # kept on the model
    for layer, relaid in zip(model.get_model().layers, fused.layers, strict=True):
        attn, mlp = layer.self_attn, layer.mlp
        for module, storage in [(attn.q_proj, relaid.qkv), (attn.k_proj, relaid.qkv), (attn.v_proj, relaid.qkv),
                                (mlp.gate_proj, relaid.gate_up), (mlp.up_proj, relaid.gate_up)]:  # fmt: skip
            assert module.weight.untyped_storage().data_ptr() == storage.untyped_storage().data_ptr()
        assert relaid.qkv.shape == (64 + 2 * 32, 64) and relaid.gate_up.shape == (2 * 96, 64)
    assert all(torch.equal(tensor, state[name]) for name, tensor in model.state_dict().items())
    model.save_pretrained(tmp_path)  # views of one tensor save as the separate weights they are
    reloaded = Share4VLlamaForCausalLM.from_pretrained(tmp_path).state_dict()
    assert reloaded.keys() == state.keys() and all(torch.equal(reloaded[name], state[name]) for name in state)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, logits, rtol=0, atol=1e-6)
    # still trainable: the views are the parameters, their gradients arrive, and an update reaches the fused step
    model(input_ids=ids, labels=ids).loss.backward()
    q_proj = model.get_model().layers[0].self_attn.q_proj.weight
    assert q_proj.requires_grad and q_proj.grad is not None and q_proj.grad.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.equal(fused.layers[0].qkv[:64], q_proj) and FusedLlama.of(model) is fused


def test_weights_replaced_after_fusing_are_relaid_before_the_next_decode():
    model = text_model(2)
    embeds, mask = left_padded(model)
    step = GreedyStep.for_model(model, EAGER, fused=True)
    decode(model, embeds, mask, step)
    first = step.fused
    attn = model.get_model().layers[1].self_attn
    attn.v_proj.weight = torch.nn.Parameter(torch.randn_like(attn.v_proj.weight) * 0.5)
    mlp = model.get_model().layers[0].mlp
    mlp.up_proj.weight = torch.nn.Parameter(torch.randn_like(mlp.up_proj.weight) * 0.5)
    expected = generated(model, embeds, mask)
    assert torch.equal(decode(model, embeds, mask, step), expected)
    assert step.fused is not first and torch.equal(step.fused.layers[1].qkv[-32:], attn.v_proj.weight)


def test_a_model_with_projection_biases_decodes_through_its_own_forward():
    model = text_model(4, bias=True)
    assert FusedLlama.of(model) is None
    step = GreedyStep.for_model(model, EAGER, fused=True)
    embeds, mask = left_padded(model)
    assert torch.equal(decode(model, embeds, mask, step), generated(model, embeds, mask))
    assert step.fused is None


def test_a_projection_wrapped_after_fusing_falls_back_to_the_models_forward():
    # a LoRA-like wrapper: the fused step would drop what it adds, so the model's own forward takes over
    class Shifted(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base, self.weight, self.bias = base, base.weight, None

        def forward(self, x):
            return self.base(x) + 0.5

    model = text_model(2)
    embeds, mask = left_padded(model)
    step = GreedyStep.for_model(model, EAGER, fused=True)
    decode(model, embeds, mask, step)
    assert step.fused is not None
    attn = model.get_model().layers[0].self_attn
    attn.k_proj = Shifted(attn.k_proj)
    assert torch.equal(decode(model, embeds, mask, step), generated(model, embeds, mask))
    assert step.fused is None


def test_the_engine_by_default_fuses_and_answers_as_without(tiny_ckpt):
    tokenizer, model, processor, context = load_pretrained_model(str(tiny_ckpt), None, "weights", device="cpu")
    chats = [Chat.single("What is shown?", [random_image(1)]), Chat.single("Tell me a story about the sea."),
             Chat.single("Describe it.", [random_image(3, (30, 90))])]  # fmt: skip
    params = GenerationParams(temperature=0, max_new_tokens=8)
    plain = Share4VEngine(tokenizer, model, processor, context, compile_decode=EAGER, fused_projections=False)
    fused = Share4VEngine(tokenizer, model, processor, context, compile_decode=EAGER)  # fused: the default
    expected = [c.token_ids for c in plain.complete(chats, params)]
    assert [c.token_ids for c in fused.complete(chats, params)] == expected
    assert fused._greedy_step.fused is not None and plain._greedy_step.fused is None
    assert [c.token_ids for c in plain.complete(chats, params)] == expected  # the re-laid weights, unfused


def test_the_prompt_pass_runs_the_fused_layers_unless_told_not_to(tiny_ckpt, monkeypatch):
    tokenizer, model, processor, context = load_pretrained_model(str(tiny_ckpt), None, "weights", device="cpu")
    chats = [Chat.single("What is shown?", [random_image(1)]), Chat.single("Tell me a story about the sea.")]
    params = GenerationParams(temperature=0, max_new_tokens=6)
    passes = []
    prompt_logits = FusedLlama.prompt_logits
    monkeypatch.setattr(FusedLlama, "prompt_logits", lambda *args: passes.append(1) or prompt_logits(*args))
    own = Share4VEngine(tokenizer, model, processor, context, compile_decode=EAGER, fused_prompt=False)
    expected = [c.token_ids for c in own.complete(chats, params)]
    assert own._greedy_step.fused is not None and passes == []  # the step is fused, the prompt pass is not
    fused = Share4VEngine(tokenizer, model, processor, context, compile_decode=EAGER)  # fused_prompt: the default
    assert [c.token_ids for c in fused.complete(chats, params)] == expected and passes == [1]
