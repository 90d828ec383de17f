"""HTTPProtocol fed exact bytes through a recording transport; assertions on the exact bytes written.

The transport stands in for asyncio's socket transport (write, close, write_eof, pause_reading
...); everything above it (protocol, h11, App, router, handlers) is the real code. The varying
parts of a response are checked for shape, then replaced: the Date by ``DATE``, a request id the
server minted by ``ID``, the processing milliseconds by ``MS``.
"""

from __future__ import annotations

import asyncio
import functools
import re

import pytest

from helios_raw.app import App
from helios_raw.http.limits import Limits
from helios_raw.http.response import Response, StreamingResponse
from helios_raw.openai.handlers import health_route
from tests.support.wire import DATE, RecordingTransport, Wire

HEALTH_OK = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\naccess-control-allow-origin: *\r\n"
    b"x-request-id: ID\r\nopenai-processing-ms: MS\r\nserver: helios_raw\r\ndate: DATE\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}"
)
# The server's own decision to close (request limit, shutdown) is ``connection: close``; h11
# rewrites it as ``Connection: close`` when the client asked (HTTP/1.0, ``Connection: close``).
HEALTH_OK_CLOSE = HEALTH_OK.replace(b"content-length: 15\r\n", b"content-length: 15\r\nconnection: close\r\n")
HEALTH_OK_CLIENT_CLOSE = HEALTH_OK.replace(b"content-length: 15\r\n", b"content-length: 15\r\nConnection: close\r\n")
GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def status_lines(data: bytes) -> int:
    """How many responses (status lines) ``data`` holds."""
    return len(re.findall(rb"HTTP/1\.1 \d{3} ", data))


def error_bytes(status: bytes, body: bytes, parsed: bool = False) -> bytes:
    """A protocol-level error: JSON body, CORS, request id (and the milliseconds since the head
    when it was ``parsed``), Server, Date, then close."""
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\naccess-control-allow-origin: *\r\n"
        b"x-request-id: ID\r\n" + (b"openai-processing-ms: MS\r\n" if parsed else b"")
        + b"server: helios_raw\r\ndate: DATE\r\ncontent-length: " + str(len(body)).encode()
        + b"\r\nconnection: close\r\n\r\n" + body
    )


def error_body(message: str, code: str, type_: str = "invalid_request_error") -> bytes:
    return (b'{"error":{"message":"' + message.encode() + b'","type":"' + type_.encode()
            + b'","param":null,"code":"' + code.encode() + b'"}}')


