"""OpenCTI's live stream (server-sent events at `/stream/{id}`), fed by the emulator's store.

As opencti-graphql's `sseMiddleware.js` serves it (read at OpenCTI-Platform/opencti commit
7af5740; the reference's section 11) and pycti's `ListenStream` reads it:
- `GET /stream` (raw) and `GET /stream/{id}` (a live stream collection), `Authorization:
  Bearer <token>`. A bad token, or an unknown collection, is a 401 with a reason and no body.
- The start is `?from=`, a `from` header or `Last-Event-ID`: `0`/`0-0`, `<epoch ms>-<seq>` or
  an ISO date; none means from now on. `?recover=` (or `recover`/`recover-date` headers) after
  the start is OpenCTI's recovery: the current state of what changed between the two, as
  `create` events with ids from each object's update time (origin `init`), then the stream from
  the recover date; a recover without a start is a 500, as OpenCTI's.
- `Content-Type: text/event-stream; charset=utf-8`; first `event: connected` (no id, so pycti
  ignores it), then the events after the start as `id: <epoch ms>-<seq>\nevent:
  create|update|delete\ndata: <json>\n\n`, new ones as they happen, and every
  `heartbeat_seconds` (5, HEARTBEAT_PERIOD) a `heartbeat` whose id is the last event of the
  whole stream, matching or not (data: its date as a JSON string).
- `data` is `{version: "4", type, scope: "external", message, origin, data: <STIX>, markings}`,
  STIX as OpenCTI exports it (its extension carries id, type, detection, score, ...);
  `update` adds `context: {patch, reverse_patch}` (JSON patch ops on top-level properties).
  `listen-delete: false` leaves delete events out.

Changes are recorded once a collection exists (`create_stream`) or the raw stream has had a
reader, as if OpenCTI's stream started then (recovery still serves what came before). Not
emulated: collection filters beyond entity types (so no update turned into a create or a
delete as an object enters or leaves a filter), dependencies (`no-dependencies: false`),
inferences, `merge` events.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from vt_pipeline.emulators.opencti.store import (
    EXTENSION_FIELDS,
    OPENCTI_EXTENSION,
    Record,
    Store,
)

EVENT_VERSION = "4"
HEARTBEAT_SECONDS = 5.0  # sseMiddleware's HEARTBEAT_PERIOD default
_POLL_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class StreamEvent:
    id: str
    type: str
    entity_type: str
    payload: dict[str, Any]

    def frame(self) -> bytes:
        data = json.dumps(self.payload, separators=(",", ":"))
        return f"id: {self.id}\nevent: {self.type}\ndata: {data}\n\n".encode()


def parse_event_id(value: str) -> tuple[int, int]:
    """`<ms>-<seq>` as a sortable pair; ValueError otherwise."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def stream_stix(record: Record, stix: dict[str, Any]) -> dict[str, Any]:
    """`stix` (a record's export) as the stream sends it: OpenCTI's own properties in its
    extension (`detection`, `score`, `main_observable_type`, ...), not at top level."""
    out = copy.deepcopy(stix)
    extension = out.setdefault("extensions", {}).setdefault(
        OPENCTI_EXTENSION, {"extension_type": "property-extension"}
    )
    for key, name in EXTENSION_FIELDS.items():
        if name.startswith("x_opencti_") and name in out:
            extension[key] = out.pop(name)
    extension.setdefault("id", record.internal_id)
    extension.setdefault("type", record.entity_type)
    return out


