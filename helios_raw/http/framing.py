"""What h11 leaves to its caller about a request's framing: the limits, strictness, and the error
a client is refused with.

h11 parses; here a parsed head is checked against :class:`~helios_raw.http.limits.Limits` and the
rules h11 does not enforce (HTTP/1.0 and 1.1 only, no request carrying both Content-Length and
Transfer-Encoding, no control bytes in header values, no '.' or '..' path segment), and h11's own
complaints become error objects that never echo the client's bytes.

Where RFC 9112 lets a server refuse what h11 tolerates, we refuse (400): a proxy in front that
reads such a request differently could otherwise smuggle a second request past it. That is a
line ending in a bare LF (RFC 9112 section 2.2) or folded onto the line before (obs-fold, section
5.2) in a head or a trailer section (:class:`HeadScanner`, :class:`StrictChunks`), and whitespace
between a chunk's size and its CRLF (section 7.1).
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
#: A request id a client may choose for itself: 1 to 128 visible ASCII characters.
_SANE_ID = re.compile(rb"[\x21-\x7e]{1,128}").fullmatch
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
    request_id = None
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
        elif name == b"x-request-id" and _SANE_ID(value):
            request_id = value.decode("ascii")
    request = Request(
        _TEXT.get(method) or method.decode("ascii", "replace"),
        target,
        headers,
        client=client,
        http_version=_TEXT.get(version) or version.decode("ascii", "replace"),
        request_id=request_id,
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
    elif request.path[:1] != "/" and not (target == b"*" and method == b"OPTIONS"):
        error = APIError(400, "The request target must be a path ('/...'), an absolute URL, or '*' for OPTIONS.",
                         code="bad_request")
    elif dot_segment(request):
        error = APIError(400, "The request path must not contain '.' or '..' segments.", code="bad_request")
    # h11 does not keep HTTP/1.0 connections alive, so neither do we.
    keep_alive = version == b"1.1" and not close
    length = CHUNKED if has_chunked else content_length if has_length else None
    return request, error, keep_alive, length


def dot_segment(request: Request) -> bool:
    """Whether the request's path has a '.' or '..' segment (percent-encoded or not), which a
    proxy or the client would have resolved to another path than the one we would route."""
    return "." in request.path and any(s == "." or s == ".." for s in request.segments)


class HeadScanner:
    """Scans the bytes of a request head as they arrive, before h11 reads them, for what h11
    accepts and we refuse: a bare LF line ending, or an obs-fold line. Stops at the head's end."""

    __slots__ = ("_tail", "done")

    def __init__(self) -> None:
        self._tail = b""
        self.done = False

    def start(self, data: bytes) -> Optional[str]:
        """A new head begins with ``data``: what is wrong with it, or None."""
        self._tail = b""
        self.done = False
        return self.feed(data)

    def feed(self, data: bytes) -> Optional[str]:
        """What is wrong with the head so far, or None."""
        if self.done:
            return None
        window = self._tail + data if self._tail else data
        end = window.find(b"\r\n\r\n")
        stop = len(window) if end < 0 else end + 4
        if window.count(b"\n", 0, stop) != window.count(b"\r\n", 0, stop):
            return "a line ends in a bare LF instead of CRLF"
        if window.find(b"\n ", 0, stop) >= 0 or window.find(b"\n\t", 0, stop) >= 0:
            return "a header line is folded onto the one before (obs-fold)"
        if end >= 0:
            self.done = True
        else:
            # Kept for a line ending or fold split between reads. A LF first in it was checked
            # with the CR before it, which is no longer kept.
            tail = window[-3:]
            self._tail = tail[1:] if tail[:1] == b"\n" else tail
        return None


class StrictChunks:
    """h11's reader of a chunked request body, made strict: it reads through this object instead
    of h11's receive buffer, which refuses a chunk-size line with whitespace before its CRLF, and
    a trailer section with a bare LF, a folded line, or more than ``limit`` bytes. Installed with
    :func:`strict_chunks` (h11 0.16 keeps the reader for the body being received in
    ``Connection._reader``)."""

    __slots__ = ("reader", "limit", "buf", "trailer", "trailer_size")

    def __init__(self, reader, limit: int) -> None:
        self.reader = reader
        self.limit = limit
        self.buf = None
        self.trailer: list = []
        self.trailer_size = 0

    def __call__(self, buf):
        self.buf = buf
        return self.reader(self)

    def read_eof(self):
        return self.reader.read_eof()

    # -- the receive buffer, as h11's chunked reader uses it ---------------------------------

    def __len__(self) -> int:
        return len(self.buf)

    def maybe_extract_at_most(self, count: int):
        return self.buf.maybe_extract_at_most(count)

    def maybe_extract_next_line(self):
        """The next chunk-size line (h11 reads nothing else line by line)."""
        line = self.buf.maybe_extract_next_line()
        if line is not None and line[-3:-2] in (b" ", b"\t"):
            raise h11.LocalProtocolError("illegal chunk header: whitespace before its CRLF")
        return line

    def maybe_extract_lines(self):
        """The trailer section's lines once it is complete, read line by line so that each must
        end in CRLF."""
        while True:
            line = self.buf.maybe_extract_next_line()
            if line is None:
                return None
            if line == b"\r\n":
                lines, self.trailer = self.trailer, []
                return lines
            self.trailer_size += len(line)
            if self.trailer_size > self.limit:
                raise h11.LocalProtocolError("trailer section too large")
            if b"\n" in line[:-2] or line[:1] in (b" ", b"\t"):
                raise h11.LocalProtocolError("illegal trailer line")
            self.trailer.append(line[:-2])


def strict_chunks(conn: h11.Connection, limit: int) -> None:
    """Read the chunked body ``conn`` has just begun to receive through :class:`StrictChunks`."""
    conn._reader = StrictChunks(conn._reader, limit)


def malformed(fault: str) -> APIError:
    return APIError(400, f"Malformed HTTP request: {fault}.", code="bad_request")


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
    error = malformed(message)
    if 400 < exc.error_status_hint < 500:
        error.status = exc.error_status_hint
    return error


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


def head_timeout(limits: Limits) -> APIError:
    return APIError(408, f"The request head was not received within {limits.head_timeout:g} seconds.",
                    code="request_timeout")


def body_timeout(limits: Limits, in_full: bool) -> APIError:
    """The body stopped arriving for ``body_idle_timeout``, or (``in_full``) was not all there
    within ``body_timeout``."""
    if in_full:
        message = f"The request body was not received in full within {limits.body_timeout:g} seconds."
    else:
        message = f"No request body data was received for {limits.body_idle_timeout:g} seconds."
    return APIError(408, message, code="request_timeout")


def too_slow_at_the_cap() -> APIError:
    return APIError(408, "The server is at its connection limit and your request was arriving too slowly.",
                    code="request_timeout")


def too_many_connections() -> APIError:
    return APIError(503, "The server has too many open connections; try again shortly.",
                    type="server_error", code="too_many_connections", headers=[("retry-after", "1")])
