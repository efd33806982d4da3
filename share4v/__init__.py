"""share4v: ShareGPT4V (LLaVA-1.5-style multimodal model) on transformers 5."""

from share4v.model import Share4VConfig, Share4VLlamaForCausalLM

__all__ = ["Share4VConfig", "Share4VLlamaForCausalLM"]
