"""One scrape, every worker: with ``--workers N`` the worker that answers ``GET /metrics`` adds
the other workers' metrics to its own.

Each worker answers its snapshot (JSON) on a Unix socket, ``worker-<index>.sock`` in a directory
the supervisor made for this server; the answering worker reads its siblings' concurrently. A
worker that is restarting or does not answer within ``timeout`` is left out of that scrape, and
``helios_worker_up`` says which were included. Each worker's samples carry a ``worker`` label, so
a restarted worker's counters start again from zero as a counter reset of its own series, which
Prometheus' ``rate()`` and ``increase()`` handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Callable, Optional

import orjson

Snapshot = Callable[[], list]


class Peers:
    """Worker ``index`` of ``count``, whose sockets live in ``directory``."""

    def __init__(self, directory: str, index: int, count: int, timeout: float = 2.0) -> None:
        self.directory = directory
        self.index = index
        self.count = count
        self.timeout = timeout
        self._snapshot: Optional[Snapshot] = None
        self._server: Optional[asyncio.AbstractServer] = None

    def path(self, index: int) -> str:
        return os.path.join(self.directory, f"worker-{index}.sock")

    async def start(self, snapshot: Snapshot) -> None:
        """Answer ``snapshot()`` to the other workers."""
        self._snapshot = snapshot
        self._server = await asyncio.start_unix_server(self._answer, path=self.path(self.index))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(OSError):
                os.unlink(self.path(self.index))

    async def gather(self) -> list:
        """``(worker, snapshot)`` of this worker and of every sibling that answered, in worker
        order, then the ``helios_worker_up`` family (no worker label of its own)."""
        others = [i for i in range(self.count) if i != self.index]
        found = dict(zip(others, await asyncio.gather(*(self._fetch(i) for i in others))))
        found[self.index] = self._snapshot()
        parts = [(str(i), found[i]) for i in range(self.count) if found[i] is not None]
        up = {"name": "helios_worker_up", "type": "gauge", "labels": ["worker"],
              "help": "1 if the worker's metrics are in this scrape, 0 if it did not answer (restarting).",
              "samples": [[[str(i)], int(found[i] is not None)] for i in range(self.count)]}
        return parts + [(None, [up])]

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(orjson.dumps(self._snapshot()))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _fetch(self, index: int) -> Optional[list]:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path(index)), self.timeout)
        except (OSError, asyncio.TimeoutError):
            return None
        try:
            return orjson.loads(await asyncio.wait_for(reader.read(), self.timeout))
        except (OSError, asyncio.TimeoutError, orjson.JSONDecodeError):
            return None
        finally:
            writer.close()
