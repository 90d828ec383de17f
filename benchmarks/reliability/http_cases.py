"""Fuzz families at the HTTP level: request line, headers, body framing, routes, pipelining.

Each starts from a request the server should accept and breaks one thing (sometimes two), with
the choices drawn from the seeded ``rng``.
"""

from __future__ import annotations

import json
import random

from benchmarks.reliability.cases import (
    JSON_HEADERS,
    Case,
    Family,
    chunk,
    pick,
    post_json,
    request,
)

ROUTES = ("/health", "/v1/models", "/api/version", "/api/items/42", "/api/large", "/v1/models/tiny")
SMALL_CHAT = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                         "temperature": 0}).encode()

METHODS = ("GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "get", "G\x00T",
           "GETT", "PRI", "M" * 300, "", "G ET", "\u00c9T", "PROPFIND")
TARGETS = ("/", "*", "/health?x=1", "/%00", "/%zz", "/..%2f..%2fetc/passwd", "/../../etc/passwd",
           "http://127.0.0.1/health", "//health", "/health#frag", "/v1//models", "/v1/models/",
           "/api/items/%F0%9F%98%80", "/api/items/\u00e9", "/api/items/" + "a" * 5000, "/?" + "q=1&" * 2000,
           "/" + "x" * 9000, "", " /health", "/health ", "/api/items/{item_id}", "/api/items/:item_id",
           "/v1/chat/completions?stream=true", "/\t", "/\x7f", "/api/items/../../health")
VERSIONS = ("HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.2", "HTTP/1", "HTTP/1.1 extra", "http/1.1",
            "HTTP/11", "", "HTTP/1.1\r", "HTTP/9.9")



def request_line(rng: random.Random) -> Case:
    method, target, version = pick(rng, METHODS), pick(rng, TARGETS), pick(rng, VERSIONS)
    sep = pick(rng, (" ", " ", " ", "  ", "\t", "\x0b"))
    end = pick(rng, ("\r\n", "\r\n", "\n", "\r"))
    line = f"{method}{sep}{target}{sep}{version}".encode("utf-8", "surrogateescape")
    data = line + end.encode() + b"Host: x" + end.encode() + end.encode()
    if rng.random() < 0.2:  # raw bytes that are not UTF-8 in the target
        data = data.replace(b"/", b"/\xff\xfe", 1)
    # A head that ends with CRLF CRLF is owed an answer, if only a 400; with other line ends the
    # server may still be waiting for the end of the head, so the client ends its input instead.
    ended = end == "\r\n"
    return Case("", data, "HEAD" if method == "HEAD" else "GET", complete=ended, half_close=not ended)


HEADER_NAMES = (b"X-Test", b"Content-Type", b"Accept", b"Connection", b"Expect", b"Authorization", b"Origin",
                b"Access-Control-Request-Method", b"Access-Control-Request-Headers", b"Transfer-Encoding",
                b"Content-Length", b"Host", b"Upgrade", b"Cookie", b"Accept-Encoding", b"Range", b"TE",
                b"X-Forwarded-For", b"Content-Encoding", b"Keep-Alive", b"x-api-key")
HEADER_VALUES = (b"", b"close", b"keep-alive", b"100-continue", b"application/json", b"text/plain",
                 b"application/json; charset=utf-16", b"*/*", b"Bearer ", b"Bearer " + b"k" * 3000, b"https://e.com",
                 b"POST", b"x-a, x-b", b"h2c", b"gzip", b"bytes=0-1", b"\xc3\xa9t\xc3\xa9", b"\xff\xfe",
                 b"a\x00b", b"a\tb", b" padded ", b"v" * 20000, b"chunked", b"-1", b"99999999999999999999",
                 b"1, 2", b"0x10", b"trailers", b"deflate, chunked")


