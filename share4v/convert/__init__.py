"""Conversion to and from the transformers llava format: `share4v.convert.to_hf`, `share4v.convert.from_hf`."""
