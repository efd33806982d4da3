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

The step computes what transformers' Llama computes for one new token per row over a static cache (the same
modules for norms, rotary embedding, output and down projections; SDPA over the cache with the padding mask and
causality); the tests compare its greedy tokens with `generate`'s in fp32. `of` gives None where the LLM is not
built of plain Llama decoder layers or a fused projection has a bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, apply_rotary_pos_emb


@dataclass(frozen=True)
class _FusedLayer:
    qkv: torch.Tensor  # [q + k + v outputs, hidden]: q_proj, k_proj and v_proj weights are views of it
    gate_up: torch.Tensor  # [2 x intermediate, hidden]: gate_proj and up_proj weights are views of it
    qkv_split: tuple[int, int, int]


class FusedLlama:
    """A model's decode step over fused projections; get it with `of`."""

    def __init__(self, model: torch.nn.Module, layers: list[_FusedLayer]):
        self.llm = model.get_model()
        self.lm_head = model.lm_head
        self.layers = layers
        self._pointers = self._weight_pointers()

    @classmethod
    def of(cls, model: torch.nn.Module) -> FusedLlama | None:
        """The fused step of `model` (a share4v or Llama causal LM), made on first use and kept on the model;
        None where its decoder layers are not plain Llama layers or a projection to fuse has a bias."""
        fused = model.__dict__.get("_share4v_fused_llama")
        if fused is not None and fused._weight_pointers() == fused._pointers:
            return fused
        layers = getattr(model.get_model(), "layers", None) if hasattr(model, "get_model") else None
        if not layers or not all(_fusable(layer) for layer in layers):
            return None
        with torch.inference_mode(False), torch.no_grad():  # weights must stay usable for training
            fused = cls(model, [_fuse_layer(layer) for layer in layers])
        model.__dict__["_share4v_fused_llama"] = fused
        return fused

    def _weight_pointers(self) -> list[int]:
        """Where each fused module's weight lives: views of the fused tensors until a weight is replaced."""
        return [module.weight.data_ptr() for layer in self.llm.layers for module in _fused_modules(layer)]

    def __call__(
        self,
        tokens: torch.Tensor,
        position_ids: torch.Tensor,
        cache_position: torch.Tensor,
        attention_mask: torch.Tensor,
        cache,
    ) -> torch.Tensor:
        """Next tokens `[B, 1]`: the arg-max of `logits`."""
        return self.logits(tokens, position_ids, cache_position, attention_mask, cache).argmax(-1, keepdim=True)

    def logits(
        self,
        tokens: torch.Tensor,
        position_ids: torch.Tensor,
        cache_position: torch.Tensor,
        attention_mask: torch.Tensor,
        cache,
    ) -> torch.Tensor:
        """Next-token logits `[B, vocabulary]` for last tokens `[B, 1]` at `position_ids` `[B, 1]`, written to the
        static `cache` at `cache_position` `[1]`; `attention_mask` `[B, cache length]` marks the positions that hold
        a token (padding: 0); positions after `cache_position` are hidden by causality."""
        llm, rows = self.llm, tokens.shape[0]
        hidden = llm.embed_tokens(tokens)
        cos, sin = llm.rotary_emb(hidden, position_ids)
        slots = torch.arange(attention_mask.shape[1], device=tokens.device)
        visible = attention_mask.bool()[:, None, None, :] & (slots <= cache_position)[None, None, None, :]
        for index, (layer, fused) in enumerate(zip(llm.layers, self.layers, strict=True)):
            attn = layer.self_attn
            query, key, value = F.linear(layer.input_layernorm(hidden), fused.qkv).split(fused.qkv_split, dim=-1)
            query, key, value = (x.view(rows, 1, -1, attn.head_dim).transpose(1, 2) for x in (query, key, value))
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            key, value = cache.update(key, value, index)
            out = F.scaled_dot_product_attention(
                query, key, value, attn_mask=visible, scale=attn.scaling, enable_gqa=key.shape[1] != query.shape[1]
            )
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(rows, 1, -1))
            gate, up = F.linear(layer.post_attention_layernorm(hidden), fused.gate_up).chunk(2, dim=-1)
            hidden = hidden + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
        return self.lm_head(llm.norm(hidden)[:, -1])


def _fused_modules(layer: LlamaDecoderLayer) -> tuple[torch.nn.Linear, ...]:
    attn, mlp = layer.self_attn, layer.mlp
    return attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj


def _fusable(layer: torch.nn.Module) -> bool:
    return isinstance(layer, LlamaDecoderLayer) and all(m.bias is None for m in _fused_modules(layer))


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
