"""Anthropic's Messages API served over any backend, through the chat form."""

from .routes import MessagesRoutes

__all__ = ["MessagesRoutes"]
