"""inference/fused_llama.py

The one-token decode step of a transformers Llama (the LLM of the released ShareGPT4V models) with each decoder
layer's q/k/v projections run as one matrix product and its gate/up projections as another: four products a layer
instead of seven.

Why: at batch 1 a decode step is bound by reading the weights, and a 7B layer's seven products read 32-90 MB each;
fewer, larger products read them faster. Inductor's `freezing`, which concatenates the same weights into copies,
measured 1.11-1.12x on an H200 at 8.4 GiB of extra memory
(`benchmarks/results/2026-11-26-h200-greedy-step-options.json`).
Here the concatenation is the weights' own storage: `FusedLlama.of(model)` re-lays each layer's q/k/v (and gate/up)
weights into one tensor and makes the modules' weights views of it, so nothing is copied and every other use of the
model (generate, training, saving its state) sees the same values. Weights replaced since (the model moved to
another device, say) are re-laid at the next `of`.

At one row (batch-1 decoding on a GPU) every projection of the step, the fused ones, the attention output, down and
the output head, runs through `share4v.inference.matvec`'s Triton kernel, which reads the weights faster than
cuBLAS's one-row kernels (1.11x the step on an H200); elsewhere `F.linear`.

The step computes what transformers' Llama computes for one new token per row over a static cache (the same
modules for norms, rotary embedding, output and down projections; attention over the cache with the padding mask and
causality, which `share4v.inference.cache_attention` runs as a kernel that reads only the written slots where it
can, else as SDPA); the tests compare its logits with the model's own step and its greedy tokens with `generate`'s
in fp32.
`of` gives None where the projections to fuse are not plain floating-point `nn.Linear`s without biases on one
device (LoRA wrappers, quantized layers) or the layers are not Llama's: the model's own forward runs there.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import StaticLayer
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, apply_rotary_pos_emb

from share4v.inference import cache_attention, fp8_cache
from share4v.inference.matvec import linear


@dataclass(frozen=True)
class _FusedLayer:
    qkv: torch.Tensor  # [q + k + v outputs, hidden]: q_proj, k_proj and v_proj weights are views of it
    gate_up: torch.Tensor  # [2 x intermediate, hidden]: gate_proj and up_proj weights are views of it
    qkv_split: tuple[int, int, int]


# positions a prompt pass runs through a layer at once (`FusedLlama.prompt_logits`): larger batches go in row groups.
# At 7B width a position's activations in a layer take about 100 KB (the MLP's 2 x 11008 values, the q/k/v
# products, the keys and values kept for the cache), so a group takes about 3 GiB, where a 128-image captioning batch
# (79,000 positions) took 8 GiB at once; the products of 32,768 positions still run at the matrix-product peak.
PROMPT_GROUP_POSITIONS = 32_768

_FUSING = threading.Lock()  # one re-lay at a time, whichever thread asks first


class FusedLlama:
    """A model's decode step over fused projections; get it with `of`."""

    def __init__(self, model: torch.nn.Module, layers: list[_FusedLayer]):
        self.model = model
        self.layers = layers
        self._layout = _layout(model)

    @staticmethod
    def can_fuse(model: torch.nn.Module) -> bool:
        """Whether `of` would fuse `model` now (without fusing it)."""
        layers = getattr(model.get_model(), "layers", None) if hasattr(model, "get_model") else None
        return bool(layers) and _fusable(layers)

    @classmethod
    def of(cls, model: torch.nn.Module) -> FusedLlama | None:
        """The fused step of `model` (a share4v or Llama causal LM), made on first use and kept on the model, and
        made again when a fused module or its weight was replaced since (a LoRA wrapper, a move to another device);
        None where the decoder layers are not transformers' Llama layers with plain floating-point `nn.Linear`
        projections without biases (not LoRA or quantized layers), all on one device and in one dtype."""
        with _FUSING:
            fused = model.__dict__.get("_share4v_fused_llama")
            if fused is not None and fused._layout == _layout(model):
                return fused
            model.__dict__.pop("_share4v_fused_llama", None)  # the stale fused tensors go before new ones are made
            del fused
            layers = getattr(model.get_model(), "layers", None) if hasattr(model, "get_model") else None
            if not layers or not _fusable(layers):
                return None
            with torch.inference_mode(False), torch.no_grad():  # the weights must stay usable for training
                fused = cls(model, [_fuse_layer(layer) for layer in layers])
            model.__dict__["_share4v_fused_llama"] = fused
            return fused

    def logits(
        self,
        tokens: torch.Tensor,
        position_ids: torch.Tensor,
        cache_position: torch.Tensor,
        attention_mask: torch.Tensor,
        cache,
        kv_fp8: bool = False,
    ) -> torch.Tensor:
        """Next-token logits `[B, vocabulary]` for last tokens `[B, 1]` at `position_ids` `[B, 1]`. The static
        `cache` writes them at its own count of positions written, which `cache_position` `[1]` must equal (as in
        `fast_greedy.greedy_decode`): the mask hides the slots after it. `attention_mask` `[B, cache length]` marks
        the positions that hold a token (padding: 0). `kv_fp8`: the cache holds e4m3 bytes (`fp8_cache`): the new keys
        and values are written rounded, and attention reads them so."""
        llm, rows = self.model.get_model(), tokens.shape[0]
        hidden = llm.embed_tokens(tokens)
        cos, sin = llm.rotary_emb(hidden, position_ids)
        slots = torch.arange(attention_mask.shape[1], device=tokens.device)
        visible = attention_mask.bool()[:, None, None, :] & (slots <= cache_position)[None, None, None, :]
        for index, (layer, fused) in enumerate(zip(llm.layers, self.layers, strict=True)):
            attn = layer.self_attn
            query, key, value = linear(layer.input_layernorm(hidden), fused.qkv).split(fused.qkv_split, dim=-1)
            query, key, value = (x.view(rows, 1, -1, attn.head_dim).transpose(1, 2) for x in (query, key, value))
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            if kv_fp8:
                key, value = fp8_cache.to_bytes(key), fp8_cache.to_bytes(value)
            keys, values = cache.update(key, value, index)
            out = cache_attention.decode_attention(query, keys, values, visible, cache_position, attn.scaling)
            hidden = hidden + _project(attn.o_proj, out.transpose(1, 2).reshape(rows, 1, -1))
            gate, up = linear(layer.post_attention_layernorm(hidden), fused.gate_up).chunk(2, dim=-1)
            hidden = hidden + _project(layer.mlp.down_proj, layer.mlp.act_fn(gate) * up)
        return _project(self.model.lm_head, llm.norm(hidden)[:, -1])

    def prompt_logits(
        self,
        embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache,
        layer_pass=None,
        kv_fp8: bool = False,
        group_positions: int | None = PROMPT_GROUP_POSITIONS,
    ) -> torch.Tensor:
        """Last-position logits `[B, vocabulary]` of left-padded prompt embeddings `[B, P, D]` (`attention_mask`
        `[B, P]`, 0 on padding; `position_ids` `[B, P]` counted from each row's first token), whose keys and values
        go into `cache` at its count of positions written, which must be 0 (a reset cache): attention here runs
        over the prompt itself, `P` positions, rather than the whole cache. `layer_pass`: `prompt_layer` or a
        compiled version of it (`compile_prompt_layer`: one graph serves every layer, batch size and length above 1).
        A batch without padding attends causally without a mask (flash attention on a GPU). `kv_fp8`: the keys and
        values go into the cache as e4m3 bytes (`fp8_cache`), after the prompt attended over them unrounded.

        `group_positions`: where the batch holds more positions than this, each layer runs over groups of rows of
        at most this many positions (as equal in size as can be; one row at least), one after another, so that a
        layer's activations (the MLP's are the largest: 2 x intermediate values a position) are a group's, not the
        whole batch's. The batch's hidden states stay whole (copied once). A row's result is its own computation
        either way, up to the rounding of products of other shapes (equal within 1e-5 in the fp32 tests; in bf16 on
        a GPU not bit for bit). None: the whole batch at once.

        Where `cache` is a static cache already allocated for this batch (`_static_slots`; the engine allocates its
        cache before the pass), each group's keys and values are copied straight into the cache's slots 0..P-1 and
        the layer's count of positions advanced by P, as `update` would from a reset cache (a cache not reset would
        be overwritten from slot 0 and count 2P: the caller resets it, as said above). Otherwise each layer's keys
        and values are gathered whole and written by `cache.update` (its `index_copy_`, which allocates the cache at
        the first write). On an H200 at batch 128 that `index_copy_` took 87 ms of a 1.86 s pass; the copies of
        each group's keys and values (69 ms), into the cache now, remain
        (`benchmarks/results/2026-11-28-h200-decode-step-128/` and `2026-11-28-h200-prompt-direct-writes/`)."""
        llm, layer_pass = self.model.get_model(), layer_pass or prompt_layer
        cos, sin = llm.rotary_emb(embeds, position_ids)
        visible = None  # no padding: causal attention, which runs without a mask (flash attention on a GPU)
        if not bool(attention_mask.all()):
            length = attention_mask.shape[1]
            causal = torch.ones((length, length), dtype=torch.bool, device=embeds.device).tril()
            # each position also sees itself, so that a padding position, which sees nothing else, gets finite keys
            # and values (the cache masks them; a NaN there would still reach every later product); a token's own
            # position is visible to it anyway
            itself = torch.eye(length, dtype=torch.bool, device=embeds.device)
            visible = ((causal & attention_mask.bool()[:, None, :]) | itself)[:, None]  # [B, 1, P, P]
        batch, length = embeds.shape[:2]
        groups = _row_groups(batch, length, group_positions)
        hidden = embeds if len(groups) == 1 else embeds.clone()  # groups write their rows' outputs back in place
        stored = torch.uint8 if kv_fp8 else embeds.dtype
        for index, (layer, fused) in enumerate(zip(llm.layers, self.layers, strict=True)):
            weights = (layer, fused.qkv, fused.gate_up, fused.qkv_split)
            slots = _static_slots(cache, index, batch, length, stored, embeds.device)
            key = value = None
            for rows in groups:
                mask = None if visible is None else visible[rows]
                out, group_key, group_value = layer_pass(
                    *weights, hidden[rows], cos[rows], sin[rows], mask, kv_fp8=kv_fp8
                )
                if len(groups) == 1:
                    hidden = out
                else:
                    hidden[rows] = out
                if slots is not None:  # straight into the cache's slots
                    slots.keys[rows, :, :length] = group_key
                    slots.values[rows, :, :length] = group_value
                elif len(groups) == 1:
                    key, value = group_key, group_value
                else:
                    if key is None:  # the whole batch's keys and values, for one write into the cache
                        key = group_key.new_empty((batch, *group_key.shape[1:]))
                        value = group_value.new_empty((batch, *group_value.shape[1:]))
                    key[rows], value[rows] = group_key, group_value
            if slots is not None:
                slots.cumulative_length.add_(length)  # what `update` counts: the positions written
            else:
                cache.update(key, value, index)
        return self.model.lm_head(llm.norm(hidden[:, -1]))


