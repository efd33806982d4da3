"""Share4VConfig and Share4VLlamaForCausalLM on transformers' Llama."""
