"""Data tools: the training-data checker."""
