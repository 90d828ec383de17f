"""HTTP/1.1 on asyncio + h11: protocol, routing, requests, responses, the listener."""