def headers(rng: random.Random) -> Case:
    route = pick(rng, ROUTES + ("/v1/chat/completions",))
    method = "POST" if route == "/v1/chat/completions" else pick(rng, ("GET", "GET", "HEAD", "OPTIONS", "POST"))
    extra, weird = [], False
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(10)
        if kind < 5:
            name, value = pick(rng, HEADER_NAMES), pick(rng, HEADER_VALUES)
        elif kind == 5:
            name, value = b"X-" + bytes(rng.randrange(33, 127) for _ in range(rng.randrange(1, 30))), b"v"
        elif kind == 6:
            name, value = pick(rng, (b"Bad Name", b"Bad:Name", b"", b"\xc3\xa9", b"X\x00", b" Lead")), b"v"
        elif kind == 7:
            name, value = b"X-Fold", b"a\r\n folded"
        elif kind == 8:
            extra += [(b"X-Many-%d" % i, b"v") for i in range(rng.choice((50, 99, 101, 500)))]
            continue
        else:
            name, value = b"X-Long", b"v" * rng.choice((100, 8000, 16000, 17000, 70000))
        # Only a second framing header can leave the server waiting for body bytes that never
        # come; every other head, however malformed, is owed an answer (400, 431 ...).
        weird = weird or name in (b"Transfer-Encoding", b"Content-Length")
        extra.append((name, value))
    if rng.random() < 0.1:  # an empty Host
        extra.append((b"Host", b""))
    body = SMALL_CHAT if method == "POST" else None
    data = request(method, route, JSON_HEADERS + extra if body else extra, body)
    return Case("", data, method, complete=not weird, half_close=weird)


def framing(rng: random.Random) -> Case:
    body = SMALL_CHAT if rng.random() < 0.5 else b'{"a": 1}'
    path = "/v1/chat/completions" if body is SMALL_CHAT else "/api/echo"
    head = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    kind = rng.randrange(14)
    complete = False
    if kind == 0:    # declared shorter than sent: the rest is a pipelined garbage request
        data = head + b"Content-Length: %d\r\n\r\n" % (len(body) // 2) + body
    elif kind == 1:  # declared longer than sent
        data = head + b"Content-Length: %d\r\n\r\n" % (len(body) + rng.randrange(1, 1000)) + body
    elif kind == 2:  # two different lengths
        data = head + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(body), len(body) + 1) + body
    elif kind == 3:  # both framings
        data = head + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body) + chunk(body)
    elif kind == 4:  # chunk sizes that are not hex, negative, huge, or with extensions
        size = pick(rng, (b"zz", b"-1", b"ffffffffffffffffffff", b"0x10", b"1;ext=1", b"1 ; a=\"b\"", b"", b" 5",
                           b"7fffffffffffffff"))
        data = head + b"Transfer-Encoding: chunked\r\n\r\n" + size + b"\r\n" + body + b"\r\n0\r\n\r\n"
    elif kind == 5:  # the final chunk missing
        data = head + b"Transfer-Encoding: chunked\r\n\r\n" + chunk(body)[:-5]
    elif kind == 6:  # trailers after the last chunk
        data = head + b"Transfer-Encoding: chunked\r\n\r\n" + chunk(body)[:-2] + b"X-Trailer: 1\r\n\r\n"
        complete = True
    elif kind == 7:  # one byte per chunk
        data = head + b"Transfer-Encoding: chunked\r\n\r\n" + chunk(body, 1)
        complete = True
    elif kind == 8:  # unknown or stacked codings
        coding = pick(rng, (b"gzip", b"gzip, chunked", b"chunked, gzip", b"identity", b"chunked, chunked", b"x"))
        data = head + b"Transfer-Encoding: " + coding + b"\r\n\r\n" + chunk(body)
    elif kind == 9:  # a Content-Length that is not a number
        value = pick(rng, (b"-1", b"1e3", b"0x10", b"+5", b" 5", b"99999999999999999999999", b"", b"5, 5"))
        data = head + b"Content-Length: " + value + b"\r\n\r\n" + body
    elif kind == 10:  # over the body limit, announced
        data = head + b"Content-Length: %d\r\n\r\n" % (rng.choice((17, 100, 2048)) << 20) + body
    elif kind == 11:  # Expect: 100-continue, body sent at once
        data = head + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        complete = True
    elif kind == 12:  # a chunk with wrong CRLF after the data
        data = head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body) + body + b"XX0\r\n\r\n"
    else:            # bare LF line ends in the head (h11 accepts them)
        data = (head + b"Content-Length: %d\r\n\r\n" % len(body)).replace(b"\r\n", b"\n") + body
        complete = True
    return Case("", data, "POST", complete=complete, half_close=not complete)


