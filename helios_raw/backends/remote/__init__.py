"""The remote backend: an OpenAI-compatible upstream, proxied (see :mod:`.backend`), its answers
normalised to OpenAI's shape (:mod:`.normalise`), its streams relayed (:mod:`.events`) and its
model list cached (:mod:`.catalog`)."""

from .backend import RemoteBackend
from .events import EventRelay, RemoteStream, SSEDecoder
from .normalise import MalformedStream

__all__ = ["EventRelay", "MalformedStream", "RemoteBackend", "RemoteStream", "SSEDecoder"]
