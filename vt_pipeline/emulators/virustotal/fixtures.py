"""A corpus as a folder of JSON files in the API's own shapes, to replay captured VT responses.

Layout (every part optional)::

    notifications.json          list of /ioc_stream items (objects with context_attributes)
    files/<sha256>.json         {"data": file object}
    samples/<sha256>            raw bytes served by /files/{id}/download
    urls/<url id>.json          {"data": url object}; the url id is the SHA-256 of the URL
    domains/<domain>.json       {"data": domain object}
    ip_addresses/<ip>.json      {"data": ip_address object}
    resolutions/<domain>.json   {"data": [resolution objects]} for /domains/{d}/resolutions
    hunting_rulesets/<id>.json  {"data": hunting_ruleset object}
    yara_rulesets/<id>.json     {"data": yara_ruleset object}

File names are object ids percent-encoded (``urllib.parse.quote(id, safe="")``), so IPv6
addresses and hostile ids stay valid names; the id itself is read from the JSON. The object of
a notification is also served by its lookup endpoint unless a file of its own overrides it.

A folder the emulator cannot serve raises `FixtureError`, naming the file, the item and what is
wrong. Only what the emulator itself needs is checked (ids, types, the stream's dates, tags and
sources); attributes are served as they are, hostile values included, since replaying what VT
really sent is the point.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from vt_pipeline.emulators.virustotal.corpus import COLLECTIONS, Corpus, StreamEntry
from vt_pipeline.emulators.virustotal.samples import MIB

_SHA256 = re.compile(r"[0-9a-f]{64}")


class FixtureError(ValueError):
    """A fixture folder the emulator cannot serve; the message names the file and the problem."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


_OBJECT_DIRS = ("files", "urls", "domains", "ip_addresses", "hunting_rulesets", "yara_rulesets")


class DirectorySamples:
    """Samples stored as ``<dir>/<sha256>`` files, streamed from disk."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def _path(self, sha256: str) -> Path | None:
        """The sample's file; ids that are not a SHA-256 never reach the file system."""
        if not _SHA256.fullmatch(sha256.lower()):
            return None
        path = self._directory / sha256.lower()
        return path if path.is_file() else None

    def size(self, sha256: str) -> int | None:
        path = self._path(sha256)
        return path.stat().st_size if path else None

    def chunks(self, sha256: str, chunk_size: int) -> Iterator[bytes]:
        path = self._path(sha256)
        if path is None:
            raise KeyError(sha256)
        with path.open("rb") as handle:
            while chunk := handle.read(chunk_size):
                yield chunk


