"""convert/llava_format.py

The transformers llava format ("llava-hf", what vLLM and SGLang load) as share4v sees it: tensor names in both
directions, the chat template that renders share4v's `vicuna_v1` prompts, and the export marker.

Tensor names (the hub layout, which transformers 5 writes and reads):

| share4v                                   | llava-hf                                          |
|-------------------------------------------|---------------------------------------------------|
| model.embed_tokens / layers / norm .*     | language_model.model.*                            |
| lm_head.weight                            | language_model.lm_head.weight                     |
| model.mm_projector.0.* / .2.*             | multi_modal_projector.linear_1.* / linear_2.*     |
| vision_tower/ folder: vision_model.*      | vision_tower.vision_model.*                       |
"""

from __future__ import annotations

import torch

IMAGE_TOKEN = "<image>"
EXPORT_KEY = "share4v_export"  # config.json of an exported folder: what from_hf undoes (rows added for <image>)

_PROJECTOR = {
    "model.mm_projector.0.": "multi_modal_projector.linear_1.",
    "model.mm_projector.2.": "multi_modal_projector.linear_2.",
}


def to_llava_names(llm_state: dict[str, torch.Tensor], tower_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """share4v LLM weights (`model.*`, `lm_head.*`) + tower weights (`[vision_model.]*`) → llava-hf names."""
    out = {}
    for key, value in llm_state.items():
        projector = next((p for p in _PROJECTOR if key.startswith(p)), None)
        if projector:
            out[_PROJECTOR[projector] + key[len(projector) :]] = value
        elif key.startswith("model.vision_tower.") or key.endswith("rotary_emb.inv_freq"):
            continue  # tower tensors of a model saved with its tower attached; rotary buffers of old checkpoints
        elif key.startswith("model."):
            out["language_model." + key] = value
        elif key.startswith("lm_head."):
            out["language_model." + key] = value
        else:
            raise ValueError(f"unexpected tensor {key!r} in the share4v checkpoint")
    for key, value in vision_weights(tower_state).items():
        out["vision_tower.vision_model." + key] = value
    return out


def vision_weights(tower_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A tower folder's vision weights without the `vision_model.` prefix; a whole CLIP model's text side (and
    its projections) is dropped."""
    if any(key.startswith("vision_model.") for key in tower_state):
        return {k[len("vision_model.") :]: v for k, v in tower_state.items() if k.startswith("vision_model.")}
    return dict(tower_state)


LLM_TENSORS = (
    "model.embed_tokens.weight",
    "lm_head.weight",
    "model.mm_projector.0.weight",
    "model.mm_projector.2.weight",
)


def require_tensors(state: dict[str, torch.Tensor], names: tuple[str, ...], where: str, tied: bool = False) -> None:
    """Raise `ValueError` naming the tensors of `names` that `state` lacks (a checkpoint of another kind: a
    projector-only or text-only one, a LoRA adapter). `tied`: the checkpoint's output head is its input embeddings
    (`tie_word_embeddings`), which transformers saves without `lm_head.weight`."""
    missing = [name for name in names if name not in state and not (tied and name == "lm_head.weight")]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}: not a whole model (language model + projector)")


def is_llava_hf_config(config: dict) -> bool:
    """transformers' llava format nests the two configs; original LLaVA/share4v checkpoints name a tower instead."""
    return "text_config" in config and "vision_config" in config


def _hub_name(key: str) -> str:
    """transformers 5's own names (`model.language_model.*`, ...) → the hub layout's."""
    for native, hub in (
        ("model.language_model.", "language_model.model."),
        ("model.vision_tower.", "vision_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("lm_head.", "language_model.lm_head."),
    ):
        if key.startswith(native):
            key = hub + key[len(native) :]
            break
    if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
        key = "vision_tower.vision_model." + key[len("vision_tower.") :]
    return key


def from_llava_names(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """llava-hf weights (hub or transformers-5 names) → (share4v LLM weights, tower weights as `vision_model.*`)."""
    llm, tower = {}, {}
    reverse = {hub: ours for ours, hub in _PROJECTOR.items()}
    for key, value in state.items():
        key = _hub_name(key)
        projector = next((p for p in reverse if key.startswith(p)), None)
        if projector:
            llm[reverse[projector] + key[len(projector) :]] = value
        elif key.startswith("language_model."):
            llm[key[len("language_model.") :]] = value
        elif key.startswith("vision_tower."):
            tower[key[len("vision_tower.") :]] = value
        else:
            raise ValueError(f"unexpected tensor {key!r} in the llava checkpoint")
    return llm, tower


def chat_template(system: str) -> str:
    """A Jinja chat template rendering share4v's `vicuna_v1` prompt (images first in a user turn).

    The prompt starts with the BOS token, as share4v's do: engines that tokenize rendered chats without adding
    special tokens (vLLM, `apply_chat_template(tokenize=True)`) get it from the template. A space follows each
    special piece (`<s> `, `<image> `): the tokenizer then gives the text after it the leading "▁" that share4v's
    tokenization gives the start of each chunk, so the token ids are the same.
    """
    system = system.replace("'", "\\'")
    return (
        "{{- bos_token + ' ' -}}"
        "{%- set ns = namespace(system='" + system + "') -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- if messages[0]['content'] is string -%}{%- set ns.system = messages[0]['content'] -%}"
        "{%- else -%}{%- set ns.system = messages[0]['content'] | selectattr('type', 'equalto', 'text')"
        " | map(attribute='text') | join('') -%}{%- endif -%}"
        "{%- endif -%}"
        "{{- ns.system + ' ' -}}"
        "{%- for message in messages if message['role'] != 'system' -%}"
        "{%- if message['content'] is string -%}{%- set text = message['content'] -%}{%- set images = 0 -%}"
        "{%- else -%}"
        "{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
        " | join('') -%}"
        "{%- set images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
        "{%- endif -%}"
        "{%- if message['role'] == 'user' -%}"
        "{{- 'USER: ' + (('<image>\\n' * images) + text) | replace('<image>', '<image> ') + ' ' -}}"
        "{%- else -%}{{- 'ASSISTANT: ' + text + '</s>' -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
    )
