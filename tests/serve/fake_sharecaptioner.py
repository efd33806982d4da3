"""A stand-in for ShareCaptioner's checkpoint: a folder with its own model code (`auto_map`, loaded by transformers'
`trust_remote_code`) exposing what the original captioning script calls on the real InternLM-XComposer model —
`vis_processor`, `encode_img`, `encode_text`, `eoh`, `internlm_model` (a causal LM that generates from embeddings)
and `decode_text` — at a tiny size, with random weights and the tiny sentencepiece tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from share4v.testing.tiny_tokenizer import train_sentencepiece, write_llama_tokenizer

CONFIGURATION = """
from transformers import PretrainedConfig


class FakeCaptionerConfig(PretrainedConfig):
    model_type = "fake_sharecaptioner"

    def __init__(self, vocab_size=512, hidden_size=32, patch=8, image_size=16, **kwargs):
        self.vocab_size, self.hidden_size, self.patch, self.image_size = vocab_size, hidden_size, patch, image_size
        super().__init__(**kwargs)
"""

MODELING = '''
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from .configuration_fake import FakeCaptionerConfig


class VisProcessor:
    """PIL image -> [3, S, S] floats in [0, 1] (the real one is a torchvision Compose)."""

    def __init__(self, size):
        self.size = size

    def __call__(self, image):
        array = np.asarray(image.convert("RGB").resize((self.size, self.size)), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)


class FakeCaptioner(PreTrainedModel):
    config_class = FakeCaptionerConfig
    _no_split_modules = []

    def __init__(self, config):
        super().__init__(config)
        llama = LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                            max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        self.internlm_model = LlamaForCausalLM(llama)
        self.patch_embed = torch.nn.Linear(3 * config.patch * config.patch, config.hidden_size)
        self.vis_processor = VisProcessor(config.image_size)
        self.eoh = "<eoh>"
        self.tokenizer = None  # set by the caller, as the original script does
        self.post_init()

    def encode_img(self, image):
        p = self.config.patch
        patches = image.unfold(2, p, p).unfold(3, p, p)  # [B, 3, n, n, p, p]
        patches = patches.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)  # [B, n*n, 3*p*p]
        return self.patch_embed(patches.to(self.patch_embed.weight.dtype))

    def encode_text(self, text, add_special_tokens=False):
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=add_special_tokens).input_ids
        return self.internlm_model.model.embed_tokens(ids.to(self.device))

    def decode_text(self, out_embeds):
        return [self.tokenizer.decode(out, skip_special_tokens=True).split("<eoa>")[0].strip() for out in out_embeds]
'''


def write_fake_sharecaptioner(root: Path, seed: int = 0) -> Path:
    """Write the checkpoint folder: config with `auto_map`, the two code files, random weights, the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    (root / "configuration_fake.py").write_text(CONFIGURATION)
    (root / "modeling_fake.py").write_text(MODELING)
    auto_map = {
        "AutoConfig": "configuration_fake.FakeCaptionerConfig",
        "AutoModelForCausalLM": "modeling_fake.FakeCaptioner",
    }
    (root / "config.json").write_text(json.dumps({"model_type": "fake_sharecaptioner", "auto_map": auto_map}))
    write_llama_tokenizer(root, train_sentencepiece(seed, 512))
    config = AutoConfig.from_pretrained(root, trust_remote_code=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    model.save_pretrained(root)
    return root