def prompt_layer(layer, qkv, gate_up, qkv_split, hidden, cos, sin, visible, kv_fp8=False):
    """One decoder layer over prompt hidden states `[B, P, D]` (rotary `cos`/`sin`, `visible` `[B, 1, P, P]`, or
    None where no row is padded: causal attention) with the fused q/k/v and gate/up weights: the layer's output and
    its keys and values `[B, kv heads, P, head dim]` for the cache (with `kv_fp8`, as e4m3 bytes:
    `fp8_cache.to_bytes`). Tensors and the layer only, so that one compiled graph serves every layer
    (`compile_prompt_layer`)."""
    attn, (rows, length) = layer.self_attn, hidden.shape[:2]
    query, key, value = F.linear(layer.input_layernorm(hidden), qkv).split(qkv_split, dim=-1)
    query, key, value = (x.view(rows, length, -1, attn.head_dim).transpose(1, 2) for x in (query, key, value))
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    groups = query.shape[1] // key.shape[1]
    seen_key, seen_value = key, value
    if groups > 1:  # as the step: PyTorch's fused kernels take no grouped heads with a mask
        seen_key, seen_value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(
        query, seen_key, seen_value, attn_mask=visible, is_causal=visible is None, scale=attn.scaling
    )
    hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(rows, length, -1))
    gate, up = F.linear(layer.post_attention_layernorm(hidden), gate_up).chunk(2, dim=-1)
    hidden = hidden + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
    if kv_fp8:
        return hidden, fp8_cache.to_bytes(key), fp8_cache.to_bytes(value)
    return hidden, key, value