def _patches(before: dict[str, Any], after: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """JSON patch (and its reverse) between two objects, on top-level properties."""
    patch: list[dict[str, Any]] = []
    reverse: list[dict[str, Any]] = []
    for key in sorted(set(before) | set(after)):
        if key == "extensions" or before.get(key) == after.get(key):
            continue
        path = f"/{key}"
        if key not in before:
            patch.append({"op": "add", "path": path, "value": after[key]})
            reverse.append({"op": "remove", "path": path})
        elif key not in after:
            patch.append({"op": "remove", "path": path})
            reverse.append({"op": "add", "path": path, "value": before[key]})
        else:
            patch.append({"op": "replace", "path": path, "value": after[key]})
            reverse.append({"op": "replace", "path": path, "value": before[key]})
    return patch, reverse


class LiveStream:
    """Every change of the store as a stream event, and the SSE endpoint serving them."""

    def __init__(self, store: Store, heartbeat_seconds: float = HEARTBEAT_SECONDS) -> None:
        self.store = store
        self.heartbeat_seconds = heartbeat_seconds
        self._lock = threading.Lock()
        self._events: list[StreamEvent] = []
        self._last = (0, 0)
        self._collections: dict[str, dict[str, Any]] = {}
        self._closed = False
        self._enabled = False

    def _enable(self) -> None:
        """Record changes from now on. Only once a live stream exists: recording copies every
        object a bundle changes, which the emulator's other users (Livehunt and enrichment
        benchmarks) would pay for nothing."""
        with self._lock:
            if not self._enabled:
                self._enabled = True
                self.store.listeners.append(self._on_change)

    # -- collections and events -------------------------------------------------------------
    def create_stream(self, name: str = "vt_pipeline", entity_types: tuple[str, ...] = ()) -> str:
        """A live stream collection (optionally only these entity types); its id."""
        stream_id = str(uuid.uuid4())
        with self._lock:
            self._collections[stream_id] = {"name": name, "entity_types": entity_types}
        self._enable()
        return stream_id

    def events(self) -> list[StreamEvent]:
        with self._lock:
            return list(self._events)

    def close(self) -> None:
        """End every open connection (the server is stopping)."""
        self._closed = True

    def _next_id(self) -> str:
        ms = int(time.time() * 1000)
        last_ms, seq = self._last
        self._last = (ms, 0) if ms > last_ms else (last_ms, seq + 1)
        return f"{self._last[0]}-{self._last[1]}"

    def _on_change(self, kind: str, record: Record, before: dict[str, Any] | None) -> None:
        after = stream_stix(record, self.store.export_stix(record))
        payload: dict[str, Any] = {
            "version": EVENT_VERSION,
            "type": kind,
            "scope": "external",
            "message": f"{kind}s a {record.entity_type} `{_label(after)}`",
            "origin": {"user_id": "88ec0c6a-13ce-5e39-b486-354fe4a7084f", "referer": "emulator"},
            "data": after,
            "markings": list(after.get("object_marking_refs") or []),
        }
        if kind == "update" and before is not None:
            patch, reverse = _patches(stream_stix(record, before), after)
            payload["context"] = {"patch": patch, "reverse_patch": reverse}
        with self._lock:
            self._events.append(StreamEvent(self._next_id(), kind, record.entity_type, payload))

    def _after(
        self, start: tuple[int, int], collection: dict[str, Any] | None, deletes: bool
    ) -> tuple[list[StreamEvent], tuple[int, int]]:
        """The collection's events after `start`, and the id of the last event of the whole
        stream (OpenCTI's heartbeat carries it, matching or not)."""
        with self._lock:
            events = [e for e in self._events if parse_event_id(e.id) > start]
        types = (collection or {}).get("entity_types") or ()
        last = parse_event_id(events[-1].id) if events else start
        kept = [
            e
            for e in events
            if (deletes or e.type != "delete") and (not types or e.entity_type in types)
        ]
        return kept, last

    def _recovered(
        self, start: tuple[int, int], until: tuple[int, int], collection: dict[str, Any] | None
    ) -> list[StreamEvent]:
        """Recovery: the current state of what changed in (start, until], as `create` events
        with ids from their update time, origin `init` (sseMiddleware's recovery mode)."""
        types = (collection or {}).get("entity_types") or ()
        found = []
        for record in self.store.records():
            updated = _ms(record.updated_at)
            if not start[0] < updated <= until[0] or (types and record.entity_type not in types):
                continue
            stix = stream_stix(record, self.store.export_stix(record))
            payload = {
                "version": EVENT_VERSION,
                "type": "create",
                "scope": "external",
                "message": f"creates a {record.entity_type} `{_label(stix)}`",
                "origin": {"referer": "init"},
                "data": stix,
            }
            found.append(StreamEvent(f"{updated}-0", "create", record.entity_type, payload))
        return sorted(found, key=lambda e: parse_event_id(e.id))

    # -- HTTP -------------------------------------------------------------------------------
    async def handle(self, request: web.Request, token: str) -> web.StreamResponse:
        """`GET /stream[/{id}]`; refusals as OpenCTI's: 401 with a reason and no body (a bad
        token, an unknown collection), 500 for a recover without a start."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or given.strip() != token:
            return _refused(401, "You are not authenticated, please check your credentials")
        stream_id = request.match_info.get("id")
        collection = None
        if stream_id is None:
            self._enable()  # the raw stream: recorded from its first reader on
        else:
            collection = self._collections.get(stream_id)
            if collection is None:
                return _refused(401, "You are not authorized, please check your credentials")
        headers = request.headers
        start = stream_position(
            request.query.get("from") or headers.get("from") or headers.get("Last-Event-ID")
        )
        recover_text = (
            request.query.get("recover") or headers.get("recover") or headers.get("recover-date")
        )
        recover = stream_position(recover_text)
        if recover is not None and start is None:
            return _refused(500, "Recovery mode is only possible with a start date.")
        if start is None:
            start = self._last  # no position: from now on
        deletes = headers.get("listen-delete", "true").lower() != "false"
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache, no-transform",
                "Connection": "keep-alive",
            }
        )
        await response.prepare(request)
        info = {"connectionId": str(uuid.uuid4()), "collection": stream_id}
        await response.write(f"event: connected\ndata: {json.dumps(info)}\n\n".encode())
        position, beat = start, time.monotonic()
        try:
            if recover is not None and recover > start:
                for event in self._recovered(start, recover, collection):
                    await response.write(event.frame())
                position = recover
            while not self._closed:
                pending, position = self._after(position, collection, deletes)
                for event in pending:
                    await response.write(event.frame())
                if pending:
                    beat = time.monotonic()
                elif time.monotonic() - beat >= self.heartbeat_seconds and position > (0, 0):
                    moment = datetime.fromtimestamp(position[0] / 1000, UTC).isoformat()
                    last_id = f"{position[0]}-{position[1]}"
                    stamp = json.dumps(moment.replace("+00:00", "Z"))
                    frame = f"id: {last_id}\nevent: heartbeat\ndata: {stamp}\n\n"
                    await response.write(frame.encode())
                    beat = time.monotonic()
                if request.transport is None or request.transport.is_closing():
                    break
                await asyncio.sleep(_POLL_SECONDS)
        except (ConnectionResetError, asyncio.CancelledError):
            return response
        return response


def stream_position(value: str | None) -> tuple[int, int] | None:
    """A start or recover parameter as a stream position (sseMiddleware's
    `convertParameterToStreamId`): `0`/`0-0`, `<ms>-<seq>`, or an ISO date; None otherwise."""
    if not value:
        return None
    if value in ("0", "0-0"):
        return (0, 0)
    if value.count("-") == 1:
        try:
            return parse_event_id(value)
        except ValueError:
            return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (int(moment.timestamp() * 1000), 0)


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _refused(status: int, reason: str) -> web.Response:
    return web.Response(status=status, reason=reason)


def _label(stix: dict[str, Any]) -> str:
    for key in ("name", "value", "pattern"):
        if stix.get(key):
            return str(stix[key])[:80]
    return str(stix.get("id"))
