"""The vision→language projector."""
