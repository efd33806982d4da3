"""share4v: ShareGPT4V (LLaVA-1.5-style multimodal model) on transformers 5.

The model classes are imported on first use (`share4v.Share4VConfig`), so that torch-free parts such as
`share4v.eval.metrics` import without torch; `import share4v.model` registers them with transformers' Auto classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from share4v.model import Share4VConfig, Share4VLlamaForCausalLM

__all__ = ["Share4VConfig", "Share4VLlamaForCausalLM"]


def __getattr__(name: str):
    """Import the model classes lazily (PEP 562)."""
    if name in __all__:
        from share4v import model

        return getattr(model, name)
    raise AttributeError(f"module 'share4v' has no attribute {name!r}")
