"""The listen queue read without acknowledging: nothing leaves it unless acknowledged."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.rabbitmq import RabbitMQ
from vt_pipeline.opencti.listen_queue import ListenQueue, ListenQueueError
from vt_pipeline.opencti.resource import OpenCTIConnector, OpenCTIResource

pytestmark = pytest.mark.integration


@pytest.fixture
def enrichment(opencti: OpenCTIEmulator) -> Iterator[OpenCTIConnector]:
    """The enrichment connector registered under a fresh id (the broker outlives a test)."""
    resource = OpenCTIResource(
        url=opencti.url, token=opencti.token, enrichment_connector_id=str(uuid.uuid4())
    )
    with resource.connector("enrichment") as cti:
        yield cti


def publish(opencti: OpenCTIEmulator, cti: OpenCTIConnector, count: int) -> list[bytes]:
    bodies = []
    for index in range(count):
        message = {"internal": {"work_id": f"work-{index}"}, "event": {"entity_id": f"e{index}"}}
        opencti.platform.publish_to_connector(cti.helper.connect_id, message)
        bodies.append(json.dumps(message).encode())
    return bodies


def test_unacknowledged_messages_return_to_the_queue_in_order(
    opencti: OpenCTIEmulator, enrichment: OpenCTIConnector
) -> None:
    bodies = publish(opencti, enrichment, 5)
    with ListenQueue.of(enrichment) as queue:
        first = queue.read(max_messages=3, max_seconds=5)
        assert [m.body for m in first] == bodies[:3]
        assert queue.depth() == 2  # the three read are held, not gone
    with ListenQueue.of(enrichment) as queue:
        again = queue.read(max_messages=10, max_seconds=5)
        assert [m.body for m in again] == bodies
        assert all(m.redelivered for m in again[:3]) and not again[3].redelivered


def test_only_acknowledged_messages_leave(
    opencti: OpenCTIEmulator, enrichment: OpenCTIConnector
) -> None:
    bodies = publish(opencti, enrichment, 4)
    with ListenQueue.of(enrichment) as queue:
        read = queue.read(max_messages=10, max_seconds=5)
        assert queue.ack([read[1], read[3]]) == 2
    with ListenQueue.of(enrichment) as queue:
        assert [m.body for m in queue.read(10, 5)] == [bodies[0], bodies[2]]


def test_reading_is_bounded_by_time_and_returns_at_once_when_empty(
    opencti: OpenCTIEmulator, enrichment: OpenCTIConnector
) -> None:
    with ListenQueue.of(enrichment) as queue:
        started = time.monotonic()
        assert queue.read(max_messages=100, max_seconds=30) == []
        assert time.monotonic() - started < 1
    publish(opencti, enrichment, 3)
    with ListenQueue.of(enrichment) as queue:
        assert queue.read(max_messages=100, max_seconds=0) == []
        assert len(queue.read(max_messages=100, max_seconds=5)) == 3


def test_an_unreachable_broker_fails_clearly_without_the_password(rabbitmq: RabbitMQ) -> None:
    info = rabbitmq.connection_info
    connection = {
        "host": info.host,
        "port": info.port,
        "vhost": info.vhost,
        "use_ssl": False,
        "user": info.user,
        "pass": "very-secret-password",
    }
    with pytest.raises(ListenQueueError, match="RabbitMQ at") as caught:
        ListenQueue(connection, "listen_nothing", timeout_seconds=2)
    assert "very-secret-password" not in str(caught.value)
    connection["pass"] = info.password
    with pytest.raises(ListenQueueError, match="listen_missing"):
        ListenQueue(connection, "listen_missing", timeout_seconds=2)


def test_acks_on_a_lost_connection_fail_softly_and_lose_nothing(
    opencti: OpenCTIEmulator, enrichment: OpenCTIConnector
) -> None:
    bodies = publish(opencti, enrichment, 3)
    queue = ListenQueue.of(enrichment)
    read = queue.read(10, 5)
    queue._connection.close()  # the broker connection drops between read and ack
    assert queue.ack(read) == 0
    queue.close()
    with ListenQueue.of(enrichment) as again:
        assert [m.body for m in again.read(10, 5)] == bodies
