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
    EncodedList,
    PartitionedFileIOManager,
    PartitionMap,
    Partitions,
    SampleWriter,
    Spool,
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


def test_a_large_sample_spills_to_disk_as_it_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past SPILL_BYTES the bytes go to a `.part-` file while they stream; the result is the
    same sample, and a mismatch leaves nothing behind either way."""
    monkeypatch.setattr(SampleWriter, "SPILL_BYTES", 1000)
    store = ArtifactStore(tmp_path)
    sink = store.sample_writer(SHA256)
    for start in range(0, len(SAMPLE), 700):
        sink.write(SAMPLE[start : start + 700])
    parts = list(store.path_for(SHA256).parent.glob(".part-*"))
    assert len(parts) == 1  # spilled before the end
    assert sink.commit() == len(SAMPLE)
    assert store.path_for(SHA256).read_bytes() == SAMPLE
    assert not list(store.path_for(SHA256).parent.glob(".part-*"))

    other = hashlib.sha256(b"x" * 5000).hexdigest()
    broken = store.sample_writer(other)
    broken.write(b"x" * 4999)
    with pytest.raises(ArtifactHashMismatch):
        broken.commit()
    broken.discard()
    assert not store.has(other)
    assert not list(store.path_for(other).parent.glob(".part-*"))


def test_a_sample_commits_in_a_worker_thread_and_a_cancelled_one_keeps_nothing(
    tmp_path: Path,
) -> None:
    """What the downloader does: write on the event loop, commit in a thread; a download
    cancelled before its commit discards its bytes."""
    import asyncio

    store = ArtifactStore(tmp_path)

    async def main() -> int:
        done = store.sample_writer(SHA256)
        done.write(SAMPLE)
        size = await asyncio.to_thread(done.commit)
        cancelled = store.sample_writer(hashlib.sha256(b"y").hexdigest())
        cancelled.write(b"y")
        cancelled.discard()
        return size

    assert asyncio.run(main()) == len(SAMPLE)
    assert store.path_for(SHA256).read_bytes() == SAMPLE
    assert not store.has(hashlib.sha256(b"y").hexdigest())


HANDED: dict[str, object] = {}


def test_a_value_written_in_the_run_is_handed_on_unless_its_file_changed(tmp_path: Path) -> None:
    """The next step gets the very object the step before returned (no parse); a file changed
    in between is read from disk; a later run reads the files."""
    keys = dg.StaticPartitionsDefinition(["a", "b"])
    seen: list[tuple[bool, bool, list[int], list[int]]] = []

    @dg.asset(partitions_def=keys)
    def upstream(context: dg.AssetExecutionContext) -> dict[str, list[int]]:
        value = {key: [1, 2] for key in context.partition_keys}
        HANDED.update(value)
        return value

    @dg.asset(partitions_def=keys, deps=[upstream])
    def tamper(context: dg.AssetExecutionContext) -> dict[str, int]:
        # another writer replaces partition b's file between the two steps
        partition_path(tmp_path, ["upstream"], "b", ".json").write_bytes(b"[9]")
        return {key: 0 for key in context.partition_keys}

    @dg.asset(partitions_def=keys, deps=[tamper])
    def downstream(
        context: dg.AssetExecutionContext, upstream: dict[str, list[int]]
    ) -> dict[str, bool]:
        a, b = upstream["a"], upstream["b"]
        seen.append((a is HANDED.get("a"), b is HANDED.get("b"), a, b))
        return {key: True for key in context.partition_keys}

    io_manager = PartitionedFileIOManager(base_dir=str(tmp_path))
    tags = {"dagster/asset_partition_range_start": "a", "dagster/asset_partition_range_end": "b"}
    with dg.instance_for_test() as instance:
        dg.materialize(
            [upstream, tamper, downstream],
            instance=instance,
            tags=tags,
            resources={"io_manager": io_manager},
        )
        dg.materialize(
            [upstream.to_source_asset(), tamper.to_source_asset(), downstream],
            instance=instance,
            selection=[downstream.key],
            tags=tags,
            resources={"io_manager": io_manager},
        )
    assert seen[0] == (True, False, [1, 2], [9])  # a handed on as written, b read back
    assert seen[1] == (False, False, [1, 2], [9])  # a new run reads both files


def test_a_partition_map_makes_a_value_on_every_read_and_keeps_none() -> None:
    made: list[str] = []

    def make(key: str) -> list[str]:
        made.append(key)
        return [key]

    values = PartitionMap(["b", "a", "b"], make)
    assert list(values) == ["b", "a"] and len(values) == 2 and made == []
    assert values["a"] == ["a"] and values["a"] == ["a"]
    assert made == ["a", "a"]  # nothing kept between reads
    with pytest.raises(KeyError):
        values["c"]


def test_the_io_manager_writes_each_window_before_it_makes_the_next(tmp_path: Path) -> None:
    """What bounds a run's memory: a step returning a PartitionMap has its windows made one at
    a time, each written (and let go) before the next is made; its input comes back the same
    way, one window per read, with the partition-scoped metadata the windows added."""
    keys = dg.StaticPartitionsDefinition(["a", "b", "c"])
    order: list[tuple[str, list[str]]] = []

    def written() -> list[str]:
        return sorted(p.stem for p in (tmp_path / "windows").glob("*.json"))

    @dg.asset(partitions_def=keys)
    def windows(context: dg.AssetExecutionContext) -> Partitions[list[int]]:
        def make(key: str) -> list[int]:
            order.append((key, written()))
            context.add_asset_metadata({"made": key}, partition_key=key)
            return [ord(key)]

        return PartitionMap(context.partition_keys, make)

    @dg.asset(partitions_def=keys)
    def reader(windows: Partitions[list[int]]) -> Partitions[int]:
        assert isinstance(windows, PartitionMap)
        return {key: windows[key][0] for key in windows}

    tags = {"dagster/asset_partition_range_start": "a", "dagster/asset_partition_range_end": "c"}
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [windows, reader],
            instance=instance,
            tags=tags,
            resources={"io_manager": PartitionedFileIOManager(base_dir=str(tmp_path))},
        )
    assert result.success
    # each window was made once all those made before it were written, in the step's order
    assert [key for key, _ in order] == ["a", "b", "c"]
    assert all(before == sorted(k for k, _ in order[:i]) for i, (_, before) in enumerate(order))
    made = {
        event.materialization.partition: event.materialization.metadata["made"].value
        for event in result.get_asset_materialization_events()
        if event.materialization.asset_key == windows.key
    }
    assert made == {"a": "a", "b": "b", "c": "c"}
    assert json.loads(partition_path(tmp_path, ["reader"], "c", ".json").read_bytes()) == 99


def test_an_encoded_list_is_written_as_the_list_it_encodes(tmp_path: Path) -> None:
    items = [{"b": 1, "a": "\u00e9\n"}, [1, 2], "x", {"z": None}]
    path = tmp_path / "record.json"
    with open(path, "wb") as handle:
        EncodedList(dumps_json(item) for item in items).write(handle)
    assert path.read_bytes() == dumps_json(items)
    with open(path, "wb") as handle:
        EncodedList([]).write(handle)
    assert json.loads(path.read_bytes()) == []


def test_a_spool_gives_back_what_it_took_and_leaves_no_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "base")
    values = [{"id": 1, "text": "a\nb"}, {"id": 2, "bad": "\udc80"}]
    for value in values:
        spool.add(value)
    assert list((tmp_path / "base").iterdir()) == []  # unnamed: nothing a crash leaves behind
    assert [json.loads(line) for line in spool.lines()] == values


def test_the_hand_over_holds_values_up_to_its_byte_limit(tmp_path: Path) -> None:
    """Past `held_bytes` of files, the next step reads the value back from its file."""
    keys = dg.StaticPartitionsDefinition(["a", "b"])
    handed: dict[str, list[int]] = {}
    seen: dict[str, bool] = {}

    @dg.asset(partitions_def=keys)
    def upstream(context: dg.AssetExecutionContext) -> dict[str, list[int]]:
        handed.update({key: list(range(100)) for key in context.partition_keys})
        return dict(handed)

    @dg.asset(partitions_def=keys)
    def downstream(upstream: Partitions[list[int]]) -> dict[str, bool]:
        seen.update({key: upstream[key] is handed[key] for key in upstream})
        return {key: True for key in upstream}

    one_file = len(dumps_json(list(range(100))))
    tags = {"dagster/asset_partition_range_start": "a", "dagster/asset_partition_range_end": "b"}
    with dg.instance_for_test() as instance:
        io_manager = PartitionedFileIOManager(base_dir=str(tmp_path), held_bytes=one_file)
        dg.materialize(
            [upstream, downstream],
            instance=instance,
            tags=tags,
            resources={"io_manager": io_manager},
        )
    assert seen == {"a": True, "b": False}  # a held, b over the limit: read back
