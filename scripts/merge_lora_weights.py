"""Merge a share4v LoRA checkpoint into its base model and check the merged logits (see share4v.model.merge_lora)."""

import sys

from share4v.model.merge_lora import main

if __name__ == "__main__":
    sys.exit(main())
