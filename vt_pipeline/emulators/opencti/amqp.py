"""The OpenCTI emulator on RabbitMQ: the platform's queue layout and its bundle workers.

Names follow OpenCTI (src/database/rabbitmq.js): two direct exchanges, and per connector a
`listen_<id>` queue (enrichment requests, platform -> connector) and a `push_<id>` queue
(bundles, connector -> workers), each bound with its own routing key.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from vt_pipeline.emulators.opencti.graphql import GraphQLFault
from vt_pipeline.emulators.rabbitmq import AMQPConnectionInfo

log = logging.getLogger(__name__)

CONNECTOR_EXCHANGE = "amqp.connector.exchange"
WORKER_EXCHANGE = "amqp.worker.exchange"


def listen_queue(connector_id: str) -> str:
    return f"listen_{connector_id}"


def push_queue(connector_id: str) -> str:
    return f"push_{connector_id}"


def listen_routing(connector_id: str) -> str:
    return f"listen_routing_{connector_id}"


def push_routing(connector_id: str) -> str:
    return f"push_routing_{connector_id}"


def declare_connector_queues(channel: Any, connector_id: str) -> None:
    """What `registerConnector` makes sure of on the broker."""
    channel.exchange_declare(CONNECTOR_EXCHANGE, "direct", durable=True)
    channel.exchange_declare(WORKER_EXCHANGE, "direct", durable=True)
    channel.queue_declare(listen_queue(connector_id), durable=True)
    channel.queue_bind(listen_queue(connector_id), CONNECTOR_EXCHANGE, listen_routing(connector_id))
    channel.queue_declare(push_queue(connector_id), durable=True)
    channel.queue_bind(push_queue(connector_id), WORKER_EXCHANGE, push_routing(connector_id))


# (bundle JSON, work id, entity types to keep) -> None; raises GraphQLFault on a bad bundle.
BundleHandler = Callable[[str, str | None, list[str] | None], None]


class PushWorker(threading.Thread):
    """OpenCTI's worker: consumes the connectors' push queues and ingests each bundle.

    Message shape (pycti `_send_bundle`): base64 `content`, `work_id`, `applicant_id`,
    `entities_types`, `update`, `draft_id`, `action_sequence`. Every message is acked, a bad
    one included (logged, counted as an error on its work), as OpenCTI's worker does.
    """

    def __init__(
        self, amqp: AMQPConnectionInfo, handle: BundleHandler, paused: threading.Event
    ) -> None:
        super().__init__(name="opencti-emulator-worker", daemon=True)
        self.amqp = amqp
        self.handle = handle
        self.paused = paused
        self._stop_event = threading.Event()
        self._new_queues: queue.Queue[str] = queue.Queue()
        self._queues: list[str] = []

    def consume(self, queue_name: str) -> None:
        """Start consuming a queue (thread-safe; picked up within 0.1 s)."""
        self._new_queues.put(queue_name)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=10)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._serve()
            except (pika.exceptions.AMQPError, OSError) as error:
                if self._stop_event.is_set():
                    break
                log.warning("OpenCTI emulator worker: AMQP error, reconnecting: %s", error)
                self._stop_event.wait(1.0)

    def _serve(self) -> None:
        # No heartbeat: the loop stops servicing the socket during a simulated outage.
        conn = pika.BlockingConnection(self.amqp.connection_parameters(heartbeat=0))
        try:
            channel = conn.channel()
            channel.basic_qos(prefetch_count=20)
            for name in self._queues:
                channel.queue_declare(name, durable=True)  # in case it was deleted meanwhile
                channel.basic_consume(name, self._on_message)
            while not self._stop_event.is_set():
                self._add_new_queues(channel)
                if self.paused.is_set():
                    time.sleep(0.1)
                    continue
                conn.process_data_events(time_limit=0.1)
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _add_new_queues(self, channel: Any) -> None:
        while True:
            try:
                name = self._new_queues.get_nowait()
            except queue.Empty:
                return
            if name not in self._queues:
                channel.basic_consume(name, self._on_message)
                self._queues.append(name)

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            message = json.loads(body)
            content = base64.b64decode(message["content"]).decode("utf-8")
            self.handle(content, message.get("work_id"), message.get("entities_types") or None)
        except GraphQLFault as fault:
            log.warning("OpenCTI emulator worker: bundle rejected: %s", fault.message)
        except Exception:  # one bad message must not stop the worker
            log.exception("OpenCTI emulator worker: cannot process a message")
        channel.basic_ack(method.delivery_tag)
