"""OpenCTI's live stream: the emulator's events as pycti's SSE client reads them, and our
bounded reader (position, Last-Event-ID, recover, listen-delete, limits, refusals)."""

import json
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from filigran_sseclient import SSEClient

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.opencti.store import OPENCTI_EXTENSION
from vt_pipeline.opencti.live_stream import StreamPosition, read_stream, stream_url
from vt_pipeline.opencti.resource import OpenCTIError, OpenCTIUnavailable

RULE = "rule stream_test { condition: true }"


@pytest.fixture
def platform() -> Iterator[OpenCTIEmulator]:
    with OpenCTIEmulator() as emulator:  # the stream needs no RabbitMQ
        yield emulator


def test_pycti_sse_client_reads_create_update_delete_with_opencti_ids(
    platform: OpenCTIEmulator,
) -> None:
    stream_id = platform.live_stream.create_stream("yara")
    indicator = platform.create_indicator(RULE, pattern_type="yara", name="T", detection=True)
    internal = platform.record(indicator).internal_id
    platform.edit_entity(indicator, revoked=True)
    platform.delete_entity(indicator)
    client = SSEClient(
        f"{platform.url}/stream/{stream_id}?recover=2026-01-01T00:00:00.000Z",
        "0-0",
        headers={"authorization": "Bearer " + platform.token, "listen-delete": "true"},
    )
    messages = []
    for message in client:  # what pycti's ListenStream iterates
        if message.id is not None:
            messages.append(message)
        if len(messages) == 3:
            break
    client.resp.close()
    assert [m.event for m in messages] == ["create", "update", "delete"]
    ids = [m.id for m in messages]
    assert all(re.fullmatch(r"\d{13}-\d+", i) for i in ids) and ids == sorted(ids)
    create, update, delete = (json.loads(m.data) for m in messages)
    assert create["version"] == "4" and create["type"] == "create"
    assert create["data"]["id"] == indicator and create["data"]["pattern_type"] == "yara"
    extension = create["data"]["extensions"][OPENCTI_EXTENSION]
    assert extension["id"] == internal and extension["detection"] is True
    assert "x_opencti_detection" not in create["data"]
    assert update["data"]["revoked"] is True
    assert {"op": "add", "path": "/revoked", "value": True} in update["context"]["patch"]
    assert {"op": "remove", "path": "/revoked"} in update["context"]["reverse_patch"]
    assert delete["data"]["id"] == indicator


def test_reads_recover_resume_from_the_position_and_stop_within_their_bounds(
    platform: OpenCTIEmulator,
) -> None:
    stream_id = platform.live_stream.create_stream(entity_types=("Indicator",))
    for number in range(2):  # before the first read: recovered (their current state)
        platform.create_indicator(f"rule r{number} {{ condition: true }}", pattern_type="yara")
    time.sleep(0.01)
    first = StreamPosition.from_state(None)
    assert first.start_from == "0-0" and str(first.recover_until).endswith("Z")
    time.sleep(0.01)
    for number in range(2, 5):  # after: live events
        platform.create_indicator(f"rule r{number} {{ condition: true }}", pattern_type="yara")
    started = time.monotonic()
    read = read_stream(platform.url, platform.token, first, live_stream_id=stream_id, max_events=3)
    assert read.stopped == "max_events" and len(read.events) == 3
    assert time.monotonic() - started < 2
    origins = [e.message["origin"].get("referer") for e in read.events]
    assert origins == ["init", "init", "emulator"]
    rest = read_stream(
        platform.url,
        platform.token,
        StreamPosition(read.position, first.recover_until),
        live_stream_id=stream_id,
        idle_seconds=0.3,
    )
    assert rest.stopped == "idle" and len(rest.events) == 2
    names = [e.stix["pattern"] for e in read.events + rest.events]
    assert names == [f"rule r{n} {{ condition: true }}" for n in range(5)]
    # nothing new: a heartbeat carries the last event's id, never one before it
    platform.live_stream.heartbeat_seconds = 0.1
    idle = read_stream(
        platform.url,
        platform.token,
        StreamPosition(rest.position, False),
        live_stream_id=stream_id,
        idle_seconds=0.5,
        max_seconds=0.4,
    )
    assert idle.events == [] and idle.heartbeats >= 1 and idle.position == rest.position


