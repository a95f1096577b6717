"""Where vt_pipeline keeps what it fetches and derives: one base directory.

- `PartitionedFileIOManager` stores every partitioned asset value at
  `{base}/{asset}/{partition}.json` (lists, dicts) or `.parquet` (DataFrames), written atomically.
  Partitioned assets exchange `{partition_key: value}` dicts, so one run can cover a range of
  windows (a backfill) and still store - and later reload - each window on its own.
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
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

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


class PartitionedFileIOManager(dg.ConfigurableIOManager):
    """Stores each partition of an asset as one file under `base_dir`; see the module docstring."""

    base_dir: str

    def _path(
        self, context: dg.InputContext | dg.OutputContext, partition_key: str, ext: str
    ) -> Path:
        return partition_path(self.base_dir, context.asset_key.path, partition_key, ext)

    def handle_output(self, context: dg.OutputContext, obj: dict[str, Any]) -> None:
        keys = context.asset_partition_keys if context.has_asset_partitions else ["all"]
        if not isinstance(obj, dict) or set(obj) != set(keys):
            raise TypeError(
                f"{context.asset_key.to_user_string()} must return a dict keyed by its partition "
                f"keys {sorted(keys)[:3]}..., got {type(obj).__name__}"
            )
        sweep_stale_temporaries(Path(self.base_dir, *context.asset_key.path))
        for key in keys:
            value = obj[key]
            if isinstance(value, pd.DataFrame):
                path = self._path(context, key, ".parquet")
                write_atomically(path, partial(value.to_parquet, index=False))
            else:
                path = self._path(context, key, ".json")
                write_atomically(path, partial(_write_bytes, dumps_json(value)))
        if len(keys) == 1:
            context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> dict[str, Any]:
        keys = context.asset_partition_keys if context.has_asset_partitions else ["all"]
        loaded: dict[str, Any] = {}
        for key in keys:
            parquet = self._path(context, key, ".parquet")
            if parquet.exists():
                loaded[key] = pd.read_parquet(parquet)
                continue
            path = self._path(context, key, ".json")
            if not path.exists():
                raise FileNotFoundError(
                    f"{context.asset_key.to_user_string()} partition {key} is not materialized "
                    f"(no {path}); materialize it first"
                )
            loaded[key] = json.loads(path.read_bytes())
        return loaded


def _write_bytes(data: bytes, handle: BinaryIO) -> None:
    handle.write(data)


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

    def path_for(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a SHA-256: {sha256[:80]!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def size(self, sha256: str) -> int:
        return self.path_for(sha256).stat().st_size

    @contextlib.contextmanager
    def writer(self, sha256: str, max_bytes: int = 0) -> Iterator[BinaryIO]:
        """Stream bytes in; on exit they are verified against `sha256` and moved into place.

        Raises ArtifactHashMismatch / ArtifactTooLarge and keeps nothing if the check fails.
        """
        final = self.path_for(sha256)
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root.parent, 0o700)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".part-")
        os.fchmod(fd, 0o600)
        sink = _HashingWriter(os.fdopen(fd, "wb"), max_bytes)
        try:
            yield sink  # type: ignore[misc]
            sink.close()
            if sink.digest() != sha256:
                raise ArtifactHashMismatch(
                    f"downloaded {sink.written} bytes hash to {sink.digest()}, expected {sha256}"
                )
            os.replace(tmp, final)
        finally:
            sink.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


class _HashingWriter:
    """A file sink that hashes as it writes and refuses to grow past a cap."""

    def __init__(self, handle: BinaryIO, max_bytes: int) -> None:
        self._handle = handle
        self._hash = hashlib.sha256()
        self._max = max_bytes
        self.written = 0

    def write(self, chunk: bytes) -> int:
        self.written += len(chunk)
        if self._max and self.written > self._max:
            raise ArtifactTooLarge(f"sample exceeds the {self._max}-byte artifact cap")
        self._hash.update(chunk)
        return self._handle.write(chunk)

    def digest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()


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
