"""Serving front ends (`cli`: interactive streaming chat)."""