def routes(rng: random.Random) -> Case:
    kind = rng.randrange(8)
    if kind == 0:
        data = request(pick(rng, ("GET", "HEAD")), pick(rng, ROUTES))
        return Case("", data, data.split(b" ", 1)[0].decode())
    if kind == 1:  # CORS preflight
        data = request("OPTIONS", pick(rng, ROUTES + ("/v1/chat/completions",)), [
            (b"Origin", pick(rng, (b"https://a.example", b"null", b"*", b"\xc3\xa9"))),
            (b"Access-Control-Request-Method", pick(rng, (b"POST", b"GET", b"BREW", b""))),
            (b"Access-Control-Request-Headers", pick(rng, (b"content-type", b"authorization, x-a", b"", b"\x01")))])
        return Case("", data, "OPTIONS", complete=True)
    if kind == 2:  # a method the route does not have
        data = request(pick(rng, ("POST", "PUT", "DELETE", "PATCH")), pick(rng, ROUTES), None, b"{}")
        return Case("", data, "POST")
    if kind == 3:  # custom endpoints with bodies of every kind
        body = pick(rng, (b"", b"{}", b"[1,2]", b"null", b"not json", b"\xff\xfe", b'{"a":' * 20, b"1" * 5000))
        path = pick(rng, ("/api/echo", "/api/items/7/tags/x", "/api/items/%2F/tags/%00"))
        method = "POST" if path == "/api/echo" else "PUT"
        ctype = pick(rng, (b"application/json", b"text/plain", b"application/x-www-form-urlencoded"))
        return Case("", request(method, path, [(b"Content-Type", ctype)], body), method)
    if kind == 4:  # HTTP/1.0, with and without keep-alive
        extra = [(b"Connection", b"keep-alive")] if rng.random() < 0.5 else []
        return Case("", request("GET", pick(rng, ROUTES), extra, version="HTTP/1.0"), "GET")
    if kind == 5:  # unknown paths
        path = "/" + "/".join(rng.choice(("v1", "api", "x", "..", "%2e", "chat", "completions"))
                              for _ in range(rng.randrange(1, 6)))
        return Case("", request("GET", path), "GET")
    if kind == 6:  # chat on the wrong method or media type
        media = pick(rng, (b"text/plain", b"application/xml", b"multipart/form-data; boundary=x", b""))
        return Case("", request("POST", "/v1/chat/completions", [(b"Content-Type", media)], SMALL_CHAT), "POST")
    return Case("", request("GET", "/v1/chat/completions"), "GET")


def pipeline(rng: random.Random) -> Case:
    parts = []
    for _ in range(rng.randrange(2, 6)):
        kind = rng.randrange(4)
        if kind == 0:
            parts.append(request("GET", pick(rng, ROUTES)))
        elif kind == 1:
            parts.append(post_json("/v1/chat/completions", SMALL_CHAT))
        elif kind == 2:
            parts.append(post_json("/api/echo", b'{"x": 1}'))
        else:
            parts.append(request("GET", "/health", [(b"Connection", b"close")]))
    data = b"".join(parts)
    if rng.random() < 0.3:  # cut in the middle of the last request
        data = data[:rng.randrange(len(data) - len(parts[-1]) + 1, len(data))]
    first = parts[0].split(b" ", 1)[0].decode()
    return Case("", data, first, complete=True)


def cors_headers(rng: random.Random) -> Case:
    """A preflight whose Access-Control-Request-Headers holds bytes beyond ASCII."""
    value = pick(rng, (b"\xc3\xa9", b"x-\xff", b"content-type, x-\xe6\x97\xa5", b"\x80"))
    extra = [(b"Origin", b"https://a.example"), (b"Access-Control-Request-Method", b"POST")] if rng.random() < 0.5 else []
    data = request("OPTIONS", pick(rng, ROUTES), extra + [(b"Access-Control-Request-Headers", value)])
    return Case("", data, "OPTIONS")


FAMILIES = [
    Family("request_line", request_line, 10),
    Family("headers", headers, 12),
    Family("framing", framing, 12),
    Family("routes", routes, 8),
    Family("pipeline", pipeline, 5),
    Family("cors_headers", cors_headers, 1),
]
