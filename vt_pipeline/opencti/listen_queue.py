"""An OpenCTI connector's listen queue, read without acknowledging.

pycti's `ListenQueue` consumes the queue and acknowledges every message *before* processing it,
so a crash loses the request. Here the caller reads a bounded number of messages with
`basic_get` (no auto-ack), decides, and acknowledges only those it is done with; every
message still unacknowledged when the channel closes goes back to the queue, in its place,
for the next reader.

Registration (`OpenCTIResource.connector("enrichment")`) gives the queue name and the broker
connection (`registerConnector` -> `config.listen`, `config.connection`, overridden by pycti's
`MQ_*` variables), so `ListenQueue.of(cti)` needs nothing else.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pika
import pika.exceptions

from vt_pipeline.opencti.resource import OpenCTIConnector, OpenCTIError


class ListenQueueError(OpenCTIError):
    """The broker cannot be reached or refused the queue; never contains the password."""


@dataclass(frozen=True)
class QueueMessage:
    """One message read and not yet acknowledged (its tag is only valid on its channel)."""

    delivery_tag: int
    body: bytes
    redelivered: bool


class ListenQueue:
    """An open channel on a listen queue; use as a context manager (close returns the rest)."""

    def __init__(
        self,
        connection: Mapping[str, Any],
        queue_name: str,
        ssl_config: Mapping[str, Any] | None = None,
        heartbeat_seconds: int = 120,
        timeout_seconds: float = 10.0,
    ) -> None:
        self.queue_name = queue_name
        self._password = str(connection.get("pass") or "")
        self._where = f"{connection.get('host')}:{connection.get('port')}"
        ssl_options = None
        if connection.get("use_ssl"):
            from pycti.connector.opencti_connector_helper import create_mq_ssl_context

            ssl_options = pika.SSLOptions(
                create_mq_ssl_context(dict(ssl_config or {})), str(connection["host"])
            )
        # The heartbeat outlasts a tick: between reads and acks the channel sees no I/O.
        parameters = pika.ConnectionParameters(
            host=connection.get("host"),
            port=int(connection.get("port") or 5672),
            virtual_host=connection.get("vhost") or "/",
            credentials=pika.PlainCredentials(str(connection.get("user")), self._password),
            ssl_options=ssl_options,
            heartbeat=heartbeat_seconds,
            blocked_connection_timeout=timeout_seconds,
            socket_timeout=timeout_seconds,
            stack_timeout=timeout_seconds,
            connection_attempts=1,
        )
        try:
            self._connection = pika.BlockingConnection(parameters)
            self._channel = self._connection.channel()
            # Passive: the queue is OpenCTI's; a missing one is an error, not ours to create.
            self._channel.queue_declare(queue_name, passive=True)
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.close()
            raise self._error(f"cannot open the listen queue {queue_name!r}", exc) from None

    @classmethod
    def of(cls, cti: OpenCTIConnector, **kwargs: Any) -> ListenQueue:
        """The listen queue of a registered connector (`OpenCTIResource.connector(kind)`)."""
        config = cti.helper.connector_config
        return cls(config["connection"], config["listen"], ssl_config=cti.helper.config, **kwargs)

    def __enter__(self) -> ListenQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def read(self, max_messages: int, max_seconds: float) -> list[QueueMessage]:
        """Up to `max_messages` messages, for at most `max_seconds`; stops early when empty.

        None is acknowledged: they stay with this channel until `ack` or `close`.
        """
        deadline = time.monotonic() + max_seconds
        messages: list[QueueMessage] = []
        while len(messages) < max_messages and time.monotonic() < deadline:
            try:
                method, _properties, body = self._channel.basic_get(self.queue_name, auto_ack=False)
            except (pika.exceptions.AMQPError, OSError) as exc:
                if messages:  # what was read is still ours to decide on (or to return)
                    break
                raise self._error(
                    f"cannot read the listen queue {self.queue_name!r}", exc
                ) from None
            if method is None:
                break
            messages.append(QueueMessage(method.delivery_tag, bytes(body), method.redelivered))
        return messages

    def ack(self, messages: Iterable[QueueMessage]) -> int:
        """Acknowledge these messages (they leave the queue); returns how many were acked.

        A failure (connection lost) acks nothing more: the rest return to the queue when the
        broker notices, and are read again.
        """
        done = 0
        for message in messages:
            try:
                self._channel.basic_ack(delivery_tag=message.delivery_tag)
            except (pika.exceptions.AMQPError, OSError):
                break
            done += 1
        if done:
            # basic_ack has no reply; a synchronous call after it on the same channel returns
            # only once the broker has handled the acks before it.
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                self._channel.queue_declare(self.queue_name, passive=True)
        return done

    def depth(self) -> int | None:
        """Messages ready in the queue (not counting the ones this channel holds)."""
        try:
            return int(
                self._channel.queue_declare(self.queue_name, passive=True).method.message_count
            )
        except (pika.exceptions.AMQPError, OSError):
            return None

    def close(self) -> None:
        """Close the channel: every message not acknowledged goes back to the queue."""
        connection = getattr(self, "_connection", None)
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()

    def _error(self, what: str, exc: BaseException) -> ListenQueueError:
        text = str(exc) or type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return ListenQueueError(f"{what} on RabbitMQ at {self._where}: {text[:300]}")
