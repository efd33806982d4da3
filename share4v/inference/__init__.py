"""share4v.inference: the generation engine shared by every front end."""

from share4v.inference.engine import Chat, GenerationParams, Share4VEngine

__all__ = ["Chat", "GenerationParams", "Share4VEngine"]
