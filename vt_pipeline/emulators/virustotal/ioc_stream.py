"""The ``/ioc_stream`` filter language, cursors and paging (pure, no HTTP).

Cursors hold the sort key of the last item served rather than an offset, so deleting
notifications between two pages (as the pipeline does) neither skips nor repeats any.
"""

from __future__ import annotations

import base64
import binascii
import json
from bisect import bisect_left, bisect_right
from collections.abc import Container, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from vt_pipeline.emulators.virustotal.corpus import StreamEntry

MAX_LIMIT = 40
DEFAULT_LIMIT = 10


class StreamQueryError(ValueError):
    """A filter, limit or cursor VirusTotal would refuse with InvalidArgumentError."""


@dataclass(frozen=True, slots=True)
class StreamFilter:
    since: int | None = None  # notification_date >= since
    until: int | None = None  # notification_date <= until
    tags: tuple[str, ...] = ()
    source_types: tuple[str, ...] = ()

    def matches(self, entry: StreamEntry) -> bool:
        """The non-date conditions (dates are applied by the index)."""
        tags = entry.tags
        sources = entry.source_types
        return all(t in tags for t in self.tags) and all(s in sources for s in self.source_types)


def parse_time(value: str) -> int:
    """Unix seconds, or ISO ``YYYY-MM-DDTHH:MM:SS`` in UTC (an offset or ``Z`` is honoured)."""
    if value.isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value.removesuffix("Z"))
    except ValueError as err:
        raise StreamQueryError(f"invalid date in filter: {value!r}") from err
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def parse_filter(text: str) -> StreamFilter:
    """Space-separated ``date:X+``, ``date:X-``, ``source_type:T`` and ``notification_tag:T``."""
    since: int | None = None
    until: int | None = None
    tags: list[str] = []
    sources: list[str] = []
    for term in text.split():
        key, _, value = term.partition(":")
        if key == "date" and value[-1:] == "+":
            moment = parse_time(value[:-1])
            since = moment if since is None else max(since, moment)
        elif key == "date" and value[-1:] == "-":
            moment = parse_time(value[:-1])
            until = moment if until is None else min(until, moment)
        elif key == "notification_tag" and value:
            tags.append(value)
        elif key == "source_type" and value:
            sources.append(value)
        else:
            raise StreamQueryError(f"invalid filter term: {term!r}")
    return StreamFilter(since, until, tuple(tags), tuple(sources))


def parse_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    try:
        limit = int(value)
    except ValueError as err:
        raise StreamQueryError(f"invalid limit: {value!r}") from err
    if not 1 <= limit <= MAX_LIMIT:
        raise StreamQueryError(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def encode_cursor(entry: StreamEntry) -> str:
    raw = json.dumps([entry.date, entry.notification_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The (date, notification id) of the last item of the previous page."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        date, notification_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as err:
        raise StreamQueryError("invalid cursor") from err
    if not isinstance(date, int) or not isinstance(notification_id, str):
        raise StreamQueryError("invalid cursor")
    return date, notification_id


class StreamIndex:
    """Notifications newest first (date desc, then id), searchable by date and cursor."""

    def __init__(self, entries: Sequence[StreamEntry]) -> None:
        self._entries = entries
        self._keys = [(-entry.date, entry.notification_id) for entry in entries]
        self._ids = {entry.notification_id for entry in entries}

    def __contains__(self, notification_id: object) -> bool:
        return notification_id in self._ids

    def _bounds(self, query: StreamFilter, after: tuple[int, str] | None) -> tuple[int, int]:
        low = 0 if query.until is None else bisect_left(self._keys, (-query.until, ""))
        high = len(self._keys)
        if query.since is not None:
            high = bisect_left(self._keys, (-query.since + 1, ""))
        if after is not None:
            low = max(low, bisect_right(self._keys, (-after[0], after[1])))
        return low, high

    def page(
        self,
        query: StreamFilter,
        limit: int,
        after: tuple[int, str] | None,
        deleted: Container[str],
    ) -> tuple[list[StreamEntry], bool]:
        """Up to ``limit`` entries after the cursor, and whether more remain."""
        low, high = self._bounds(query, after)
        found: list[StreamEntry] = []
        for index in range(low, high):
            entry = self._entries[index]
            if entry.notification_id in deleted or not query.matches(entry):
                continue
            if len(found) == limit:
                return found, True
            found.append(entry)
        return found, False
