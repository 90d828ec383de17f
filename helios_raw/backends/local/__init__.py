"""The local backend: GGUF models run in-process by llama-cpp-python."""

from .backend import LocalBackend

__all__ = ["LocalBackend"]
