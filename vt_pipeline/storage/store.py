"""Where vt_pipeline keeps what it fetches and derives: one base directory.

- `PartitionedFileIOManager` stores every partitioned asset value at
  `{base}/{asset}/{partition}.json` (lists, dicts) or `.parquet` (DataFrames), written atomically.
  Partitioned assets exchange `{partition_key: value}` mappings, so one run can cover a range of
  windows (a backfill) and still store - and later reload - each window on its own. Inputs are
  `PartitionMap`s read one window at a time, and an asset may return one whose windows are made
  as the IO manager writes them: a run holds about one window's values, not the whole day's.
- `ArtifactStore` keeps downloaded samples content-addressed at
  `{base}/artifacts/sha256/ab/<sha256>` with owner-only permissions and no execute bit. A path
  is only ever built from a validated SHA-256, never from a name VirusTotal supplies.
- Temporary files that a killed process left behind are swept: `.part-*` of downloads when an
  `ArtifactStore` opens, `.tmp-*` of atomic writes when the IO manager writes that asset
  (`sweep_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, TypeVar

import dagster as dg
import pandas as pd

STORAGE_DIR_ENV = "VT_PIPELINE_STORAGE_DIR"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SAFE_COMPONENT = re.compile(r"[^A-Za-z0-9_.:=-]")
# A temporary file not written to for this long belongs to no live writer. Age is the time since
# the last write (mtime), and a live writer keeps writing: a download streams its body into a
# fresh `.part-` file per attempt, and an attempt is cut after the resource's `timeout_seconds`
# (default 120 s, body included), so no live part file goes unwritten for longer than that; an
# atomic JSON/Parquet write lasts seconds. Six hours is far beyond both (raised timeouts
# included) and still frees the disk on the next run of the day.
STALE_TEMPORARY_SECONDS = 6 * 3600
_TEMPORARY_PREFIXES = (".part-", ".tmp-")


def default_storage_dir(env: Mapping[str, str] | None = None) -> str:
    """`$VT_PIPELINE_STORAGE_DIR`, else `$DAGSTER_HOME/storage`, else `./.dagster_home/storage`."""
    env = os.environ if env is None else env
    if env.get(STORAGE_DIR_ENV):
        return env[STORAGE_DIR_ENV]
    home = env.get("DAGSTER_HOME") or os.path.abspath(".dagster_home")
    return os.path.join(home, "storage")


def dumps_json(value: Any) -> bytes:
    """The one JSON encoding used for stored values: sorted keys, compact, UTF-8.

    Same value, same bytes: this is what makes a re-materialized bundle byte-identical. Text
    that UTF-8 cannot carry (a lone surrogate VT sent as `\\udc80`) is written as a `\\u`
    escape instead, so the raw value is still stored and reads back exactly.
    """
    try:
        return _json_text(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return _json_text(value, ensure_ascii=True).encode()


def _json_text(value: Any, ensure_ascii: bool) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=ensure_ascii, separators=(",", ":"))


def partition_path(
    base_dir: str | os.PathLike[str], asset_path: Sequence[str], key: str, ext: str
) -> Path:
    """Where a partition of an asset is stored: `{base}/{asset}/{key}{ext}` (key made safe)."""
    return Path(base_dir, *asset_path) / f"{_SAFE_COMPONENT.sub('_', key)}{ext}"


def sweep_stale_temporaries(
    directory: Path, max_age_seconds: float = STALE_TEMPORARY_SECONDS, now: float | None = None
) -> list[Path]:
    """Delete the `.part-*` / `.tmp-*` files under `directory` last written more than
    `max_age_seconds` ago; returns what was removed. The default, six hours, is far longer than
    a live writer goes without writing (see STALE_TEMPORARY_SECONDS for why).

    A killed download or write leaves its temporary file forever otherwise (211 MB seen). A
    file that vanishes meanwhile (its writer finished) is simply skipped.
    """
    if not directory.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - max_age_seconds
    removed = []
    for prefix in _TEMPORARY_PREFIXES:
        for path in directory.rglob(f"{prefix}*"):
            with contextlib.suppress(FileNotFoundError):
                if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
    return sorted(removed)


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a file behind."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


V = TypeVar("V")


class PartitionMap(Mapping[str, Any]):
    """A read-only `{partition_key: value}` whose values are made when read and never kept.

    `make(key)` loads (an IO manager input) or computes (an asset's output) one window's value;
    each read calls it again, and nothing holds the value once the reader lets it go. So a step
    that reads a window, uses it and moves on to the next holds one window at a time, and a
    step that returns a `PartitionMap` has each window made while the IO manager writes it,
    one after the other: a day of 100,000 Livehunt notifications is never in memory at once.
    Read each key once where the value is costly (`items()` reads every key once).
    """

    def __init__(self, keys: Iterable[str], make: Callable[[str], Any]) -> None:
        self._keys = list(dict.fromkeys(keys))
        self._known = frozenset(self._keys)
        self._make = make

    def __getitem__(self, key: str) -> Any:
        if key not in self._known:
            raise KeyError(key)
        return self._make(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"PartitionMap({self._keys[:3]}{'...' if len(self._keys) > 3 else ''})"

    def __class_getitem__(cls, item: Any) -> type[PartitionMap]:
        """`Partitions[T]` is the class itself at run time: Dagster maps it to PARTITIONS_TYPE,
        a check that reads no value (Dagster's own `Dict[String, T]` check reads every value,
        which would load a whole day of windows to check it)."""
        return cls


PARTITIONS_TYPE = dg.DagsterType(
    type_check_fn=lambda _, value: isinstance(value, Mapping),
    name="Partitions",
    description="{partition_key: value}, one value per window; read one window at a time",
    typing_type=PartitionMap,
)
dg.make_python_type_usable_as_dagster_type(PartitionMap, PARTITIONS_TYPE)

if TYPE_CHECKING:
    Partitions = Mapping[str, V]
else:
    # The annotation of a partitioned asset's inputs and output (see PartitionMap).
    Partitions = PartitionMap

# How much the IO manager holds of a run's written values, in bytes of the files they were
# written to. Parsed, a value takes about 4.5 times its file's size (a Livehunt notification:
# 6.0 KB of JSON, 27 KiB of Python objects), so this holds ~75 MiB. A 1,000-notification day of
# Livehunt writes less than this, all held (no step re-parses it); a 100,000-notification day
# writes ~100 times as much, of which only this much is held and the rest is read back when used.
HELD_BYTES = 16 << 20


class PartitionedFileIOManager(dg.ConfigurableIOManager):
    """Stores each partition of an asset as one file under `base_dir`; see the module docstring.

    `handle_output` takes any mapping of the step's partition keys, a `PartitionMap` too: it
    reads, writes and lets go of one window after the other. `load_input` returns a
    `PartitionMap` that reads a window when the step asks for it, so memory follows the window,
    not the run, to an input annotated `Partitions[...]`; any other input gets a dict.

    A value this process wrote in the current run is handed to the steps downstream as it was
    written, without reading the file back, while the file is still the one written (same inode,
    size and modification time), up to HELD_BYTES of files. In a run of the in-process executor
    (the default) every step of a backfill's day otherwise re-parses what the step before it
    just wrote: a fifth of the CPU of a 1,000-notification Livehunt run. The values are plain
    JSON data (dicts, lists, strings, numbers) and DataFrames, which read back equal, and no
    asset changes its inputs in place (the tests compare both paths). Only the current run's
    values are held: a new run (or a file changed by anyone) starts from the files again, and
    the end of a run lets them go.
    """

    base_dir: str
    held_bytes: int = HELD_BYTES  # see HELD_BYTES; 0 reads every value back from its file

    def _path(
        self, context: dg.InputContext | dg.OutputContext, partition_key: str, ext: str
    ) -> Path:
        return partition_path(self.base_dir, context.asset_key.path, partition_key, ext)

    def handle_output(self, context: dg.OutputContext, obj: Mapping[str, Any]) -> None:
        keys = context.asset_partition_keys if context.has_asset_partitions else ["all"]
        if not isinstance(obj, Mapping) or set(obj) != set(keys):
            raise TypeError(
                f"{context.asset_key.to_user_string()} must return a mapping keyed by its "
                f"partition keys {sorted(keys)[:3]}..., got {type(obj).__name__}"
            )
        sweep_stale_temporaries(Path(self.base_dir, *context.asset_key.path))
        run_id = _run_id(context)
        for key in list(obj):  # in the step's own order (Dagster's keys come in any order)
            value = obj[key]  # a PartitionMap makes the window here, once
            if isinstance(value, pd.DataFrame):
                path = self._path(context, key, ".parquet")
                write_atomically(path, partial(value.to_parquet, index=False))
            elif isinstance(value, EncodedList):  # read back from its file when used
                path = self._path(context, key, ".json")
                write_atomically(path, value.write)
                del value
                continue
            else:
                path = self._path(context, key, ".json")
                write_atomically(path, partial(_write_bytes, dumps_json(value)))
            _WRITTEN.remember(run_id, path, value, self.held_bytes)
            del value
        if len(keys) == 1:
            context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> Mapping[str, Any]:
        keys = context.asset_partition_keys if context.has_asset_partitions else ["all"]
        run_id = _run_id(context)
        found: dict[str, Path] = {}
        for key in keys:  # every window must be there before the step starts
            parquet = self._path(context, key, ".parquet")
            path = self._path(context, key, ".json")
            if parquet.exists():
                found[key] = parquet
            elif path.exists():
                found[key] = path
            else:
                raise FileNotFoundError(
                    f"{context.asset_key.to_user_string()} partition {key} is not "
                    f"materialized (no {path}); materialize it first"
                )

        def load(key: str) -> Any:
            path = found[key]
            held = _WRITTEN.recall(run_id, path)
            if held is not _MISSING:
                return held
            if path.suffix == ".parquet":
                return pd.read_parquet(path)
            return json.loads(path.read_bytes())

        values = PartitionMap(keys, load)
        if context.dagster_type is not PARTITIONS_TYPE:
            return dict(values)  # an input annotated as a dict gets one, read at once
        return values

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """The run is over: what it wrote is no longer held in memory."""
        _WRITTEN.forget()


_MISSING = object()


def _run_id(context: dg.InputContext | dg.OutputContext) -> str | None:
    """The run the step belongs to; None for contexts built outside a run (tests)."""
    try:
        if isinstance(context, dg.OutputContext):
            return context.run_id
        return context.step_context.run_id
    except dg.DagsterInvariantViolationError:
        return None


class _WrittenValues:
    """The values written in this process's current run, by path, with the file's identity;
    up to a limit of bytes of files (the first written are held, the rest read back when used)."""

    def __init__(self) -> None:
        self._run_id: str | None = None
        self._values: dict[Path, tuple[tuple[int, int, int], Any]] = {}
        self._lock = threading.Lock()
        self._bytes = 0

    @staticmethod
    def _identity(path: Path) -> tuple[int, int, int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def remember(self, run_id: str | None, path: Path, value: Any, limit: int) -> None:
        if run_id is None:
            return
        identity = self._identity(path)
        with self._lock:
            if run_id != self._run_id:
                self._run_id, self._values, self._bytes = run_id, {}, 0
            former = self._values.pop(path, None)  # a window written again replaces its value
            if former is not None:
                self._bytes -= former[0][1]
            if identity is not None and self._bytes + identity[1] <= limit:
                self._values[path] = (identity, value)
                self._bytes += identity[1]

    def forget(self) -> None:
        with self._lock:
            self._run_id, self._values, self._bytes = None, {}, 0

    def recall(self, run_id: str | None, path: Path) -> Any:
        with self._lock:
            if run_id is None or run_id != self._run_id or path not in self._values:
                return _MISSING
            identity, value = self._values[path]
        return value if self._identity(path) == identity else _MISSING


_WRITTEN = _WrittenValues()


def _write_bytes(data: bytes, handle: BinaryIO) -> None:
    handle.write(data)


class Spool:
    """JSON values on their way to a stored record: a line of canonical JSON each in an unnamed
    temporary file (nothing left behind, even by a killed process), read back once. What a step
    receives faster than it can store, e.g. a busy Livehunt window's pages, waits here instead
    of in memory. In `directory` (the storage base: the disk the records go to, not a /tmp
    that may be memory), made if missing."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True, mode=0o700)
        # closed by lines()/close(), not by a with block: it outlives the call that opens it
        self._file: IO[bytes] = tempfile.TemporaryFile(  # noqa: SIM115
            prefix=".tmp-spool-", dir=directory
        )

    def add(self, value: Any) -> None:
        self._file.write(dumps_json(value) + b"\n")  # JSON escapes every newline in a value

    def lines(self) -> Iterator[bytes]:
        """Each value added, as its canonical JSON (no newline), in order; then closed."""
        with self._file:
            self._file.seek(0)
            for line in self._file:
                yield line.rstrip(b"\n")

    def close(self) -> None:
        self._file.close()


class EncodedList:
    """A JSON list whose items are already encoded as canonical JSON (`dumps_json`): the IO
    manager writes `[item,item,...]`, the bytes `dumps_json` gives the parsed list (one item's
    ASCII fallback aside, which reads back the same), without ever parsing the whole list.
    A busy Livehunt window's record is 4,200 notifications: 25 MB encoded, 113 MiB parsed."""

    def __init__(self, items: Iterable[bytes]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def write(self, handle: BinaryIO) -> None:
        handle.write(b"[")
        for index, item in enumerate(self.items):
            if index:
                handle.write(b",")
            handle.write(item)
        handle.write(b"]")


class StorageResource(dg.ConfigurableResource):
    """The base directory of stored values and samples, for assets that write files themselves."""

    base_dir: str

    def artifact_store(self) -> ArtifactStore:
        return ArtifactStore(self.base_dir)

    def stored_json(self, asset_path: Sequence[str], partition_key: str) -> Any | None:
        """What the IO manager (same `base_dir`) stored for a JSON partition, None if nothing.

        Lets an asset merge a re-read with its earlier stored record instead of replacing it.
        An unreadable file raises: overwriting it could lose the only copy.
        """
        path = partition_path(self.base_dir, asset_path, partition_key, ".json")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise ValueError(
                f"stored {'/'.join(asset_path)} partition {partition_key} ({path}) is not "
                f"valid JSON ({exc}); move it aside to re-read the window from scratch"
            ) from exc


class ArtifactTooLarge(Exception):
    """The sample grew past the size cap while it was being written; nothing was kept."""


class ArtifactHashMismatch(Exception):
    """The bytes received do not hash to the SHA-256 asked for (a truncated or corrupt download)."""


class ArtifactStore:
    """Content-addressed sample storage. Samples are live malware: never executed, 0600 files."""

    def __init__(self, base_dir: str | os.PathLike[str]) -> None:
        self.root = Path(base_dir, "artifacts", "sha256")
        self.swept = sweep_stale_temporaries(self.root)
        self._directories: set[Path] = set()  # sample directories known to exist

    def path_for(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a SHA-256: {sha256[:80]!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def size(self, sha256: str) -> int:
        return self.path_for(sha256).stat().st_size

    @contextlib.contextmanager
    def writer(self, sha256: str, max_bytes: int = 0) -> Iterator[SampleWriter]:
        """Stream bytes in; on exit they are verified against `sha256` and moved into place.

        Raises ArtifactHashMismatch / ArtifactTooLarge and keeps nothing if the check fails.
        """
        sink = self.sample_writer(sha256, max_bytes)
        try:
            yield sink
            sink.commit()
        finally:
            sink.discard()

    def sample_writer(self, sha256: str, max_bytes: int = 0) -> SampleWriter:
        """A writer for one sample: `write()` the bytes, then `commit()` (verify, fsync, move
        into place) or `discard()`. See `SampleWriter` for why the two are apart."""
        return SampleWriter(self, self.path_for(sha256), sha256, max_bytes)

    def _temporary(self, final: Path) -> tuple[int, str]:
        """A fresh owner-only `.part-` file beside `final` (its directory made once)."""
        directory = final.parent
        if directory not in self._directories:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.root.parent, 0o700)
            self._directories.add(directory)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".part-")  # 0600 by construction
        return fd, tmp


class SampleWriter:
    """The bytes of one sample on their way into the store, hashed and size-capped.

    `write()` is cheap enough for an event loop: a sample is kept in memory up to
    `SPILL_BYTES` (most samples), and only a larger one goes to a `.part-` file as it streams.
    `commit()` does the blocking part - create the file, fsync, verify the SHA-256, rename - so
    an async downloader runs it in a worker thread while its other downloads go on (408
    samples committed on the loop cost ~40 % of the Livehunt artifacts step). Nothing reaches
    the final path unless it hashes to the expected SHA-256; `discard()` removes what is left.
    """

    SPILL_BYTES = 4 << 20

    def __init__(self, store: ArtifactStore, final: Path, sha256: str, max_bytes: int) -> None:
        self._store = store
        self._final = final
        self._sha256 = sha256
        self._max = max_bytes
        self._hash = hashlib.sha256()
        self._chunks: list[bytes] = []
        self._fd: int | None = None
        self._tmp: str | None = None
        # commit() may run in a worker thread while a cancelled download calls discard()
        self._lock = threading.Lock()
        self.written = 0

    def write(self, chunk: bytes) -> int:
        self.written += len(chunk)
        if self._max and self.written > self._max:
            raise ArtifactTooLarge(f"sample exceeds the {self._max}-byte artifact cap")
        if self._fd is None and self.written <= self.SPILL_BYTES:
            self._chunks.append(bytes(chunk))
            return len(chunk)
        self._spill()
        self._hash.update(chunk)
        _write_all(self._fd, chunk)  # type: ignore[arg-type]
        return len(chunk)

    def _spill(self) -> None:
        """Move the bytes held in memory to the `.part-` file (created on first need)."""
        if self._fd is None:
            self._fd, self._tmp = self._store._temporary(self._final)
        for held in self._chunks:
            self._hash.update(held)
            _write_all(self._fd, held)
        self._chunks.clear()

    def digest(self) -> str:
        """SHA-256 of every byte written so far."""
        state = self._hash.copy()
        for held in self._chunks:
            state.update(held)
        return state.hexdigest()

    def commit(self) -> int:
        """Verify, fsync and move the sample into place; its size. Blocking (file I/O)."""
        with self._lock:
            return self._commit()

    def _commit(self) -> int:
        self._spill()
        assert self._fd is not None and self._tmp is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        if self._hash.hexdigest() != self._sha256:
            raise ArtifactHashMismatch(
                f"downloaded {self.written} bytes hash to {self._hash.hexdigest()}, "
                f"expected {self._sha256}"
            )
        os.replace(self._tmp, self._final)
        self._tmp = None
        return self.written

    def discard(self) -> None:
        """Drop what was written and not committed (no-op after a commit)."""
        with self._lock:
            self._chunks.clear()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._tmp)
                self._tmp = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"MZ", "application/x-dosexec"),
    (b"\x7fELF", "application/x-executable"),
    (b"%PDF", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "application/x-ole-storage"),
    (b"{\\rtf", "text/rtf"),
)


def sniff_mime_type(head: bytes) -> str:
    """A MIME type from a sample's first bytes: read as data, never executed or opened."""
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    return "application/octet-stream"
