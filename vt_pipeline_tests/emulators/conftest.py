"""Fixtures for the emulator tests: `rabbitmq` and `opencti` live in the root conftest.

- `connector_helper` (function): a factory of real `pycti.OpenCTIConnectorHelper`s registered
  on the OpenCTI emulator, cleaned up after the test.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator


def stop_helper(helper: Any) -> None:
    """Stop a helper's threads without pycti's `stop()` races (it closes the listen
    connection from the wrong thread), then unregister it."""
    listener = getattr(helper, "listen_queue", None)
    if listener is not None and listener.is_alive():
        listener.exit_event.set()
        connection = listener.pika_connection
        if connection is not None and connection.is_open:
            connection.add_callback_threadsafe(listener.channel.stop_consuming)
        listener.join(timeout=10)
    ping = getattr(helper, "ping", None)
    if ping is not None:
        ping.stop()
    # The emulator may be down (outage tests): then there is nothing to unregister from.
    with contextlib.suppress(ValueError, OSError):
        helper.api.connector.unregister(helper.connector_id)


@pytest.fixture
def connector_helper(opencti: OpenCTIEmulator) -> Iterator[Callable[..., Any]]:
    """Factory: `connector_helper("INTERNAL_ENRICHMENT", "amqp", auto=False)` -> helper."""
    from pycti import OpenCTIConnectorHelper

    helpers: list[Any] = []

    def make(
        connector_type: str = "EXTERNAL_IMPORT", queue_protocol: str = "amqp", **connector: Any
    ) -> Any:
        # The helper installs a sys.excepthook that SIGTERMs the process on any uncaught
        # exception: fine for a connector container, fatal for a test session.
        hook = sys.excepthook
        try:
            helper = OpenCTIConnectorHelper(
                opencti.helper_config(connector_type, queue_protocol, **connector)
            )
        finally:
            sys.excepthook = hook
        helpers.append(helper)
        return helper

    yield make
    for helper in helpers:
        stop_helper(helper)
