"""share4v.model: the ShareGPT4V model classes (importing this registers them with transformers' Auto classes)."""

from share4v.model.language_model.share4v_llama import Share4VConfig, Share4VLlamaForCausalLM, Share4VLlamaModel

__all__ = ["Share4VConfig", "Share4VLlamaForCausalLM", "Share4VLlamaModel"]