def compile_prompt_layer(backend: str | Callable = "inductor") -> Callable:
    """`prompt_layer` compiled once for every layer, batch size and prompt length (torch specializes sizes 1, so
    batch size 1 and one-token prompts get a graph each; so do batches without padding, which pass no mask): the
    rows and positions of its inputs are marked dynamic, every other size (widths, heads, the q/k/v split) stays
    what the model has, so that inductor writes the element-wise kernels for them. Compiled with every size
    dynamic, those kernels took 2.3x as long at 7B shape (443 against 191 ms of a batch-128 pass on an H100,
    docs/Performance.md). Each model shape and cache dtype compiles its own graphs; torch counts all of them
    against one limit for `prompt_layer` (8 by default, after which it runs uncompiled)."""
    compiled = torch.compile(prompt_layer, backend=backend)

    def run(layer, qkv, gate_up, qkv_split, hidden, cos, sin, visible, kv_fp8=False):
        for tensor, dims in ((hidden, (0, 1)), (cos, (0, 1)), (sin, (0, 1)), (visible, (0, 2, 3))):
            for dim in dims if tensor is not None else ():
                torch._dynamo.maybe_mark_dynamic(tensor, dim)
        return compiled(layer, qkv, gate_up, qkv_split, hidden, cos, sin, visible, kv_fp8=kv_fp8)

    return run


