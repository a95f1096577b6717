"""The VirusTotal emulator's request log, read back as the Livehunt benchmark reads it to
rebuild the round trips a corpus needs (pages, rulesets, downloads) and their order."""

from __future__ import annotations

import io
import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import vt

from vt_pipeline.emulators.virustotal import api as vt_api
from vt_pipeline.emulators.virustotal.corpus import generate_corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator

END = datetime(2026, 11, 20, tzinfo=UTC)
START = END - timedelta(hours=24)
KEY = "demo"
LATENCY_MS = 20.0
STREAM = {"filter": "source_type:hunting_ruleset", "limit": 10, "descriptors_only": "false"}


@pytest.fixture
def emulator() -> Iterator[VirusTotalEmulator]:
    emulator = VirusTotalEmulator(generate_corpus(3, 60, START, END), latency_ms=LATENCY_MS)
    with emulator.serve():
        yield emulator


def two_pages(client: vt.Client) -> list[dict[str, Any]]:
    first = client.get_json("/ioc_stream", params=STREAM)
    cursor = first["meta"]["cursor"]
    second = client.get_json("/ioc_stream", params={**STREAM, "cursor": cursor})
    return [first, second]


def served_files(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["data"] if item["type"] == "file"]


def named_rulesets(page: dict[str, Any]) -> set[str]:
    return {
        source["id"]
        for item in page["data"]
        for source in item["context_attributes"]["sources"]
        if source["type"] == "hunting_ruleset"
    }


def get_log(url: str) -> tuple[list[dict[str, Any]], int]:
    with urllib.request.urlopen(f"{url}/_emulator/requests") as response:
        return json.load(response), int(response.headers["X-Emulator-Requests-Dropped"])


def test_a_page_entry_names_its_filter_cursor_files_and_rulesets(
    emulator: VirusTotalEmulator,
) -> None:
    with vt.Client(KEY, host=emulator.url) as client:
        pages = two_pages(client)
    log = emulator.requests()
    assert [entry["endpoint"] for entry in log] == ["ioc_stream", "ioc_stream"]
    for entry, page in zip(log, pages, strict=True):
        assert entry["status"] == 200
        assert entry["filter"] == STREAM["filter"]
        assert entry["files"] == served_files(page)
        assert set(entry["rulesets"]) == named_rulesets(page)
        assert len(entry["rulesets"]) == len(set(entry["rulesets"]))
        # start before the injected latency, end after the response.
        assert entry["end"] - entry["start"] >= LATENCY_MS / 1000
    assert any(served_files(page) for page in pages)  # the corpus serves files on these pages
    assert log[0]["cursor"] is None
    assert log[1]["cursor"] == pages[0]["meta"]["cursor"]
    assert log[0]["end"] <= log[1]["start"]  # the second page waited for the first


def test_a_download_s_two_entries_name_the_same_sha256_and_a_ruleset_its_id(
    emulator: VirusTotalEmulator,
) -> None:
    with vt.Client(KEY, host=emulator.url) as client:
        page = client.get_json("/ioc_stream", params=STREAM)
        sha256 = served_files(page)[0]
        md5 = emulator.corpus.find_file(sha256)["attributes"]["md5"]  # type: ignore[index]
        emulator.reset_stats()
        client.download_file(md5, io.BytesIO())  # by md5: the log still names the sha256
        ruleset = sorted(named_rulesets(page))[0]
        client.get_json(f"/intelligence/hunting_rulesets/{ruleset}")
    log = emulator.requests()
    assert [(e["endpoint"], e["status"]) for e in log] == [
        ("file_download", 302),
        ("sample", 200),
        ("hunting_ruleset", 200),
    ]
    assert log[0]["file"] == log[1]["sha256"] == sha256
    assert log[0]["end"] <= log[1]["start"]  # the redirect is followed once answered
    assert log[2]["ruleset"] == ruleset


def test_the_http_log_matches_and_reset_clears_it(emulator: VirusTotalEmulator) -> None:
    with vt.Client(KEY, host=emulator.url) as client:
        two_pages(client)
        client.get_json(f"/users/{KEY}/overall_quotas")
    log, dropped = get_log(emulator.url)
    assert log == emulator.requests() and dropped == 0
    assert [entry["endpoint"] for entry in log] == ["ioc_stream", "ioc_stream", "overall_quotas"]
    assert get_log(emulator.url)[0] == log  # reading the log is not logged

    request = urllib.request.Request(f"{emulator.url}/_emulator/stats", method="DELETE")
    urllib.request.urlopen(request).close()
    assert emulator.requests() == [] and get_log(emulator.url) == ([], 0)
    with vt.Client(KEY, host=emulator.url) as client:
        client.get_json(f"/users/{KEY}/overall_quotas")
    assert len(emulator.requests()) == 1
    emulator.reset_stats()
    assert emulator.requests() == [] and emulator.stats() == {}


def test_the_log_is_bounded_and_counts_what_it_dropped(
    emulator: VirusTotalEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vt_api, "REQUEST_LOG_LIMIT", 2)
    with vt.Client(KEY, host=emulator.url) as client:
        for _ in range(5):
            client.get_json(f"/users/{KEY}/overall_quotas")
    assert len(emulator.requests()) == 2 and emulator.requests_dropped == 3
    assert emulator.count("overall_quotas") == 5  # the counts still see every request
    assert get_log(emulator.url)[1] == 3
    emulator.reset_stats()
    assert emulator.requests_dropped == 0
