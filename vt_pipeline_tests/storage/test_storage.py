"""Samples land content-addressed, verified, owner-only; nothing partial survives a failure."""

import hashlib
import stat
from pathlib import Path

import pytest

from vt_pipeline.storage.store import (
    ArtifactHashMismatch,
    ArtifactStore,
    ArtifactTooLarge,
    dumps_json,
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
