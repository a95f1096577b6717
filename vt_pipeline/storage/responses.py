"""Raw VirusTotal responses, stored before use and reused within a cache window.

Layout under the storage base directory:
`{base}/vt_responses/{type}/{key}/{sha256 of the content}.json` holds a response exactly as
VirusTotal returned it (the stored JSON encoding), and `latest.json` beside it says which of
them was fetched last and when.

Decisions:
- Raw data only grows. Files are content-addressed and never rewritten: a new analysis (different
  content) adds a file beside the older ones; fetching the same content again adds nothing and
  only moves the `latest` pointer (the one small file that is replaced, atomically).
- `recent(type, id, max_age)` answers from the latest response when it was fetched less than
  `max_age` ago, so a lookup of the same observable within the window spends no quota.
- `{key}` is the object id when it is a safe file name (hashes, IPs, domains, VT URL ids), else
  the SHA-256 of the id: a path is never built from an unchecked VT- or user-supplied string.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from vt_pipeline.storage.store import _write_bytes, dumps_json, write_atomically

RESPONSES_DIR = "vt_responses"
_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_SAFE_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class StoredResponse:
    """A stored response and when it was fetched."""

    body: dict[str, Any]
    fetched_at: datetime
    path: Path


class ResponseStore:
    """Raw VT responses by object type and id; see the module docstring."""

    def __init__(self, base_dir: str | Path) -> None:
        self.root = Path(base_dir, RESPONSES_DIR)

    def _dir(self, object_type: str, object_id: str) -> Path:
        if not _SAFE_TYPE.match(object_type):
            raise ValueError(f"not a VirusTotal object type: {object_type[:80]!r}")
        key = object_id if _SAFE_KEY.match(object_id) and ".." not in object_id else None
        key = key or "sha256-" + hashlib.sha256(object_id.encode()).hexdigest()
        return self.root / object_type / key

    def put(
        self,
        object_type: str,
        object_id: str,
        body: dict[str, Any],
        now: datetime | None = None,
    ) -> StoredResponse:
        """Store a response (before it is used) and mark it as the latest for that object."""
        folder = self._dir(object_type, object_id)
        data = dumps_json(body)
        path = folder / f"{hashlib.sha256(data).hexdigest()}.json"
        if not path.exists():
            write_atomically(path, partial(_write_bytes, data))
        fetched_at = (now or datetime.now(UTC)).astimezone(UTC)
        pointer = {"file": path.name, "fetched_at": fetched_at.isoformat(), "id": object_id}
        write_atomically(folder / "latest.json", partial(_write_bytes, dumps_json(pointer)))
        return StoredResponse(body, fetched_at, path)

    def latest(self, object_type: str, object_id: str) -> StoredResponse | None:
        """The last response fetched for this object, however old; None if none is stored."""
        folder = self._dir(object_type, object_id)
        try:
            pointer = json.loads((folder / "latest.json").read_bytes())
            path = folder / str(pointer["file"])
            if path.parent != folder:
                return None
            body = json.loads(path.read_bytes())
            fetched_at = datetime.fromisoformat(str(pointer["fetched_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # nothing stored, or a pointer we cannot trust: ask VirusTotal
        if not isinstance(body, dict):
            return None
        return StoredResponse(body, fetched_at, path)

    def recent(
        self,
        object_type: str,
        object_id: str,
        max_age: timedelta,
        now: datetime | None = None,
    ) -> StoredResponse | None:
        """The latest response if it was fetched less than `max_age` ago (cache hit)."""
        if max_age <= timedelta(0):
            return None
        stored = self.latest(object_type, object_id)
        if stored is None:
            return None
        age = (now or datetime.now(UTC)) - stored.fetched_at
        return stored if timedelta(0) <= age < max_age else None

    def versions(self, object_type: str, object_id: str) -> list[Path]:
        """Every distinct response stored for this object."""
        folder = self._dir(object_type, object_id)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob("*.json") if p.name != "latest.json")