def test_listen_delete_false_leaves_deletes_out(platform: OpenCTIEmulator) -> None:
    stream_id = platform.live_stream.create_stream()
    indicator = platform.create_indicator(RULE, pattern_type="yara")
    platform.delete_entity(indicator)
    args = (platform.url, platform.token, StreamPosition("0-0", False))
    kept = read_stream(*args, live_stream_id=stream_id, idle_seconds=0.3)
    dropped = read_stream(*args, live_stream_id=stream_id, idle_seconds=0.3, listen_delete=False)
    assert [e.type for e in kept.events] == ["create", "delete"]
    assert [e.type for e in dropped.events] == ["create"]


def test_a_refused_or_unreachable_stream_says_so_without_the_token(
    platform: OpenCTIEmulator,
) -> None:
    position = StreamPosition("0-0", False)
    with pytest.raises(OpenCTIError, match=r"not authorized.*CONNECTOR_LIVE_STREAM_ID") as unknown:
        read_stream(platform.url, platform.token, position, live_stream_id="nope")
    assert platform.token not in str(unknown.value)
    with pytest.raises(OpenCTIError, match="HTTP 401"):
        read_stream(platform.url, "wrong-token", position, live_stream_id="x")
    recover_without_start = StreamPosition("", "2026-01-01T00:00:00.000Z")
    with pytest.raises(OpenCTIUnavailable, match="HTTP 500"):
        read_stream(
            platform.url,
            platform.token,
            recover_without_start,
            live_stream_id=platform.live_stream.create_stream(),
        )
    with pytest.raises(OpenCTIUnavailable):
        read_stream("http://127.0.0.1:9", platform.token, position, connect_timeout=1)


def test_state_and_url_as_pycti_keeps_and_builds_them() -> None:
    old = StreamPosition.from_state({"connectorLastEventId": "5-1", "connectorStartTime": "x"})
    assert old == StreamPosition("5-1", "x")
    state = StreamPosition("7-0", "2026-01-01T00:00:00.000Z").to_state()
    assert state == {"start_from": "7-0", "recover_until": "2026-01-01T00:00:00.000Z"}
    assert stream_url("http://o/", "abc", "2026") == "http://o/stream/abc?recover=2026"
    assert stream_url("http://o", "", "false") == "http://o/stream"
    assert stream_url("http://o", "abc", False) == "http://o/stream/abc"


def test_an_event_arriving_during_a_read_is_read(platform: OpenCTIEmulator) -> None:
    stream_id = platform.live_stream.create_stream()
    timer = threading.Timer(
        0.3, lambda: platform.create_indicator(RULE, pattern_type="yara", name="late")
    )
    timer.start()
    try:
        read = read_stream(
            platform.url,
            platform.token,
            StreamPosition("0-0", False),
            live_stream_id=stream_id,
            idle_seconds=1.5,
            max_events=1,
        )
    finally:
        timer.join()
    assert [e.stix["name"] for e in read.events] == ["late"]


def test_a_stream_without_chunked_encoding_is_read_as_it_arrives() -> None:
    """A proxy may send the stream as a plain body until the connection closes: events are
    read as they arrive, not when a buffer fills or the idle timeout fires."""
    frames = b"".join(
        f'id: 1700000000000-{n}\nevent: create\ndata: {{"data": {{"n": {n}}}}}\n\n'.encode()
        for n in range(2)
    )
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    release = threading.Event()

    def serve() -> None:
        connection, _ = server.accept()
        connection.recv(65536)
        connection.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            + frames
        )
        release.wait(10)  # then idle, connection open
        connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        read = read_stream(
            f"http://127.0.0.1:{port}",
            "t",
            StreamPosition("0-0", False),
            live_stream_id="s",
            max_events=2,
            idle_seconds=5,
        )
        assert time.monotonic() - started < 2
    finally:
        release.set()
        thread.join()
        server.close()
    assert read.stopped == "max_events" and [e.stix for e in read.events] == [{"n": 0}, {"n": 1}]
    assert read.position == "1700000000000-1"