class Gate:
    """Holds the /wait handler until released; records cancellation."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.requests = []


def make_app(gate: Gate | None = None) -> App:
    app = App()
    app.add_route("GET", "/health", health_route(None))
    app.add_route("POST", "/echo", lambda request: Response(request.body, content_type="text/plain"))

    async def wait(request):
        gate.requests.append(request)
        await gate.release.wait()
        return Response(b"released", content_type="text/plain")

    async def stream(request):
        async def produce(writer):
            writer.write(b"one")
            await writer.drain()
            writer.write(b"two")

        return StreamingResponse(produce, content_type="text/plain")

    app.add_route("GET", "/wait", wait)
    app.add_route("GET", "/stream", stream)
    return app


def in_loop(test):
    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


# -- well-formed traffic -----------------------------------------------------------------------

@in_loop
async def test_get_is_answered_with_exact_bytes_and_the_connection_stays_open():
    wire = Wire(make_app())
    wire.feed(GET_HEALTH)
    assert wire.take() == HEALTH_OK
    assert not wire.transport.closing and not wire.transport.eof_written


@in_loop
async def test_date_header_is_an_http_date():
    wire = Wire(make_app())
    wire.feed(GET_HEALTH)
    assert DATE.search(bytes(wire.transport.written))


@in_loop
async def test_request_split_into_single_bytes_is_parsed():
    wire = Wire(make_app())
    wire.feed(*[GET_HEALTH[i:i + 1] for i in range(len(GET_HEALTH))])
    assert wire.take() == HEALTH_OK


@in_loop
async def test_pipelined_requests_in_one_read_are_answered_in_order():
    wire = Wire(make_app())
    wire.feed(GET_HEALTH + b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" + GET_HEALTH)
    echo = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\naccess-control-allow-origin: *\r\n"
            b"x-request-id: ID\r\nopenai-processing-ms: MS\r\nserver: helios_raw\r\ndate: DATE\r\ncontent-length: 3\r\n\r\nabc")
    assert wire.take() == HEALTH_OK + echo + HEALTH_OK


@in_loop
async def test_pipelined_request_waits_for_the_slow_one_before_it():
    gate = Gate()
    wire = Wire(make_app(gate))
    wire.feed(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n" + GET_HEALTH)
    await wire.settle()
    assert wire.take() == b""  # /health is not answered before /wait
    gate.release.set()
    await wire.settle()
    assert wire.take() == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\naccess-control-allow-origin: *\r\n"
        b"x-request-id: ID\r\nopenai-processing-ms: MS\r\nserver: helios_raw\r\ndate: DATE\r\ncontent-length: 8\r\n\r\nreleased" + HEALTH_OK)


@in_loop
async def test_head_gets_the_get_headers_and_no_body():
    wire = Wire(make_app())
    wire.feed(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n" + GET_HEALTH)
    assert wire.take() == HEALTH_OK[: -len(b'{"status":"ok"}')] + HEALTH_OK


@in_loop
async def test_http_1_0_is_answered_then_closed():
    wire = Wire(make_app())
    wire.feed(b"GET /health HTTP/1.0\r\n\r\n")
    assert wire.take() == HEALTH_OK_CLIENT_CLOSE
    assert wire.transport.closing


@in_loop
async def test_connection_close_is_honoured_and_anything_after_it_ignored():
    wire = Wire(make_app())
    wire.feed(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + GET_HEALTH + b"garbage\r\n\r\n")
    assert wire.take() == HEALTH_OK_CLIENT_CLOSE
    assert wire.transport.closing


@in_loop
async def test_bytes_after_a_connection_close_request_in_flight_are_not_parsed():
    gate = Gate()
    wire = Wire(make_app(gate))
    wire.feed(b"GET /wait HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"\x00garbage\r\n\r\n", GET_HEALTH)
    await wire.settle()
    assert wire.take() == b""
    gate.release.set()
    await wire.settle()
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"Connection: close\r\n\r\nreleased")
    assert status_lines(out) == 1


@in_loop
async def test_expect_100_continue_gets_an_interim_response_before_the_body():
    wire = Wire(make_app())
    wire.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert wire.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    wire.feed(b"hello")
    assert wire.take().endswith(b"content-length: 5\r\n\r\nhello")


@in_loop
async def test_chunked_upload_in_pieces_is_reassembled():
    wire = Wire(make_app())
    wire.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
              b"5\r\nhel", b"lo\r\n", b"6;ext=1\r\n world\r\n", b"0\r\nTrailer: x\r\n\r\n")
    assert wire.take().endswith(b"content-length: 11\r\n\r\nhello world")


@in_loop
async def test_streaming_response_is_chunked():
    wire = Wire(make_app())
    wire.feed(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    await wire.settle()
    assert wire.take() == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\naccess-control-allow-origin: *\r\n"
        b"x-request-id: ID\r\nopenai-processing-ms: MS\r\nserver: helios_raw\r\ndate: DATE\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n")


@in_loop
async def test_streaming_response_to_http_1_0_is_delimited_by_close():
    wire = Wire(make_app())
    wire.feed(b"GET /stream HTTP/1.0\r\n\r\n")
    await wire.settle()
    assert wire.take() == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\naccess-control-allow-origin: *\r\n"
        b"x-request-id: ID\r\nopenai-processing-ms: MS\r\nserver: helios_raw\r\ndate: DATE\r\nConnection: close\r\n\r\nonetwo")
    assert wire.transport.closing


@in_loop
async def test_last_request_allowed_on_a_connection_says_close():
    wire = Wire(make_app(), Limits(max_requests_per_connection=2))
    wire.feed(GET_HEALTH + GET_HEALTH + GET_HEALTH)
    assert wire.take() == HEALTH_OK + HEALTH_OK_CLOSE
    assert wire.transport.closing


@in_loop
async def test_half_close_with_a_request_in_flight_still_gets_the_answer():
    gate = Gate()
    wire = Wire(make_app(gate))
    wire.feed(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n" + GET_HEALTH)
    assert wire.protocol.eof_received() is True  # keep the transport open for the answers
    await wire.settle()
    assert not gate.requests[0].cancelled.is_set()  # a half-closed client still reads
    gate.release.set()
    await wire.settle()
    out = wire.take()
    assert out.endswith(b"released" + HEALTH_OK)
    assert wire.transport.closing


@in_loop
async def test_eof_in_the_middle_of_a_body_closes_without_an_answer():
    wire = Wire(make_app())
    wire.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    assert wire.protocol.eof_received() is False
    assert wire.take() == b"" and wire.transport.closing


# -- smuggling and malformed framing -------------------------------------------------------------

SMUGGLE_400 = error_bytes(b"400 Bad Request", error_body(
    "A request must not carry both Content-Length and Transfer-Encoding.", "bad_request"), parsed=True)


@pytest.mark.parametrize("head", [
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
])
@in_loop
async def test_content_length_with_transfer_encoding_is_refused_and_nothing_behind_it_answered(head):
    wire = Wire(make_app())
    wire.feed(head + b"0\r\n\r\n" + GET_HEALTH)
    assert wire.take() == SMUGGLE_400
    assert wire.transport.eof_written
    wire.feed(GET_HEALTH)  # still read (lingering close) but never answered
    assert wire.take() == b""


@pytest.mark.parametrize("coding", [b"gzip", b"chunked, gzip", b"identity", b"xchunked"])
@in_loop
async def test_unsupported_transfer_coding_is_501(coding):
    wire = Wire(make_app())
    wire.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + coding + b"\r\n\r\n0\r\n\r\n" + GET_HEALTH)
    assert wire.take() == error_bytes(b"501 Not Implemented", error_body(
        "Only the chunked transfer coding is supported in requests.", "unsupported_transfer_encoding"))


@pytest.mark.parametrize("body", [
    b"zz\r\nabc\r\n0\r\n\r\n",                    # size not hex
    b"3\r\nabcdef\r\n0\r\n\r\n",                  # more data than announced
    b"-3\r\nabc\r\n0\r\n\r\n",                    # negative size
    b"3\r\nabc0\r\n\r\n",                         # missing CRLF after data
])
@in_loop
async def test_malformed_chunked_body_is_400_and_closes(body):
    wire = Wire(make_app())
    wire.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body + GET_HEALTH)
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n") and status_lines(out) == 1
    assert b'"code":"bad_request"' in out and b"connection: close" in out
    assert wire.transport.eof_written


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/3.0", b"HTTP/0.9"])
@in_loop
async def test_other_http_versions_are_505(version):
    wire = Wire(make_app())
    wire.feed(b"GET /health " + version + b"\r\nHost: x\r\n\r\n")
    assert wire.take() == error_bytes(b"505 HTTP Version Not Supported", error_body(
        "Only HTTP/1.0 and HTTP/1.1 are supported.", "http_version_not_supported"), parsed=True)


@in_loop
async def test_http2_preface_is_refused_not_served():
    wire = Wire(make_app())
    wire.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 505 ") and status_lines(out) == 1


@pytest.mark.parametrize("value", [b"a\x01b", b"a\x7fb", b"a\x1bb", b"\x08"])
@in_loop
async def test_control_bytes_in_a_header_value_are_400(value):
    wire = Wire(make_app())
    wire.feed(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Test: " + value + b"\r\n\r\n")
    assert wire.take() == error_bytes(b"400 Bad Request", error_body(
        "Malformed HTTP request: a header value contains a control character.", "bad_request"), parsed=True)


@in_loop
async def test_tab_and_high_bytes_in_a_header_value_are_accepted():
    wire = Wire(make_app())
    wire.feed(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Test: a\tb \xe9\r\n\r\n")
    assert wire.take() == HEALTH_OK


@pytest.mark.parametrize("raw, message", [
    (b"\x00\x01\x02garbage\r\n\r\n", "illegal request line"),
    (b"GET /he\x00alth HTTP/1.1\r\nHost: x\r\n\r\n", "illegal request line"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", "illegal header line"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", "illegal header line"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", "bad Content-Length"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
     "conflicting Content-Length headers"),
    (b"GET /health HTTP/1.1\r\n\r\n", "Missing mandatory Host: header"),
    (b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "Found multiple Host: headers"),
])
@in_loop
async def test_malformed_heads_get_400_without_echoing_the_bytes(raw, message):
    wire = Wire(make_app())
    wire.feed(raw)
    assert wire.take() == error_bytes(b"400 Bad Request", error_body(f"Malformed HTTP request: {message}.",
                                                                      "bad_request"))
    assert wire.transport.eof_written


@in_loop
async def test_absurd_content_length_is_refused_before_any_body():
    wire = Wire(make_app())
    wire.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n")
    out = wire.take()
    assert out.startswith(b"HTTP/1.1 400 ") and b"bad Content-Length" in out


LENIENT_FRAMING = [
    (b"GET /health HTTP/1.1\nHost: x\n\n", "a line ends in a bare LF instead of CRLF"),
    (b"GET /health HTTP/1.1\r\nHost: x\n\r\n", "a line ends in a bare LF instead of CRLF"),
    (b"GET /wait HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n\r\n",
     "a header line is folded onto the one before (obs-fold)"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 3\r\n\r\nabc",
     "a header line is folded onto the one before (obs-fold)"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n\tchunked\r\n\r\n0\r\n\r\n",
     "a header line is folded onto the one before (obs-fold)"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
     "illegal chunk header: whitespace before its CRLF"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\t\r\nabc\r\n0\r\n\r\n",
     "illegal chunk header: whitespace before its CRLF"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\n\r\n",
     "illegal trailer line"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n 2\r\n\r\n",
     "illegal trailer line"),
]


@pytest.mark.parametrize("raw, fault", LENIENT_FRAMING, ids=[
    "bare-lf", "one-bare-lf", "obs-fold", "folded-content-length", "folded-transfer-encoding",
    "chunk-size-space", "chunk-size-tab", "trailer-bare-lf", "folded-trailer"])
@pytest.mark.parametrize("pieces", [1, 7], ids=["one-read", "in-pieces"])
@in_loop
async def test_framing_h11_would_tolerate_is_refused(raw, fault, pieces):
    wire = Wire(make_app(Gate()))
    step = len(raw) // pieces + 1
    wire.feed(*[raw[i:i + step] for i in range(0, len(raw), step)] + [GET_HEALTH])
    in_body = "chunk" in fault or "trailer" in fault  # refused in the body: its head was parsed
    assert wire.take() == error_bytes(b"400 Bad Request", error_body(f"Malformed HTTP request: {fault}.",
                                                                      "bad_request"), parsed=in_body)
    assert wire.transport.eof_written


@in_loop
async def test_crlf_split_between_reads_is_not_a_bare_lf():
    wire = Wire(make_app())
    wire.feed(b"GET /health HTTP/1.1\r", b"\nHost: x\r", b"\n", b"\r", b"\n")
    assert wire.take() == HEALTH_OK


@in_loop
async def test_a_pipelined_head_is_scanned_too():
    wire = Wire(make_app())
    wire.feed(GET_HEALTH + b"GET /health HTTP/1.1\nHost: x\n\n")
    assert wire.take() == HEALTH_OK + error_bytes(b"400 Bad Request", error_body(
        "Malformed HTTP request: a line ends in a bare LF instead of CRLF.", "bad_request"))


@in_loop
async def test_a_body_may_hold_any_bytes():
    wire = Wire(make_app())
    body = b"a\nb\n c\n\td\n\n"
    wire.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert wire.take().endswith(b"\r\n\r\n" + body)
    wire.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body)
              + body + b"\r\n0\r\nX-T: 1\r\n\r\n")
    assert wire.take().endswith(b"\r\n\r\n" + body)


# -- size limits ---------------------------------------------------------------------------------

HEAD_431 = error_bytes(b"431 Request Header Fields Too Large", error_body(
    "The request head is larger than 16384 bytes.", "request_header_fields_too_large"))
# h11 parses a head that arrives complete however large it is; one arriving in pieces it refuses.
PARSED_HEAD_431 = error_bytes(b"431 Request Header Fields Too Large", error_body(
    "The request head is larger than 16384 bytes.", "request_header_fields_too_large"), parsed=True)


@in_loop
async def test_complete_100kb_head_in_one_read_is_431():
    wire = Wire(make_app())
    wire.feed(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert wire.take() == PARSED_HEAD_431
    assert wire.transport.eof_written


@in_loop
async def test_oversize_head_arriving_in_pieces_is_431_before_it_completes():
    wire = Wire(make_app())
    wire.feed(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    for _ in range(30):
        wire.feed(b"X-Filler: " + b"b" * 1000 + b"\r\n")
    assert wire.take() == HEAD_431


@in_loop
async def test_5000_headers_in_one_read_are_431():
    wire = Wire(make_app())
    wire.feed(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(5000)) + b"\r\n")
    assert wire.take() == error_bytes(b"431 Request Header Fields Too Large", error_body(
        "The request has more than 100 header fields.", "request_header_fields_too_large"), parsed=True)


@in_loop
async def test_header_count_at_the_limit_is_accepted():
    wire = Wire(make_app())
    wire.feed(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(99)) + b"\r\n")
    assert wire.take() == HEALTH_OK


URI_414 = error_bytes(b"414 Request-URI Too Long", error_body(
    "The request target is longer than 8192 bytes.", "uri_too_long"), parsed=True)


@in_loop
async def test_long_target_in_a_complete_head_is_414():
    wire = Wire(make_app())
    wire.feed(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wire.take() == URI_414


LINE_414 = error_bytes(b"414 Request-URI Too Long", error_body(
    "The request line is longer than 8224 bytes.", "uri_too_long"))


@in_loop
async def test_long_request_line_is_414_before_it_ends():
    wire = Wire(make_app())
    wire.feed(b"GET /")
    for _ in range(10):
        wire.feed(b"a" * 1000)
    assert wire.take() == LINE_414


@pytest.mark.parametrize("pieces", [1, 20], ids=["one-read", "many-reads"])
@in_loop
async def test_long_method_is_414_however_it_arrives(pieces):
    data = b"G" * 20_000 + b" / HTTP/1.1\r\nHost: x\r\n\r\n"
    wire = Wire(make_app())
    step = len(data) // pieces + 1
    wire.feed(*[data[i:i + step] for i in range(0, len(data), step)])
    assert wire.take() == (LINE_414 if pieces > 1 else error_bytes(b"414 Request-URI Too Long", error_body(
        "The request line is longer than 8224 bytes.", "uri_too_long"), parsed=True))


@in_loop
async def test_content_length_over_the_limit_is_413_at_once_with_a_lingering_close():
    wire = Wire(make_app(), Limits(max_body_bytes=1000))
    wire.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1001\r\n\r\n")
    assert wire.take() == error_bytes(b"413 Request Entity Too Large", error_body(
        "The request body is larger than 1000 bytes.", "request_too_large"), parsed=True)
    assert wire.transport.eof_written and not wire.transport.closing  # still reading, to discard
    wire.feed(b"x" * 1001)
    assert wire.take() == b""


@in_loop
async def test_chunked_body_over_the_limit_is_413():
    wire = Wire(make_app(), Limits(max_body_bytes=10))
    wire.feed(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"8\r\n12345678\r\n")
    assert wire.take() == b""
    wire.feed(b"8\r\n12345678\r\n")
    assert wire.take().startswith(b"HTTP/1.1 413 ")


@in_loop
async def test_reading_pauses_while_pipelined_requests_pile_up():
    gate = Gate()
    wire = Wire(make_app(gate), Limits(max_head_bytes=1024))
    wire.feed(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
    await wire.settle()
    wire.feed(GET_HEALTH * 40)  # > 1 KiB waiting behind /wait
    assert not wire.transport.reading
    gate.release.set()
    await wire.settle()
    assert wire.transport.reading
    assert wire.take().count(b"HTTP/1.1 200 OK") == 41


# -- errors answering HEAD ------------------------------------------------------------------------

@pytest.mark.parametrize("head, status, body", [
    (b"HEAD /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(101)) + b"\r\n",
     b"431 Request Header Fields Too Large",
     error_body("The request has more than 100 header fields.", "request_header_fields_too_large")),
    (b"HEAD /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414 Request-URI Too Long",
     error_body("The request target is longer than 8192 bytes.", "uri_too_long")),
    (b"HEAD /health HTTP/1.2\r\nHost: x\r\n\r\n", b"505 HTTP Version Not Supported",
     error_body("Only HTTP/1.0 and HTTP/1.1 are supported.", "http_version_not_supported")),
    (b"HEAD /health HTTP/1.1\r\nHost: x\r\nX-Test: a\x01b\r\n\r\n", b"400 Bad Request",
     error_body("Malformed HTTP request: a header value contains a control character.", "bad_request")),
    (b"HEAD /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
     b"400 Bad Request",
     error_body("A request must not carry both Content-Length and Transfer-Encoding.", "bad_request")),
], ids=["431", "414", "505", "control-byte", "cl-and-te"])
@in_loop
async def test_error_answering_a_head_request_has_the_headers_of_a_get_and_no_body(head, status, body):
    wire = Wire(make_app())
    wire.feed(head)
    assert wire.take() == error_bytes(status, body, parsed=True)[: -len(body)]  # Content-Length kept, no body
    assert wire.transport.eof_written


class ResetTransport(RecordingTransport):
    """A socket the client has reset: shutting down its write side fails, as asyncio's does."""

    def write_eof(self) -> None:
        raise ConnectionResetError(104, "Connection reset by peer")


