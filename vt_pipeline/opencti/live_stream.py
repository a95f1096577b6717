"""Read an OpenCTI live stream as pycti does, in bounded ticks.

pycti's `ListenStream` (a thread that never ends) connects to `<url>/stream/<live_stream_id>`
with `Last-Event-ID: <start_from>`, `?recover=<recover_until>` (the first run's moment),
`authorization`, `listen-delete`, `no-dependencies` and `with-inferences` headers, and keeps
`{"start_from", "recover_until"}` as its state: `start_from` moves to the id of every event
handled (and of heartbeats). Here one call reads at most `max_events` data events or for at most
`max_seconds` (or until the stream is idle `idle_seconds`), then hangs up: a Dagster sensor tick
handles what it read and keeps the returned position as its cursor. Events are parsed by
filigran-sseclient's own `Event.parse`, the parser pycti uses.

A sensor that handles the events, then saves the position, loses none: a crash before the save
reads them again from the old position (the handler must be idempotent).
"""

from __future__ import annotations

import codecs
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from filigran_sseclient.sseclient import Event

from vt_pipeline.opencti.resource import OpenCTIError, OpenCTIUnavailable

log = logging.getLogger(__name__)

START = "0-0"  # pycti's first position: the start of the stream
DATA_EVENTS = frozenset({"create", "update", "delete", "merge"})
_END_OF_EVENT = re.compile(r"\r\n\r\n|\r\r|\n\n")
_NO_RECOVER = {"no", "none", "No", "None", "false", "False"}


@dataclass(frozen=True)
class StreamPosition:
    """pycti's stream state: where to resume, and the recover date of the first run."""

    start_from: str = START
    recover_until: str | bool | None = None

    @classmethod
    def from_state(
        cls, state: dict[str, Any] | None, now: datetime | None = None
    ) -> StreamPosition:
        """The position a pycti state dict holds (its older keys too); a first run starts at
        `0-0` recovering until now, as pycti does."""
        if not state:
            moment = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            return cls(START, moment)
        start = state.get("connectorLastEventId", state.get("start_from")) or START
        recover = state.get("connectorStartTime", state.get("recover_until"))
        return cls(str(start), recover)

    def to_state(self) -> dict[str, Any]:
        return {"start_from": self.start_from, "recover_until": self.recover_until}


@dataclass(frozen=True)
class LiveEvent:
    """One data event: its stream id, type and the parsed `data` JSON (None if not JSON)."""

    id: str
    type: str
    message: dict[str, Any] | None
    raw: str = ""

    @property
    def stix(self) -> dict[str, Any] | None:
        """The STIX object the event is about (`data.data`), as connectors read it."""
        data = (self.message or {}).get("data")
        return data if isinstance(data, dict) else None


@dataclass
class StreamRead:
    """What one bounded read got: the data events in order, the position after the last event
    read (data or heartbeat), and why it stopped (max_events, max_seconds, idle, closed)."""

    events: list[LiveEvent] = field(default_factory=list)
    position: str = START
    stopped: str = ""
    heartbeats: int = 0


def stream_url(opencti_url: str, live_stream_id: str, recover_until: str | bool | None) -> str:
    """`<url>/stream[/<id>][?recover=<date>]`, as pycti's `listen_stream` builds it."""
    url = opencti_url.rstrip("/") + "/stream"
    if live_stream_id:
        url += "/" + live_stream_id
    if recover_until not in (None, False) and recover_until not in _NO_RECOVER:
        url += "?recover=" + str(recover_until)
    return url


def _later(a: str, b: str) -> bool:
    """Whether stream id `a` is after `b` (ids are `<ms>-<seq>`)."""

    def key(value: str) -> tuple[int, int]:
        ms, _, seq = value.partition("-")
        try:
            return int(ms), int(seq or 0)
        except ValueError:
            return (-1, -1)

    return key(a) > key(b)


