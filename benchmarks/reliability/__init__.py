"""A reliability harness for helios_raw: a mutation fuzzer over raw sockets, a soak under mixed
load, and deliberately slow clients, against a helios_raw subprocess on a loopback port.

``run.py`` runs them in order and judges the run; ``python -m benchmarks.reliability [--long]``.
``target.py`` starts and watches the server, ``wire.py`` speaks raw bytes and holds the oracle,
``cases.py`` / ``http_cases.py`` / ``body_cases.py`` generate the requests, ``fuzz.py``,
``soak.py`` and ``slow.py`` are the three phases, ``results.py`` writes the report.
"""
