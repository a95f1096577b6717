"""Pure parts of the VirusTotal emulator: fault specs, stream queries, quotas, and its CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import vt

from vt_pipeline.emulators.virustotal.faults import (
    BODY_FAULTS,
    STATUS_FAULTS,
    FaultInjector,
    parse_fault_spec,
)
from vt_pipeline.emulators.virustotal.ioc_stream import (
    StreamQueryError,
    decode_cursor,
    parse_filter,
    parse_limit,
)
from vt_pipeline.emulators.virustotal.quotas import UNLIMITED, QuotaTracker


def test_fault_spec_rules() -> None:
    rules = parse_fault_spec("ioc_stream:429:0.3, file_download:truncated:0.2:5,*:503:0.05")
    assert [(r.endpoint, r.kind, r.rate, r.remaining) for r in rules] == [
        ("ioc_stream", "429", 0.3, None),
        ("file_download", "truncated", 0.2, 5),
        ("*", "503", 0.05, None),
    ]
    assert parse_fault_spec("") == []


@pytest.mark.parametrize(
    "spec",
    ["ioc_stream:429", "nope:429:1", "file:418:1", "file:500:2", "file:500:x", "file:500:1:-1"],
)
def test_bad_fault_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_fault_spec(spec)


def test_fault_injector_separates_status_and_body_faults() -> None:
    injector = FaultInjector("file:truncated:1,file:500:1:1")
    assert injector.pick("file", STATUS_FAULTS) == "500"
    assert injector.pick("file", STATUS_FAULTS) is None  # its one burst is spent
    assert injector.pick("file", BODY_FAULTS) == "truncated"
    assert injector.pick("domain", BODY_FAULTS) is None


def test_stream_filter_terms() -> None:
    query = parse_filter(
        "date:2026-11-20T10:00:00+ date:1795000000- notification_tag:a "
        "source_type:hunting_ruleset notification_tag:b"
    )
    assert query.since == int(datetime(2026, 11, 20, 10, tzinfo=UTC).timestamp())
    assert query.until == 1795000000
    assert query.tags == ("a", "b") and query.source_types == ("hunting_ruleset",)
    assert parse_filter("date:2026-11-20T10:00:00Z+").since == query.since
    assert parse_filter("").since is None


@pytest.mark.parametrize("text", ["date:2026-11-20", "tag:x", "notification_tag:", "date:x+"])
def test_bad_stream_filters(text: str) -> None:
    with pytest.raises(StreamQueryError):
        parse_filter(text)


def test_limits_and_cursors() -> None:
    assert parse_limit(None) == 10 and parse_limit("40") == 40
    for bad in ("0", "41", "-1", "x"):
        with pytest.raises(StreamQueryError):
            parse_limit(bad)
    for bad in ("", "!!", "WzEsIDJd", "bnVsbA"):  # empty, not base64, [1, 2], null
        with pytest.raises(StreamQueryError):
            decode_cursor(bad)


def test_quota_windows_and_report() -> None:
    now = [86400.0 * 20000 + 30]
    quotas = QuotaTracker(per_minute=2, per_day=3, clock=lambda: now[0])
    assert [quotas.consume("k") for _ in range(3)][:2] == [None, None]
    assert quotas.consume("k") is not None  # still the same minute, refusals do not count
    now[0] += 60
    assert quotas.consume("k") is None
    assert "per day" in str(quotas.consume("k"))
    assert quotas.report("k")["api_requests_daily"]["user"] == {"allowed": 3, "used": 3}
    now[0] += 86400
    assert quotas.consume("k") is None
    unlimited = QuotaTracker(0, 0, clock=lambda: now[0])
    assert unlimited.report("k")["api_requests_monthly"]["user"]["allowed"] == UNLIMITED


CLI = (
    "import sys; from vt_pipeline.emulators.virustotal.server import main; "
    "sys.exit(main(sys.argv[1:]))"
)


def test_command_line_serves_until_interrupted() -> None:
    command = [
        sys.executable,
        "-c",
        CLI,
        *("--port", "0", "--seed", "4", "--notifications", "30", "--public-key", "pub"),
        *("--start", "2026-11-19T00:00:00", "--end", "2026-11-20T00:00:00Z"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("VirusTotal emulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        with vt.Client("demo", host=url) as client:
            assert len(client.get_json("/ioc_stream", params={"limit": 40})["data"]) == 30
        with vt.Client("pub", host=url) as client, pytest.raises(vt.APIError):
            client.get_json("/ioc_stream")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
