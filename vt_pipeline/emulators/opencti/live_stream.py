"""OpenCTI's live stream (server-sent events at `/stream/{id}`), fed by the emulator's store.

What pycti's `ListenStream` (filigran-sseclient) reads, from the reference's section 11
(opencti-graphql `sseMiddleware.js`, `stream-utils.ts`; pycti `ListenStream.run`):
- `GET /stream` (raw) and `GET /stream/{id}` (a live stream collection), `Authorization:
  Bearer <token>`; the start position is `?from=` or the `Last-Event-ID` header; `?recover=`
  is accepted; `listen-delete: false` leaves delete events out.
- `Content-Type: text/event-stream; charset=utf-8`; first an `event: connected` (no id, so
  pycti ignores it), then every event after the start position as
  `id: <epoch_ms>-<seq>\\nevent: create|update|delete\\ndata: <json>\\n\\n`, then new events as
  they happen and a `heartbeat` (id: the last event id sent, so resuming from it skips nothing)
  every `heartbeat_seconds`.
- `data` is `{version: "4", type, scope: "external", message, origin, data: <STIX>, markings}`,
  STIX as OpenCTI exports it (its extension carries id, type, detection, score, ...);
  `update` adds `context: {patch, reverse_patch}` (JSON patch ops on top-level properties).

Decisions (the reference says UNCONFIRMED): the emulator keeps its whole stream, so `recover`
(a catch-up of the current state, server side) adds nothing to replaying from the position and
is only checked to be a date; an unknown collection id is a 404; `merge` events are not made.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from vt_pipeline.emulators.opencti.store import (
    EXTENSION_FIELDS,
    OPENCTI_EXTENSION,
    Record,
    Store,
)

EVENT_VERSION = "4"
HEARTBEAT_SECONDS = 20.0  # KEEP_ALIVE_INTERVAL_MS
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
        store.listeners.append(self._on_change)

    # -- collections and events -------------------------------------------------------------
    def create_stream(self, name: str = "vt_pipeline", entity_types: tuple[str, ...] = ()) -> str:
        """A live stream collection (optionally only these entity types); its id."""
        stream_id = str(uuid.uuid4())
        with self._lock:
            self._collections[stream_id] = {"name": name, "entity_types": entity_types}
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
        if record.entity_type == "Marking-Definition" and kind == "create" and not self._events:
            return  # the markings OpenCTI creates at install are not news
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

    def _after(self, start: tuple[int, int], collection: dict[str, Any] | None, deletes: bool):
        with self._lock:
            events = list(self._events)
        types = (collection or {}).get("entity_types") or ()
        return [
            e
            for e in events
            if parse_event_id(e.id) > start
            and (deletes or e.type != "delete")
            and (not types or e.entity_type in types)
        ]

    # -- HTTP -------------------------------------------------------------------------------
    async def handle(self, request: web.Request, token: str) -> web.StreamResponse:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or given.strip() != token:
            return web.json_response({"message": "You are not authorized"}, status=401)
        stream_id = request.match_info.get("id")
        collection = None
        if stream_id is not None:
            collection = self._collections.get(stream_id)
            if collection is None:
                return web.json_response({"message": "Stream collection not found"}, status=404)
        start_text = request.query.get("from") or request.headers.get("Last-Event-ID") or ""
        recover = request.query.get("recover")
        try:
            start = parse_event_id(start_text) if start_text else self._last
            if recover:
                datetime.fromisoformat(recover.replace("Z", "+00:00"))
        except ValueError:
            return web.json_response({"message": "Invalid start or recover"}, status=400)
        deletes = request.headers.get("listen-delete", "true").lower() != "false"
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache, no-transform",
                "Connection": "keep-alive",
            }
        )
        await response.prepare(request)
        info = {"connectionId": str(uuid.uuid4()), "clients": 1, "collection": stream_id}
        await response.write(f"event: connected\ndata: {json.dumps(info)}\n\n".encode())
        last_sent, beat = start, time.monotonic()
        try:
            while not self._closed:
                pending = self._after(last_sent, collection, deletes)
                for event in pending:
                    await response.write(event.frame())
                    last_sent = parse_event_id(event.id)
                if pending:
                    beat = time.monotonic()
                elif time.monotonic() - beat >= self.heartbeat_seconds:
                    stamp = datetime.now().astimezone().isoformat()
                    last_id = f"{last_sent[0]}-{last_sent[1]}"
                    frame = f"id: {last_id}\nevent: heartbeat\ndata: {stamp}\n\n"
                    await response.write(frame.encode())
                    beat = time.monotonic()
                if request.transport is None or request.transport.is_closing():
                    break
                await asyncio.sleep(_POLL_SECONDS)
        except (ConnectionResetError, asyncio.CancelledError):
            return response
        return response


def _label(stix: dict[str, Any]) -> str:
    for key in ("name", "value", "pattern"):
        if stix.get(key):
            return str(stix[key])[:80]
    return str(stix.get("id"))
