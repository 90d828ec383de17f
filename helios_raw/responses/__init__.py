"""OpenAI's Responses API served over any backend, through the chat form."""

from .routes import ResponsesRoutes
from .store import ResponseStore

__all__ = ["ResponseStore", "ResponsesRoutes"]
