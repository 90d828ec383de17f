"""The mutation fuzzer: generated requests over raw sockets, the oracle on every answer, and a
watch on the process and its log.

``workers`` connections run at once, each taking the next case of the seeded sequence. A 500 (or
any other failure :func:`wire.judge` names) is tied to the request that got it. A crash or an
alarm in the log is not, since several requests are in flight: the cases sent in the seconds
before it are replayed one at a time against a fresh server until one reproduces it (triage).
After a crash the server is restarted and the run goes on; a family that crashed it
``max_crashes`` times is left out for the rest of the run.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from dataclasses import dataclass, field

from benchmarks.reliability import cases, wire
from benchmarks.reliability.target import Target

#: Seconds a complete request may take to be answered (generous: the machine is shared, and the
#: model answers one generation at a time).
ANSWER_TIMEOUT = 60.0
#: Seconds to wait on a request that leaves the server waiting for more input.
INCOMPLETE_TIMEOUT = 1.0


@dataclass
class Finding:
    """One failure: its kind ("response", "log", "crash", or "known" for a reported bug awaiting
    its fix), the family, what happened, and the shortest request seen to cause it (its exact
    bytes, truncated past 4 KiB)."""

    kind: str
    family: str
    detail: str
    request: bytes
    count: int = 1
    #: What tells two findings apart (see :func:`signature_of`).
    signature: str = ""

    def __post_init__(self) -> None:
        self.signature = self.signature or signature_of(self.detail)

    def to_dict(self) -> dict:
        data = self.request if len(self.request) <= 4096 else self.request[:4096] + b"...(truncated)"
        return {"kind": self.kind, "family": self.family, "signature": self.signature, "detail": self.detail,
                "count": self.count, "request": data.decode("latin-1")}


def signature_of(detail: str) -> str:
    """A traceback's last frame and exception class (not its message, which names values), or
    the start of ``detail``."""
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    frames = [line for line in lines if line.startswith("File ")]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b", line)]
    if frames and errors:
        return f"{frames[-1]} | {errors[0].split(':', 1)[0]}"
    return detail[:160]


@dataclass
class FuzzResult:
    sent: int = 0
    by_family: collections.Counter = field(default_factory=collections.Counter)
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    #: {family: {status or outcome: count}}
    answers: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    findings: dict = field(default_factory=dict)
    crashes: int = 0
    alarms: int = 0
    disabled: list = field(default_factory=list)
    seconds: float = 0.0

    def add(self, finding: Finding) -> None:
        """Count a finding; one of the same kind and signature is kept once, with a count and the
        shortest request."""
        key = (finding.kind, finding.signature)
        kept = self.findings.get(key)
        if kept is None:
            self.findings[key] = finding
            return
        kept.count += 1
        if finding.request and (not kept.request or len(finding.request) < len(kept.request)):
            kept.request, kept.family = finding.request, finding.family

    def failures(self) -> list:
        """Findings that fail a run (all but the known ones)."""
        return [f for f in self.findings.values() if f.kind != "known"]

    def to_dict(self) -> dict:
        return {"sent": self.sent, "seconds": round(self.seconds, 1), "crashes": self.crashes, "alarms": self.alarms,
                "by_family": dict(self.by_family), "outcomes": dict(self.outcomes),
                "answers_by_family": {k: dict(sorted(v.items())) for k, v in sorted(self.answers.items())},
                "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))},
                "disabled_families": self.disabled,
                "findings": [f.to_dict() for f in self.findings.values()]}


class Fuzzer:
    """One fuzzing run against ``target`` (see the module docstring)."""

    def __init__(self, target: Target, seed: int, count: int, workers: int = 16, include_known: bool = False,
                 max_crashes: int = 3, log=print) -> None:
        self.target, self.seed, self.count, self.workers = target, seed, count, workers
        self.include_known, self.max_crashes, self.log = include_known, max_crashes, log
        self.result = FuzzResult()
        self.known = {f.name: f.known for f in cases.families(target.settings.model, True) if f.known}
        self.recent: collections.deque = collections.deque(maxlen=4096)  # (sent time, case)
        self.by_port: collections.OrderedDict = collections.OrderedDict()  # our port -> (connected at, case)
        self.triaged: dict = {}  # traceback signature -> the request a replay found for it
        self.cases_in_flight: dict = {}  # id -> case being exchanged
        self.cut_off: collections.deque = collections.deque(maxlen=256)  # (time, case) ended without an answer
        self.up = asyncio.Event()
        self.crashes_by_family: collections.Counter = collections.Counter()

    async def run(self) -> FuzzResult:
        started = time.monotonic()
        self.up.set()
        generated = cases.generate(self.seed, self.count, self.target.settings.model, self.include_known)
        watcher = asyncio.ensure_future(self._watch())
        try:
            await asyncio.gather(*(self._worker(generated) for _ in range(self.workers)))
        finally:
            watcher.cancel()
        await self._check(final=True)
        self.result.seconds = time.monotonic() - started
        return self.result

    async def _worker(self, generated) -> None:
        for case in generated:  # one shared generator: each case is taken by exactly one worker
            if case.family in self.result.disabled:
                continue
            await self.up.wait()
            self.recent.append((time.time(), case))
            self.cases_in_flight[id(case)] = case

            def connected(port: int, case=case) -> None:
                self.by_port[port] = (time.time(), case)
                self.by_port.move_to_end(port)
                if len(self.by_port) > 8192:
                    self.by_port.popitem(last=False)

            try:
                reply = await _send(self.target.port, case, connected)
            finally:
                del self.cases_in_flight[id(case)]
            if reply.outcome in ("closed", "reset", "malformed"):
                self.cut_off.append((time.time(), case))
            self.result.sent += 1
            self.result.by_family[case.family] += 1
            self.result.outcomes[reply.outcome] += 1
            if reply.status is not None:
                self.result.statuses[reply.status] += 1
            self.result.answers[case.family][str(reply.status or reply.outcome)] += 1
            if not self.up.is_set():
                continue  # the server died meanwhile: the crash is what is reported
            problem = wire.judge(reply, case.complete)
            if problem and reply.outcome != "response":
                # A crash closes the sockets a moment before the process can be seen dead.
                await asyncio.sleep(0.5)
                if not self.target.alive():
                    continue
            if problem:
                known = wire.known_issue(reply, case.half_close)
                self.result.add(self._finding("response", case, known or problem, bool(known)))

    def _finding(self, kind: str, case, detail: str, known: bool = False, signature: str = "") -> Finding:
        """A finding, reported as known when the request comes from a known bug's family."""
        signature = signature or signature_of(detail)
        if case is not None and case.family in self.known:
            return Finding("known", case.family, detail, case.data, signature=f"{self.known[case.family]}: {signature}")
        if case is None:
            return Finding(kind, "?", detail, b"", signature=signature)
        return Finding("known" if known else kind, case.family, detail, case.data, signature=signature)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            await self._check()

    async def _check(self, final: bool = False) -> None:
        """Look at the process and its new log lines: restart it after a crash, and find each
        alarm's request."""
        alarms = self.target.read_log(final=final)
        if not self.target.alive():
            self.up.clear()
            status = self.target.exit_status()
            self.result.crashes += 1
            # The culprit's connection died with the server: those cut off or still in flight
            # are replayed first, then everything sent in the last seconds.
            suspects = list(self.cases_in_flight.values()) + [c for at, c in self.cut_off if at > time.time() - 3.0]
            window = [case for at, case in self.recent if at > time.time() - 3.0]
            self.log(f"fuzz: the server died (exit status {status}); triage of {len(suspects)} suspects")
            loop = asyncio.get_running_loop()
            culprit, detail = await loop.run_in_executor(None, self._triage, suspects, "crash")
            if culprit is None:
                self.log(f"fuzz: no suspect reproduced the crash; triage of {len(window)} recent requests")
                culprit, detail = await loop.run_in_executor(None, self._triage, window, "crash")
            family = culprit.family if culprit else "?"
            self.result.add(self._finding("crash", culprit, detail or f"exit status {status}; log: "
                                          f"{self.target.log_tail(12)}", signature=f"crash: exit status {status}"))
            self.crashes_by_family[family] += 1
            if culprit and self.crashes_by_family[family] >= self.max_crashes and family not in self.result.disabled:
                self.result.disabled.append(family)
                self.log(f"fuzz: family {family} crashed the server {self.max_crashes} times; left out from now on")
            self.target.restart()
            self.up.set()
            return
        for alarm in alarms:
            self.result.alarms += 1
            # A traceback logged for a request is followed by its access log line, which names
            # our port: the request sent from it is the culprit. Otherwise the recent requests
            # are replayed, once for each kind of traceback.
            sent, culprit = self.by_port.get(alarm.port, (0.0, None))
            if alarm.at - sent > 120.0:  # a port used again long after: not this request
                culprit = None
            signature = signature_of(alarm.excerpt)
            if culprit is None and signature in self.triaged:
                culprit = self.triaged[signature]  # the request that showed it before stands for it
            elif culprit is None:
                window = [case for at, case in self.recent if at > alarm.at - 5.0]
                self.log(f"fuzz: the log shows {alarm.line[:100]!r}; triage of {len(window)} recent requests")
                self.up.clear()
                culprit, _ = await asyncio.get_running_loop().run_in_executor(None, self._triage, window, "alarm")
                self.up.set()
                self.triaged[signature] = culprit
            excerpt = alarm.excerpt if len(alarm.excerpt) <= 3000 else \
                alarm.excerpt[:1500] + "\n...\n" + alarm.excerpt[-1500:]
            self.result.add(self._finding("log", culprit, excerpt, signature=signature))

    def _triage(self, window: list, symptom: str) -> tuple:
        """Replay ``window`` one request at a time against a fresh server; the first request
        after which the server is dead (``crash``) or has logged an alarm (``alarm``)."""
        probe = Target(self.target.workdir, self.target.settings, name="triage")
        probe.start()
        try:
            for case in reversed(window[-400:]):  # the latest first: the likeliest culprits
                reply = asyncio.run(_send(probe.port, case))
                time.sleep(0.1)
                alarms = probe.read_log(final=True)
                if symptom == "crash" and not probe.alive():
                    return case, f"exit status {probe.exit_status()} after this request; log: {probe.log_tail(12)}"
                if symptom == "alarm" and alarms:
                    return case, alarms[0].excerpt
                del reply
            return None, None
        finally:
            probe.stop()


async def _send(port: int, case: cases.Case, on_connect=None) -> wire.Reply:
    return await wire.exchange(port, case.data, case.method, ANSWER_TIMEOUT if case.complete else INCOMPLETE_TIMEOUT,
                               case.half_close, abandon_after=case.abandon_after, on_connect=on_connect)


def run(target: Target, seed: int, count: int, workers: int = 16, include_known: bool = False,
        log=print) -> FuzzResult:
    """Fuzz ``target`` with ``count`` requests from ``seed``."""
    return asyncio.run(Fuzzer(target, seed, count, workers, include_known, log=log).run())
