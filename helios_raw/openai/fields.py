"""Fields several OpenAI request bodies share (``model``, ``user``, token ids), validated the same
way everywhere: a 400 whose ``param`` names the field."""

from __future__ import annotations

from typing import Any, Optional

from ..errors import bad_request


def model_of(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string.", "model")
    return model


def user_of(body: dict) -> Optional[str]:
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_request("'user' must be a string.", "user")
    return user


def is_tokens(value: Any) -> bool:
    """Whether ``value`` is a non-empty list of token ids (integers from 0)."""
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
