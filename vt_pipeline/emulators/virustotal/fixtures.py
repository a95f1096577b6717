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


def _read_objects(directory: Path) -> dict[str, Any]:
    """``{id: data}`` of every ``*.json`` file in ``directory`` (empty when it is missing)."""
    if not directory.is_dir():
        return {}
    objects = {}
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
        key = data["id"] if isinstance(data, dict) else _unquoted_stem(path)
        objects[key] = data
    return objects


def _unquoted_stem(path: Path) -> str:
    return unquote(path.name.removesuffix(".json"))


def load_fixtures(directory: str | Path) -> Corpus:
    """A corpus read from a fixture folder (layout in the module docstring)."""
    root = Path(directory)
    collections = {name: _read_objects(root / name) for name in _OBJECT_DIRS}
    notifications_path = root / "notifications.json"
    items = []
    if notifications_path.exists():
        items = json.loads(notifications_path.read_text(encoding="utf-8"))
    stream = []
    for item in items:
        subject = {key: value for key, value in item.items() if key != "context_attributes"}
        collections[COLLECTIONS[item["type"]]].setdefault(item["id"], subject)
        stream.append(StreamEntry(item["type"], item["id"], item["context_attributes"]))
    return Corpus(
        stream=stream,
        files=collections["files"],
        urls=collections["urls"],
        domains=collections["domains"],
        ip_addresses=collections["ip_addresses"],
        resolutions=_read_objects(root / "resolutions"),
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