def read_stream(
    opencti_url: str,
    token: str,
    position: StreamPosition,
    *,
    live_stream_id: str = "",
    listen_delete: bool = True,
    no_dependencies: bool = True,
    with_inferences: bool = False,
    max_events: int = 100,
    max_seconds: float = 10.0,
    idle_seconds: float = 2.0,
    connect_timeout: float = 10.0,
    verify: bool = True,
) -> StreamRead:
    """Read at most `max_events` data events from `position`, for at most about
    `max_seconds`, stopping early when nothing arrives for `idle_seconds`.

    Raises OpenCTIUnavailable when the stream cannot be reached (retry next tick) and
    OpenCTIError when OpenCTI refuses it (token, unknown stream id). The token never appears
    in a message.
    """
    url = stream_url(opencti_url, live_stream_id, position.recover_until)
    headers = {
        "authorization": "Bearer " + token,
        "listen-delete": str(listen_delete).lower(),
        "no-dependencies": str(no_dependencies).lower(),
        "with-inferences": str(with_inferences).lower(),
        "Cache-Control": "no-cache",
        "Accept": "text/event-stream",
    }
    if position.start_from:
        headers["Last-Event-ID"] = position.start_from
    result = StreamRead(position=position.start_from)
    started = time.monotonic()
    try:
        response = requests.get(
            url,
            headers=headers,
            stream=True,
            timeout=(connect_timeout, idle_seconds),
            verify=verify,
        )
    except requests.RequestException as exc:
        raise OpenCTIUnavailable(f"OpenCTI live stream unreachable: {type(exc).__name__}") from None
    with response:
        why = f"HTTP {response.status_code} {_clip(response.reason)}".strip()
        if response.status_code in (401, 403, 404, 410):
            raise OpenCTIError(
                f"OpenCTI refused the live stream {live_stream_id or '(raw)'} ({why}): check "
                "OPENCTI_TOKEN and CONNECTOR_LIVE_STREAM_ID (a stream that exists and is started)"
            )
        if response.status_code != 200:
            raise OpenCTIUnavailable(f"OpenCTI live stream answered {why}")
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        buffer = ""
        try:
            for chunk in _chunks(response):
                buffer += decoder.decode(chunk)
                while (found := _END_OF_EVENT.search(buffer)) is not None:
                    text, buffer = buffer[: found.start()], buffer[found.end() :]
                    if _take(Event.parse(text), result) and len(result.events) >= max_events:
                        result.stopped = "max_events"
                        return result
                if time.monotonic() - started >= max_seconds:
                    result.stopped = "max_seconds"
                    return result
            result.stopped = "closed"
        except (requests.ConnectionError, requests.Timeout):
            # requests reports a read timeout on an open stream as a ConnectionError.
            result.stopped = "idle"
    return result


def _chunks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives: chunk by chunk (chunked transfer, what OpenCTI sends), else
    whatever bytes are there (`read1`, as filigran-sseclient does), never waiting for a full
    buffer that an idle stream would not fill."""
    if response.headers.get("transfer-encoding", "").lower() == "chunked":
        yield from response.iter_content(chunk_size=None)
        return
    while chunk := response.raw.read1(65536):
        yield chunk


def _clip(text: str | None, limit: int = 200) -> str:
    return " ".join(str(text or "").split())[:limit]


def _take(event: Event, result: StreamRead) -> bool:
    """Record one parsed SSE event; True when it is a data event."""
    if not event.id:
        return False  # `connected` and id-less heartbeats: pycti ignores them too
    if event.event in DATA_EVENTS:
        try:
            message = json.loads(event.data)
        except ValueError:
            message = None
        result.events.append(LiveEvent(event.id, event.event, message, event.data))
        result.position = event.id
        return True
    # heartbeat, sync, consumer_metrics: the position moves (never backwards), as pycti's does
    if event.event == "heartbeat":
        result.heartbeats += 1
    if _later(event.id, result.position):
        result.position = event.id
    return False
