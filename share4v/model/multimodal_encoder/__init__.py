"""The vision tower (CLIP) and where its weights are found."""