def _row_groups(rows: int, length: int, group_positions: int | None) -> list[slice]:
    """`rows` rows of `length` positions in consecutive groups of at most `group_positions` positions (at least one
    row), as equal in size as can be: at most two sizes, one row apart, which one compiled graph serves (the batch
    size is dynamic in it), except that groups of one row get the graph of batch size 1 (torch specializes size 1;
    only prompts over half of `group_positions` make them); one group where all fit."""
    if group_positions is None or rows * length <= group_positions:
        return [slice(0, rows)]
    count = -(-rows // max(1, group_positions // length))
    bounds = [rows * group // count for group in range(count + 1)]
    return [slice(start, end) for start, end in itertools.pairwise(bounds)]


def _static_slots(cache, index: int, rows: int, length: int, dtype: torch.dtype, device: torch.device):
    """Layer `index` of `cache` where the prompt pass writes its keys and values into the layer's tensors itself, by
    rows (no whole-batch copy, no `index_copy_`): a transformers `StaticLayer` (exactly that class), allocated
    (the engine allocates its cache before the prompt pass: `Share4VEngine._allocate_cache`) for `rows` rows and at
    least `length` positions in `dtype` on `device`, in a cache that does not offload. The pass then adds `length`
    to the layer's `cumulative_length`, as the layer's own `update` counts positions, and writes them from slot 0:
    the cache must be reset, as `prompt_logits` asks anyway. None otherwise: `cache.update` writes them."""
    layers = getattr(cache, "layers", None)
    if getattr(cache, "offloading", True) or layers is None or index >= len(layers):
        return None
    layer = layers[index]
    if type(layer) is not StaticLayer or not layer.is_initialized:
        return None
    if not isinstance(getattr(layer, "cumulative_length", None), torch.Tensor):
        return None
    if any(t.dtype != dtype or t.device != device or t.shape[0] != rows or t.shape[2] < length
           for t in (layer.keys, layer.values)):  # fmt: skip
        return None
    return layer


def _project(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)`; a plain `nn.Linear` without bias through `matvec.linear` (its kernel at batch 1 on a GPU)."""
    if type(module) is torch.nn.Linear and module.bias is None:
        return linear(x, module.weight)
    return module(x)


def _fused_modules(layer: LlamaDecoderLayer) -> tuple[torch.nn.Module, ...]:
    attn, mlp = layer.self_attn, layer.mlp
    return attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj


def _layout(model: torch.nn.Module) -> list[tuple[int, int]]:
    """Each fused module and where its weight lives, plus the output head: equal while nothing was replaced."""
    llm = model.get_model()
    modules = [m for layer in llm.layers for m in _fused_modules(layer)] + [model.lm_head]
    return [(id(m), m.weight.data_ptr()) for m in modules]


def _fusable(layers: torch.nn.ModuleList) -> bool:
    weights = []
    for layer in layers:
        if type(layer) is not LlamaDecoderLayer:  # a subclass may compute something else
            return False
        for module in _fused_modules(layer):
            if type(module) is not torch.nn.Linear or module.bias is not None:  # a LoRA or quantized layer: no
                return False
            weights.append(module.weight)
    return all(w.is_floating_point() and (w.device, w.dtype) == (weights[0].device, weights[0].dtype) for w in weights)


def _fuse(modules: tuple[torch.nn.Linear, ...]) -> torch.Tensor:
    """One tensor holding the modules' weights one after another; each module's weight becomes a view of it."""
    fused = torch.cat([m.weight for m in modules])
    start = 0
    for m in modules:
        rows = m.weight.shape[0]
        m.weight.data = fused[start : start + rows]
        start += rows
    # the compiled step reads it as an input, not a parameter: CUDA graphs must not copy it in at every replay
    torch._dynamo.mark_static_address(fused)
    return fused


def _fuse_layer(layer: LlamaDecoderLayer) -> _FusedLayer:
    attn, mlp = layer.self_attn, layer.mlp
    split = (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features)
    return _FusedLayer(_fuse((attn.q_proj, attn.k_proj, attn.v_proj)), _fuse((mlp.gate_proj, mlp.up_proj)), split)
