"""Raw VT responses: stored before use, content-addressed, only growing, reused in the window."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vt_pipeline.storage.responses import ResponseStore

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SHA256 = "a" * 64


def body(malicious: int, date: int) -> dict:
    return {
        "data": {
            "type": "file",
            "id": SHA256,
            "attributes": {
                "last_analysis_date": date,
                "last_analysis_stats": {"malicious": malicious},
            },
        }
    }


def test_a_stored_response_is_reused_inside_the_window_only(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path)
    store.put("file", SHA256, body(3, 1), now=NOW)
    hit = store.recent("file", SHA256, timedelta(hours=24), now=NOW + timedelta(hours=23))
    assert hit is not None and hit.body == body(3, 1) and hit.fetched_at == NOW
    assert store.recent("file", SHA256, timedelta(hours=24), now=NOW + timedelta(hours=24)) is None
    assert store.recent("file", SHA256, timedelta(0), now=NOW) is None  # 0 disables the cache
    assert store.recent("file", "b" * 64, timedelta(hours=24), now=NOW) is None


def test_a_new_analysis_adds_a_file_and_never_overwrites_the_older_one(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path)
    first = store.put("file", SHA256, body(3, 1), now=NOW)
    first_bytes = first.path.read_bytes()
    store.put("file", SHA256, body(9, 2), now=NOW + timedelta(hours=1))
    store.put("file", SHA256, body(9, 2), now=NOW + timedelta(hours=2))  # same content again
    versions = store.versions("file", SHA256)
    assert len(versions) == 2
    assert first.path.read_bytes() == first_bytes
    latest = store.latest("file", SHA256)
    assert latest is not None
    assert latest.body == body(9, 2) and latest.fetched_at == NOW + timedelta(hours=2)
    assert json.loads(first.path.read_bytes()) == body(3, 1)  # stored exactly as received


@pytest.mark.parametrize("object_id", ["../../etc/passwd", "http://x/?a=b", "x" * 300, "a/b"])
def test_unsafe_ids_never_become_paths(tmp_path: Path, object_id: str) -> None:
    store = ResponseStore(tmp_path)
    stored = store.put("url", object_id, {"data": {"id": object_id}}, now=NOW)
    assert stored.path.resolve().is_relative_to((tmp_path / "vt_responses" / "url").resolve())
    assert stored.path.parent.name.startswith("sha256-")
    assert store.recent("url", object_id, timedelta(hours=1), now=NOW) is not None


def test_a_corrupt_pointer_means_ask_virustotal_again(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path)
    stored = store.put("domain", "example.com", {"data": {"id": "example.com"}}, now=NOW)
    (stored.path.parent / "latest.json").write_text('{"file": "../../x.json"}')
    assert store.recent("domain", "example.com", timedelta(hours=1), now=NOW) is None
    with pytest.raises(ValueError):
        store.put("../x", "example.com", {}, now=NOW)