@in_loop
async def test_a_reset_while_closing_after_an_error_just_closes():
    wire = Wire(make_app(), transport=ResetTransport())
    wire.feed(b"\x00garbage\r\n\r\n")  # answered 400, then the write side is shut: it raises
    assert wire.take().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert wire.transport.closing


# -- streams cut short -----------------------------------------------------------------------------

def _sse_app(produce, gate: Gate | None = None) -> App:
    from helios_raw.http.sse import sse_response

    app = make_app(gate)

    async def events(request):
        return sse_response(produce)

    app.add_route("GET", "/events", events)
    return app


SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n"
            b"content-type: text/event-stream\r\naccess-control-allow-origin: *\r\nx-request-id: ID\r\nopenai-processing-ms: MS\r\nserver: helios_raw\r\n"
            b"date: DATE\r\nTransfer-Encoding: chunked\r\n\r\n")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@in_loop
async def test_stream_at_the_shutdown_deadline_ends_with_an_error_event_done_and_a_last_chunk():
    started = asyncio.Event()

    async def produce(events):
        events.send({"n": 0})
        started.set()
        await asyncio.sleep(30)

    wire = Wire(_sse_app(produce))
    wire.feed(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    await started.wait()
    wire.protocol.abort_for_shutdown()
    await wire.settle()
    frames = (b'data: {"error":{"message":"The server is shutting down.","type":"server_error",'
              b'"param":null,"code":"server_shutting_down"}}\n\ndata: [DONE]\n\n')
    assert wire.take() == SSE_HEAD + _chunk(b'data: {"n":0}\n\n') + _chunk(frames) + b"0\r\n\r\n"
    assert wire.transport.closing


@in_loop
async def test_stream_whose_producer_raises_ends_with_a_server_error_event():
    async def produce(events):
        events.send({"n": 0})
        raise RuntimeError("secret")

    wire = Wire(_sse_app(produce))
    wire.feed(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    await wire.settle()
    frames = (b'data: {"error":{"message":"The server had an error while processing your request.",'
              b'"type":"server_error","param":null,"code":"internal_error"}}\n\ndata: [DONE]\n\n')
    assert wire.take() == SSE_HEAD + _chunk(b'data: {"n":0}\n\n') + _chunk(frames) + b"0\r\n\r\n"


@in_loop
async def test_head_of_a_stream_does_not_run_its_producer():
    ran = []

    async def produce(events):
        ran.append(True)

    wire = Wire(_sse_app(produce))
    wire.feed(b"HEAD /events HTTP/1.1\r\nHost: x\r\n\r\n")
    await wire.settle()
    assert wire.take() == SSE_HEAD and not ran


@in_loop
async def test_writer_of_a_finished_response_cannot_write_into_the_next_one():
    kept = []

    async def produce(events):
        kept.append(events)

    wire = Wire(_sse_app(produce, Gate()))
    wire.feed(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    await wire.settle()
    wire.take()
    wire.feed(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")  # held open: the next response in flight
    await wire.settle()
    kept[0].send({"stale": True})
    assert kept[0].closed and wire.take() == b""


@in_loop
async def test_client_leaving_cancels_the_handler_and_sets_cancelled():
    gate = Gate()
    wire = Wire(make_app(gate))
    wire.feed(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
    await wire.settle()
    wire.protocol.connection_lost(ConnectionResetError())
    await wire.settle()
    request = gate.requests[0]
    assert request.cancelled.is_set() and request.cancelled.reason == "client disconnected"
    assert wire.protocol.cycle is None and wire.take() == b""


@in_loop
async def test_paused_transport_makes_drain_wait_until_resumed():
    drained = asyncio.Event()

    async def produce(events):
        events.send({"n": 0})
        await events.drain()
        drained.set()

    wire = Wire(_sse_app(produce))
    wire.protocol.pause_writing()
    wire.feed(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    await wire.settle()
    assert not drained.is_set()
    wire.protocol.resume_writing()
    await wire.settle()
    assert drained.is_set()


@in_loop
async def test_pieces_a_worker_thread_hands_over_all_arrive_in_order_before_the_end():
    async def produce(writer):
        def work():
            for i in range(200):
                writer.write_threadsafe(b"<%d>" % i)

        await asyncio.to_thread(work)

    app = make_app()

    async def threaded(request):
        return StreamingResponse(produce, content_type="text/plain")

    app.add_route("GET", "/threaded", threaded)
    wire = Wire(app)
    wire.feed(b"GET /threaded HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(100):
        await asyncio.sleep(0.005)
        if wire.protocol.cycle is None:
            break
    out = wire.take()
    head, _, body = out.partition(b"\r\n\r\n")
    assert body.endswith(b"0\r\n\r\n")
    pieces, rest = [], body
    while True:
        size, _, rest = rest.partition(b"\r\n")
        if int(size, 16) == 0:
            break
        pieces.append(rest[: int(size, 16)])
        rest = rest[int(size, 16) + 2:]
    assert b"".join(pieces) == b"".join(b"<%d>" % i for i in range(200))
