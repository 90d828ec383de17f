"""The reliability harness's short run (``benchmarks/reliability``) against a real helios_raw
process serving the tiny test model: 1,200 seeded fuzzed requests over raw sockets, slow clients
(slowloris, a trickled then abandoned body, clients that never read), and a 30 s soak at 64
keep-alive connections. Requests that trigger bugs already reported (the harness's ``known``
families and scenarios) are left out; ``python -m benchmarks.reliability --long`` runs them too.

No timing is asserted beyond the server's own timeouts plus generous margins; the sequence of
requests is fixed by the seed.
"""

from __future__ import annotations

import pytest

from benchmarks.reliability import run as reliability


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    workdir = str(tmp_path_factory.mktemp("reliability"))
    return reliability.run(reliability.SHORT, model=True, seed=1, workdir=workdir, log=lambda text: None)


def test_the_server_survives_fuzzing_without_a_crash_or_a_traceback(report):
    fuzzed = report["fuzz"]
    assert fuzzed["sent"] >= 1000
    assert fuzzed["crashes"] == 0, fuzzed["findings"]
    assert report["alive_at_end"]
    logged = [f for f in fuzzed["findings"] if f["kind"] in ("log", "crash")]
    assert not logged, logged
    assert not report["alarms"], report["alarms"][0]["excerpt"]


def test_every_fuzzed_request_gets_a_well_formed_answer_and_no_undocumented_5xx(report):
    fuzzed = report["fuzz"]
    failures = [f for f in fuzzed["findings"] if f["kind"] == "response"]
    assert not failures, [(f["signature"], f["request"][:300]) for f in failures]
    # The run covered every family and both accepting and refusing answers.
    assert set(fuzzed["by_family"]) >= {"request_line", "headers", "framing", "routes", "pipeline",
                                         "chat_fields", "schemas", "unicode", "nesting", "json_bytes", "abandon"}
    assert fuzzed["statuses"].get("200", 0) > 0 and fuzzed["statuses"].get("400", 0) > 0


def test_slow_clients_are_dropped_while_the_server_keeps_answering(report):
    for scenario in report["slow"]:
        assert scenario["passed"], scenario
        assert scenario["health_ok"] > 0 and scenario["health_failed"] == 0, scenario
    answers = {s["name"]: s["answers"] for s in report["slow"]}
    assert answers["slowloris"] == {"408": reliability.SHORT.slow_clients}


def test_the_soak_has_no_errors_and_memory_and_descriptors_come_back(report):
    soaked = report["soak"]
    assert soaked["requests"] > 1000
    assert soaked["error_count"] == 0, soaked["errors"]
    assert not any(status.startswith("5") for status in soaked["statuses"]), soaked["statuses"]
    base, after = soaked["baseline"], soaked["after"]
    assert after["rss_mib"] <= base["rss_mib"] * 1.05, (base, after)
    assert after["fds"] <= base["idle_fds"], (base, after)


def test_the_verdict_agrees(report):
    assert report["passed"], report["missed"]
