"""Fixtures of the enrichment tests: the job's resources against the emulators."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from vt_pipeline.emulators.opencti.amqp import listen_queue
from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.rabbitmq import RabbitMQ
from vt_pipeline.emulators.virustotal.scaled_clock import ScaledClockVirusTotalResource
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.enrichment.settings import EnrichmentSettings
from vt_pipeline.opencti.resource import OpenCTIResource
from vt_pipeline.storage.store import StorageResource
from vt_pipeline_tests.conftest import PREMIUM_KEY


@pytest.fixture
def cti_resource(opencti: OpenCTIEmulator, rabbitmq: RabbitMQ) -> Iterator[OpenCTIResource]:
    """The default enrichment connector, registered, its listen queue empty: the broker
    outlives each test's OpenCTI emulator, and a message an earlier test left there names a
    work this emulator never had."""
    resource = OpenCTIResource(url=opencti.url, token=opencti.token, work_timeout_seconds=30)
    with resource.connector("enrichment"):
        pass  # registered: OpenCTI can now send it requests
    connection = pika.BlockingConnection(rabbitmq.connection_parameters())
    try:
        connection.channel().queue_purge(listen_queue(resource.enrichment_connector_id))
    finally:
        connection.close()
    yield resource


@pytest.fixture
def job_resources(
    vt_emulator: VirusTotalEmulator, cti_resource: OpenCTIResource, tmp_path: Path
) -> Callable[..., dict[str, Any]]:
    """The job's resources against the emulators (fast retries and polls); override by name."""

    def make(virustotal: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
        vt_config: dict[str, Any] = {
            "api_key": PREMIUM_KEY,
            "api_url": vt_emulator.url,
            "timeout_seconds": 5.0,
            "backoff_base_seconds": 0.01,
            "backoff_max_seconds": 0.05,
            "budget_time_scale": 240.0,  # a 429 waits for the next "minute": 0.25 s
            "max_attempts": 10,
            "analysis_poll_seconds": 0.01,
            "analysis_poll_max_seconds": 0.05,
        }
        return {
            "virustotal": ScaledClockVirusTotalResource(**{**vt_config, **(virustotal or {})}),
            "opencti": cti_resource,
            "enrichment_settings": EnrichmentSettings(**settings),
            "storage": StorageResource(base_dir=str(tmp_path / "storage")),
        }

    return make
