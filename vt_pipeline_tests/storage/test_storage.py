"""Samples land content-addressed, verified, owner-only; nothing partial survives a failure."""

import hashlib
import json
import os
import stat
import time
from pathlib import Path

import dagster as dg
import pytest

from vt_pipeline.storage.store import (
    STALE_TEMPORARY_SECONDS,
    ArtifactHashMismatch,
    ArtifactStore,
    ArtifactTooLarge,
    PartitionedFileIOManager,
    StorageResource,
    dumps_json,
    partition_path,
    sniff_mime_type,
)

SAMPLE = b"MZ" + bytes(range(256)) * 10
SHA256 = hashlib.sha256(SAMPLE).hexdigest()


def test_sample_is_stored_by_hash_with_owner_only_permissions(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with store.writer(SHA256) as sink:
        sink.write(SAMPLE[:100])
        sink.write(SAMPLE[100:])
    path = store.path_for(SHA256)
    assert path == tmp_path / "artifacts" / "sha256" / SHA256[:2] / SHA256
    assert path.read_bytes() == SAMPLE
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert not mode & 0o111  # never executable
    assert stat.S_IMODE((tmp_path / "artifacts").stat().st_mode) == 0o700


def test_corrupt_download_keeps_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(ArtifactHashMismatch), store.writer(SHA256) as sink:
        sink.write(SAMPLE[:-1])
    assert not store.has(SHA256)
    assert list(store.path_for(SHA256).parent.iterdir()) == []


def test_size_cap_stops_the_stream(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(ArtifactTooLarge), store.writer(SHA256, max_bytes=1000) as sink:
        sink.write(SAMPLE)
    assert not store.has(SHA256)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, SHA256[:-1], SHA256 + "/x", ""])
def test_only_a_sha256_can_become_a_path(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        ArtifactStore(tmp_path).path_for(bad)


def test_stored_json_is_canonical() -> None:
    assert dumps_json({"b": [1, "é"], "a": None}) == '{"a":null,"b":[1,"é"]}'.encode()


def test_mime_sniffing_reads_magic_only() -> None:
    assert sniff_mime_type(SAMPLE[:16]) == "application/x-dosexec"
    assert sniff_mime_type(b"%PDF-1.7") == "application/pdf"
    assert sniff_mime_type(b"\x00\x01") == "application/octet-stream"


def test_text_utf8_cannot_carry_is_stored_escaped_and_reads_back_exactly() -> None:
    value = {"names": ["invoice\udc80.exe", "é"]}
    data = dumps_json(value)
    assert data == b'{"names":["invoice\\udc80.exe","\\u00e9"]}'
    assert json.loads(data) == value


def test_stale_temporaries_are_swept_when_the_store_opens(tmp_path: Path) -> None:
    part_dir = tmp_path / "artifacts" / "sha256" / "85"
    part_dir.mkdir(parents=True)
    old, fresh = part_dir / ".part-old", part_dir / ".part-fresh"
    sample = part_dir / ("85" + "0" * 62)  # a stored sample, however old, stays
    for path in (old, fresh, sample):
        path.write_bytes(b"x" * 10)
    stale = time.time() - STALE_TEMPORARY_SECONDS - 60
    os.utime(old, (stale, stale))
    os.utime(sample, (stale, stale))
    store = ArtifactStore(tmp_path)
    assert store.swept == [old]
    assert not old.exists() and fresh.exists() and sample.exists()


def test_the_io_manager_sweeps_its_stale_tmp_files(tmp_path: Path) -> None:
    asset_dir = tmp_path / "livehunt_notifications"
    asset_dir.mkdir()
    old, fresh = asset_dir / ".tmp-old", asset_dir / ".tmp-fresh"
    for path in (old, fresh):
        path.write_bytes(b"{}")
    stale = time.time() - STALE_TEMPORARY_SECONDS - 60
    os.utime(old, (stale, stale))

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a"]))
    def livehunt_notifications() -> dict[str, list[int]]:
        return {"a": [1]}

    dg.materialize(
        [livehunt_notifications],
        partition_key="a",
        resources={"io_manager": PartitionedFileIOManager(base_dir=str(tmp_path))},
    )
    assert not old.exists() and fresh.exists()
    assert json.loads((asset_dir / "a.json").read_bytes()) == [1]


def test_stored_json_reads_what_the_io_manager_wrote(tmp_path: Path) -> None:
    storage = StorageResource(base_dir=str(tmp_path))
    assert storage.stored_json(["asset"], "2026-11-20-02:00") is None
    path = partition_path(tmp_path, ["asset"], "2026-11-20-02:00", ".json")
    path.parent.mkdir()
    path.write_bytes(dumps_json([{"a": "\udc80"}]))
    assert storage.stored_json(["asset"], "2026-11-20-02:00") == [{"a": "\udc80"}]
    path.write_bytes(b"[{")
    with pytest.raises(ValueError, match=r"not valid JSON.*move it aside"):
        storage.stored_json(["asset"], "2026-11-20-02:00")
