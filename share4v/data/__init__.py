"""Data tools: the training-data checker (`check`), the synthetic miniature world (`synthetic`) and the miniature
recipe trained on it (`miniature`)."""
