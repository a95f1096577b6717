"""Fixtures of the enrichment tests: the job's resources against the emulators."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.virustotal.scaled_clock import ScaledClockVirusTotalResource
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.enrichment.settings import EnrichmentSettings
from vt_pipeline.opencti.resource import OpenCTIResource
from vt_pipeline.storage.store import StorageResource
from vt_pipeline_tests.conftest import PREMIUM_KEY


@pytest.fixture
def cti_resource(opencti: OpenCTIEmulator) -> Iterator[OpenCTIResource]:
    """The default enrichment connector, registered (the emulator empties the queues of a
    connector it has never seen: nothing an earlier test left there comes through)."""
    resource = OpenCTIResource(url=opencti.url, token=opencti.token, work_timeout_seconds=30)
    with resource.connector("enrichment"):
        pass  # registered: OpenCTI can now send it requests
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
