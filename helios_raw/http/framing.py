"""What h11 leaves to its caller about a request's head: the limits, strict framing, and the
error a client is refused with.

h11 parses; here a parsed head is checked against :class:`~helios_raw.http.limits.Limits` and the
rules h11 does not enforce (HTTP/1.0 and 1.1 only, no request carrying both Content-Length and
Transfer-Encoding, no control bytes in header values), and h11's own complaints become error
objects that never echo the client's bytes.
"""

from __future__ import annotations

import re
from typing import Optional

import h11

from ..errors import APIError
from .limits import Limits
from .request import Request

#: ``length`` of a head whose body is chunked.
CHUNKED = -1

_VERSIONS = (b"1.0", b"1.1")
#: Bytes h11 lets through in a header value that RFC 9110 forbids: C0 controls but HTAB, and DEL.
_CONTROL_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search
#: Common methods and versions as text, without decoding them for every request.
_TEXT = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "1.1", "1.0")}


def read_head(event: h11.Request, limits: Limits, client: Optional[tuple]):
    """``(request, error, keep_alive, length)`` of a parsed head: the error to refuse it with (or
    None), whether the client allows another request after it, and its body's length (None for
    no body, :data:`CHUNKED`, or the Content-Length)."""
    method, target, headers, version = event.method, event.target, event.headers, event.http_version
    head_size = len(method) + len(target) + 12
    has_length = has_chunked = control_byte = close = False
    content_length = 0
    for name, value in headers:
        head_size += len(name) + len(value) + 4
        if _CONTROL_BYTE(value) is not None:
            control_byte = True
        if name == b"content-length":
            has_length = True
            content_length = int(value)
        elif name == b"transfer-encoding":
            has_chunked = True
        elif name == b"connection" and b"close" in value.lower():
            close = True
    request = Request(
        _TEXT.get(method) or method.decode("ascii", "replace"),
        target,
        headers,
        client=client,
        http_version=_TEXT.get(version) or version.decode("ascii", "replace"),
    )
    error = None
    if version not in _VERSIONS:
        error = APIError(505, "Only HTTP/1.0 and HTTP/1.1 are supported.", code="http_version_not_supported")
    elif len(target) > limits.max_target_bytes:
        error = uri_too_long(limits)
    elif len(method) + len(target) > limits.max_target_bytes + 32:
        error = request_line_too_long(limits)
    elif len(headers) > limits.max_header_count:
        error = APIError(431, f"The request has more than {limits.max_header_count} header fields.",
                         code="request_header_fields_too_large")
    elif head_size > limits.max_head_bytes:
        error = head_too_large(limits)
    elif has_length and has_chunked:
        error = APIError(400, "A request must not carry both Content-Length and Transfer-Encoding.",
                         code="bad_request")
    elif control_byte:
        error = APIError(400, "Malformed HTTP request: a header value contains a control character.",
                         code="bad_request")
    # h11 does not keep HTTP/1.0 connections alive, so neither do we.
    keep_alive = version == b"1.1" and not close
    length = CHUNKED if has_chunked else content_length if has_length else None
    return request, error, keep_alive, length


def request_line_overlong(pending: bytes, limits: Limits) -> bool:
    """Whether the first line of an incomplete head is already longer than any we accept."""
    limit = limits.max_target_bytes + 32
    return len(pending) > limit and b"\n" not in pending[:limit]


def protocol_error(exc: h11.RemoteProtocolError, pending: bytes, limits: Limits) -> APIError:
    """The error answering h11's complaint; ``pending`` is what h11 held unparsed."""
    message = _describe(exc)
    if message.startswith("Receive buffer too long"):
        first_line_end = pending.find(b"\n")
        if first_line_end < 0 or first_line_end > limits.max_target_bytes + 32:
            return request_line_too_long(limits)
        return head_too_large(limits)
    if exc.error_status_hint == 501:
        return APIError(501, "Only the chunked transfer coding is supported in requests.",
                        code="unsupported_transfer_encoding")
    status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
    return APIError(status, f"Malformed HTTP request: {message}.", code="bad_request")


def _describe(exc: h11.RemoteProtocolError) -> str:
    """h11's complaint without the offending bytes it quotes (never echo a client's garbage)."""
    text = str(exc)
    for marker in (": bytearray(", ": b'", ': b"'):
        text = text.split(marker, 1)[0]
    return text.rstrip(".") or "unparsable request"


def uri_too_long(limits: Limits) -> APIError:
    return APIError(414, f"The request target is longer than {limits.max_target_bytes} bytes.", code="uri_too_long")


def request_line_too_long(limits: Limits) -> APIError:
    return APIError(414, f"The request line is longer than {limits.max_target_bytes + 32} bytes.",
                    code="uri_too_long")


def head_too_large(limits: Limits) -> APIError:
    return APIError(431, f"The request head is larger than {limits.max_head_bytes} bytes.",
                    code="request_header_fields_too_large")


def body_too_large(limits: Limits) -> APIError:
    return APIError(413, f"The request body is larger than {limits.max_body_bytes} bytes.",
                    code="request_too_large")