def _read_json(path: Path) -> Any:
    """A fixture file's JSON, or FixtureError saying why it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise FixtureError(path, f"cannot be read ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise FixtureError(path, f"is not UTF-8 text (byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise FixtureError(
            path, f"is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from err


def _read_objects(directory: Path, listed: bool = False) -> dict[str, Any]:
    """``{id: data}`` of every ``*.json`` file in ``directory`` (empty when it is missing).

    Each file is ``{"data": object with an "id"}``, or with `listed` ``{"data": [...]}`` keyed
    by the file name (resolutions).
    """
    if not directory.is_dir():
        return {}
    objects = {}
    for path in sorted(directory.glob("*.json")):
        document = _read_json(path)
        if not isinstance(document, dict) or "data" not in document:
            raise FixtureError(path, 'must be a JSON object with a "data" member')
        data = document["data"]
        if listed:
            if not isinstance(data, list):
                raise FixtureError(path, f'"data" must be a list, not {_kind(data)}')
            objects[_unquoted_stem(path)] = data
            continue
        if not isinstance(data, dict):
            raise FixtureError(path, f'"data" must be an object, not {_kind(data)}')
        if not isinstance(data.get("id"), str) or not data["id"]:
            raise FixtureError(path, '"data" has no "id" (a non-empty string)')
        objects[data["id"]] = data
    return objects


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _stream_entry(path: Path, index: int, item: Any) -> StreamEntry:
    """One notification of notifications.json as a stream entry, or FixtureError naming it."""

    def fail(problem: str) -> FixtureError:
        return FixtureError(path, f"notification #{index}: {problem}")

    if not isinstance(item, dict):
        raise fail(f"must be an object, not {_kind(item)}")
    if item.get("type") not in COLLECTIONS:
        raise fail(f'"type" must be one of {sorted(COLLECTIONS)}, not {item.get("type")!r}')
    if not isinstance(item.get("id"), str) or not item["id"]:
        raise fail('has no "id" (a non-empty string)')
    ctx = item.get("context_attributes")
    if not isinstance(ctx, dict):
        raise fail(f'"context_attributes" must be an object, not {_kind(ctx)}')
    if ctx.get("notification_id") in (None, ""):
        raise fail('"context_attributes" has no "notification_id"')
    date = ctx.get("notification_date")
    if isinstance(date, bool) or not isinstance(date, int):
        raise fail(
            f'"context_attributes.notification_date" must be an integer (unix seconds), '
            f"not {date!r}"
        )
    for name in ("tags", "sources"):
        if ctx.get(name) is not None and not isinstance(ctx[name], list):
            raise fail(f'"context_attributes.{name}" must be a list, not {_kind(ctx[name])}')
    if not all(isinstance(source, dict) for source in ctx.get("sources") or []):
        raise fail('"context_attributes.sources" must hold objects')
    return StreamEntry(item["type"], item["id"], ctx)


def _unquoted_stem(path: Path) -> str:
    return unquote(path.name.removesuffix(".json"))


def load_fixtures(directory: str | Path) -> Corpus:
    """A corpus read from a fixture folder (layout in the module docstring)."""
    root = Path(directory)
    if not root.is_dir():
        raise FixtureError(root, "is not a directory")
    collections = {name: _read_objects(root / name) for name in _OBJECT_DIRS}
    notifications_path = root / "notifications.json"
    items: Any = []
    if notifications_path.exists():
        items = _read_json(notifications_path)
        if not isinstance(items, list):
            raise FixtureError(notifications_path, f"must be a JSON list, not {_kind(items)}")
    stream = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        entry = _stream_entry(notifications_path, index, item)
        if entry.notification_id in seen:
            raise FixtureError(
                notifications_path,
                f"notification #{index}: notification_id {entry.notification_id!r} is already "
                f"used by notification #{seen[entry.notification_id]}",
            )
        seen[entry.notification_id] = index
        subject = {key: value for key, value in item.items() if key != "context_attributes"}
        collections[COLLECTIONS[entry.object_type]].setdefault(entry.object_id, subject)
        stream.append(entry)
    return Corpus(
        stream=stream,
        files=collections["files"],
        urls=collections["urls"],
        domains=collections["domains"],
        ip_addresses=collections["ip_addresses"],
        resolutions=_read_objects(root / "resolutions", listed=True),
        hunting_rulesets=collections["hunting_rulesets"],
        yara_rulesets=collections["yara_rulesets"],
        samples=DirectorySamples(root / "samples"),
    )


def _write(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")


def dump_fixtures(corpus: Corpus, directory: str | Path, *, max_sample_size: int = 8 * MIB) -> None:
    """Write ``corpus`` as a fixture folder; samples above ``max_sample_size`` are left out."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    with (root / "notifications.json").open("w", encoding="utf-8") as handle:
        handle.write("[")
        for position, item in enumerate(corpus.notifications):
            handle.write(",\n" if position else "\n")
            handle.write(json.dumps(item, ensure_ascii=False))
        handle.write("\n]\n")
    named = {
        "files": corpus.files,
        "urls": corpus.urls,
        "domains": corpus.domains,
        "ip_addresses": corpus.ip_addresses,
        "resolutions": corpus.resolutions,
        "hunting_rulesets": corpus.hunting_rulesets,
        "yara_rulesets": corpus.yara_rulesets,
    }
    for name, objects in named.items():
        for key, data in objects.items():
            _write(root / name / f"{quote(key, safe='')}.json", {"data": data})
    for sha256 in corpus.files:
        size = corpus.sample_size(sha256)
        if size is not None and size <= max_sample_size:
            (root / "samples").mkdir(exist_ok=True)
            with (root / "samples" / sha256).open("wb") as handle:
                for chunk in corpus.sample_chunks(sha256):
                    handle.write(chunk)
