"""The Livehunt benchmark's latency-bound floor (`benchmarks/livehunt.py`, a script, imported by
path): hand-made request logs whose makespans are known, and one real emulator log."""

from __future__ import annotations

import importlib.util
import io
import itertools
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import vt

from vt_pipeline.emulators.virustotal.corpus import generate_corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "livehunt.py"
L = 0.05  # seconds per round trip


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("livehunt_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load()
_clock = itertools.count()


def entry(endpoint: str, status: int = 200, **detail: Any) -> dict[str, Any]:
    """A log entry as `GET /_emulator/requests` serves it, in increasing start order."""
    start = float(next(_clock))
    return {"endpoint": endpoint, "status": status, "start": start, "end": start + L, **detail}


def page(
    window: str, cursor: str | None, files: tuple[str, ...] = (), rulesets: tuple[str, ...] = ()
) -> dict[str, Any]:
    return entry(
        "ioc_stream", filter=window, cursor=cursor, files=list(files), rulesets=list(rulesets)
    )


def download(sha256: str) -> list[dict[str, Any]]:
    return [entry("file_download", 302, file=sha256), entry("sample", sha256=sha256)]


def ruleset(ruleset_id: str) -> dict[str, Any]:
    return entry("hunting_ruleset", ruleset=ruleset_id)


def rounds(log: list[dict[str, Any]], concurrency: int) -> float:
    floor = bench.latency_floor(log, concurrency, L)
    assert floor.seconds == pytest.approx(floor.rounds * L)
    return floor.rounds


def test_one_window_of_three_pages_is_three_round_trips() -> None:
    log = [page("w", None), page("w", "c1"), page("w", "c2")]
    floor = bench.latency_floor(log, 32, L)
    assert floor.seconds == pytest.approx(3 * L)
    assert floor.lower_bound_seconds == pytest.approx(3 * L)
    assert floor.longest_chain == 3 and floor.windows == 1
    assert floor.round_trips == {
        "ioc_stream": 3,
        "hunting_ruleset": 0,
        "file_download": 0,
        "sample": 0,
    }


def test_64_independent_downloads_at_32_slots_take_four_round_trips() -> None:
    log = [e for n in range(64) for e in download(f"{n:064x}")]
    floor = bench.latency_floor(log, 32, L)
    assert floor.rounds == 4 and floor.seconds == pytest.approx(4 * L)
    assert floor.lower_bound_seconds == pytest.approx(4 * L)  # ceil(128 / 32) > chain of 2
    assert floor.round_trips["file_download"] == floor.round_trips["sample"] == 64
    assert rounds(log, 64) == 2 and rounds(log, 128) == 2


def test_downloads_and_rulesets_wait_for_the_page_that_lists_them() -> None:
    # page 1 lists A; page 2 lists B and names R: p1 | p2, A | A's sample, B, R | B's sample.
    log = [
        page("w", None, files=("a",)),
        *download("a"),
        page("w", "c1", files=("b",), rulesets=("r",)),
        ruleset("r"),
        *download("b"),
    ]
    floor = bench.latency_floor(log, 32, L)
    assert floor.rounds == 4 and floor.longest_chain == 4
    assert floor.lower_bound_seconds == pytest.approx(4 * L)
    assert rounds(log, 2) == 4  # never more than two ready at once
    # Without its page the same download would be ready at once: two round trips.
    assert rounds(download("b"), 32) == 2


def test_a_ruleset_is_ready_after_the_first_page_naming_it() -> None:
    log = [
        page("w1", None, rulesets=("r",)),
        page("w2", None),
        page("w2", "c1"),
        page("w2", "c2", rulesets=("r",)),
        ruleset("r"),
    ]
    assert rounds(log, 32) == 3  # r runs beside w2's second page, not after its third


def test_concurrency_one_is_the_sum_of_the_round_trips() -> None:
    log = [
        page("w1", None, files=("a", "b"), rulesets=("r1",)),
        ruleset("r1"),
        *download("a"),
        *download("b"),
        page("w1", "c1", files=("c",), rulesets=("r1", "r2")),
        ruleset("r2"),
        *download("c"),
        page("w2", None, files=("a",), rulesets=("r1",)),  # listed again: downloaded once
    ]
    noise = [
        page("w1", "c1", files=("c",), rulesets=("r1", "r2")),  # the same page fetched again
        entry("ioc_stream", 429, filter="w2", cursor="c9", files=[], rulesets=[]),
        entry("hunting_ruleset", 503, ruleset="r3"),  # a refusal, retried: r3 not needed
        entry("hunting_ruleset", 200, ruleset="r1"),  # fetched twice: one round trip
        entry("overall_quotas"),
        entry("ioc_stream_delete"),
    ]
    floor = bench.latency_floor(log + noise, 1, L)
    expected = {"ioc_stream": 3, "hunting_ruleset": 2, "file_download": 3, "sample": 3}
    assert floor.round_trips == expected
    assert floor.rounds == sum(expected.values()) == 11 and floor.windows == 2
    assert floor.seconds == pytest.approx(11 * L)
    assert floor.lower_bound_seconds == pytest.approx(11 * L)
    with pytest.raises(ValueError):
        bench.latency_floor(log, 0, L)


def test_the_longest_path_goes_first() -> None:
    # One slot per round beside the chain: a download's first half must not wait behind the
    # rulesets, or its sample ends a round later.
    log = [page("w", None, files=("a",), rulesets=("r1", "r2")), ruleset("r1"), ruleset("r2")]
    log += download("a")
    assert rounds(log, 1) == 5
    assert rounds(log, 2) == 3  # p | a, r1 | a's sample, r2 (not r1, r2 | a | a's sample)


def test_mean_in_flight() -> None:
    log = [
        {"endpoint": "file_download", "status": 302, "start": 0.0, "end": 1.0},
        {"endpoint": "sample", "status": 200, "start": 0.0, "end": 2.0},
        {"endpoint": "overall_quotas", "status": 200, "start": 5.0, "end": 9.0},
    ]
    assert bench.mean_in_flight(log) == (2.0, 1.5)
    assert bench.mean_in_flight([]) == (0.0, 0.0)


def test_the_floor_of_a_real_emulator_log() -> None:
    """The log vt-py leaves on the emulator has what the floor reads: a window's pages in a
    chain, a download's two round trips on one sha256, the rulesets by id."""
    end = datetime(2026, 11, 20, tzinfo=UTC)
    emulator = VirusTotalEmulator(generate_corpus(3, 60, end - timedelta(hours=24), end))
    window = {"filter": "source_type:hunting_ruleset", "limit": 10}
    with emulator.serve() as url, vt.Client("demo", host=url) as client:
        files: list[str] = []
        rulesets: set[str] = set()
        cursor: str | None = None
        pages = 0
        while True:
            params = {**window, "cursor": cursor} if cursor else window
            body = client.get_json("/ioc_stream", params=params)
            pages += 1
            for item in body["data"]:
                rulesets |= {s["id"] for s in item["context_attributes"]["sources"]}
                if item["type"] == "file" and item["id"] not in files:
                    files.append(item["id"])
            cursor = body["meta"].get("cursor")
            if not cursor:
                break
        for sha256 in files[:3]:
            client.download_file(sha256, io.BytesIO())
        for ruleset_id in sorted(rulesets):
            client.get_json(f"/intelligence/hunting_rulesets/{ruleset_id}")
        client.get_json("/users/demo/overall_quotas")
    log = emulator.requests()
    floor = bench.latency_floor(log, 1, L)
    assert floor.round_trips == {
        "ioc_stream": pages,
        "hunting_ruleset": len(rulesets),
        "file_download": 3,
        "sample": 3,
    }
    assert pages > 2 and floor.rounds == len(log) - 1  # all but overall_quotas
    wide = bench.latency_floor(log, 64, L)
    assert wide.rounds >= pages  # the chain of pages bounds it
    assert wide.longest_chain <= wide.rounds <= floor.rounds


def _row(seconds: float, peak_rss: float, calls: int, size: int) -> dict[str, Any]:
    """A pipeline row as `summarize` + `fastest` make it, with made-up figures."""
    return {
        "variant": "pipeline",
        "max_concurrency": 32,
        "cache_rulesets": True,
        "success": True,
        "seconds": seconds,
        "seconds_each": [seconds],
        "seconds_max": seconds,
        "repeats": 1,
        "notifications_per_second": size / seconds,
        "notifications_seen": size,
        "kept": size // 2,
        "artifacts": size // 4,
        "artifact_bytes": size * 1000,
        "stix_objects": size * 3,
        "vt_api_calls": calls,
        "vt_api_calls_by_endpoint": {"ioc_stream": calls},
        "vt_api_calls_per_notification": calls / size,
        "http_requests": calls,
        "http_requests_per_notification": calls / size,
        "http_errors": 0,
        "peak_rss_mib": peak_rss,
        "setup_peak_rss_mib": 240.0,
        "steps_seconds": {"livehunt_notifications": seconds / 2},
        "steps_peak_rss_mib": {"livehunt_notifications": peak_rss},
        "run_overhead_seconds": 0.5,
    }


FLOOR = {
    "seconds": 100.0,
    "rounds": 334,
    "lower_bound_seconds": 100.0,
    "longest_chain": 140,
    "round_trips": {"ioc_stream": 2630},
    "windows": 24,
    "concurrency": 32,
    "latency_ms": 300.0,
    "log_dropped": 0,
    "measured_vt_seconds": 110.0,
    "measured_mean_in_flight": 30.0,
}


@pytest.mark.parametrize(
    ("seconds", "peak_rss", "calls", "met"),
    [
        (140.0, 900.0, 40_000, True),
        (160.0, 900.0, 40_000, False),  # 1.6x the floor
        (140.0, 1100.0, 40_000, False),  # above 1 GiB
        (140.0, 900.0, 46_000, False),  # 0.46 VT calls per notification
    ],
)
def test_the_300_ms_targets_at_100000_without_a_baseline(
    seconds: float, peak_rss: float, calls: int, met: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """At 100,000 the sequential baseline is not measured (hours): the verdicts are the floor,
    the run's peak RSS and the VT calls per notification, printed with PASS/FAIL."""
    size, goals = 100_000, bench.TARGETS[300.0]
    rows = {"pipeline": bench.fastest([_row(seconds, peak_rss, calls, size)])}
    targets = bench.verdicts(size, goals, rows["pipeline"], None, FLOOR)
    ok, summary = bench.report(size, 300.0, goals, rows, FLOOR, targets, True, None)
    printed = capsys.readouterr().out
    assert ok is met
    assert "sequential baseline: not measured at this size" in printed
    assert "peak RSS MiB while each step ran" in printed
    assert ("FAIL" in summary) is not met
    assert f"end to end / floor {seconds / 100:.2f}" in summary
