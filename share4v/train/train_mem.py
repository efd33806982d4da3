"""train/train_mem.py

The entry the launch scripts run (`torchrun ... share4v/train/train_mem.py <flags>`): `train()` with FlashAttention-2
when flash-attn is installed, else torch's SDPA. Attention is chosen through `attn_implementation`; nothing in
transformers is patched.
"""

import importlib.util
import os
import sys

if __package__ in (None, ""):  # run as a script by path: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from share4v.train.train import main


def attention_implementation() -> str:
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "sdpa"


if __name__ == "__main__":
    main(attn_implementation=attention_implementation())
