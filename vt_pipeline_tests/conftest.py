"""Shared fixtures: the VirusTotal emulator over a fixed corpus, a Dagster instance, resources.

The corpus covers six fixed hours (LIVEHUNT_START .. +6 h) so that partition keys, counts and
bundles are the same on every machine and every day.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# The corpus's hours stay partitions on any day: the default first window rolls with VT's
# 7-day retention, so it is pinned before vt_pipeline (which builds the partitions) is imported.
# Subprocesses (code servers, daemons, run workers) inherit it.
os.environ.setdefault("VT_PIPELINE_LIVEHUNT_START", "2026-11-20-00:00")
# The enrichment tests written for batch runs (one run per tick's batch: its recovery, its
# daemon tests) get the batch mode; the drain mode's tests (enrichment/test_drain*.py) build
# their sensor with `SensorSettings(mode="drain")` or pass the variable to their daemon.
os.environ.setdefault("VT_PIPELINE_ENRICHMENT_MODE", "batch")

import dagster as dg
import pika
import pytest

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.rabbitmq import RabbitMQ
from vt_pipeline.emulators.virustotal.corpus import Corpus, generate_corpus
from vt_pipeline.emulators.virustotal.scaled_clock import ScaledClockVirusTotalResource
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.livehunt.settings import LivehuntSettings
from vt_pipeline.opencti.resource import OpenCTIResource
from vt_pipeline.storage.store import PartitionedFileIOManager, StorageResource

LIVEHUNT_START = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
CORPUS_HOURS = 6
PREMIUM_KEY = "premium-test-key"
PUBLIC_KEY = "public-test-key"


def partition_key(hour: int) -> str:
    """The hourly partition key `hour` hours after LIVEHUNT_START."""
    return (LIVEHUNT_START + timedelta(hours=hour)).strftime("%Y-%m-%d-%H:%M")


def materialize_hours(
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    first: int,
    last: int | None = None,
    raise_on_error: bool = True,
    deliver: bool = False,
) -> dg.ExecuteInProcessResult:
    """One run of the Livehunt chain over the corpus hours first..last (inclusive)."""
    from vt_pipeline.livehunt.summary import materialize_windows

    last = first if last is None else last
    return materialize_windows(
        instance,
        partition_key(first),
        partition_key(last),
        resources,
        raise_on_error=raise_on_error,
        deliver=deliver,
    )


def stored(base: Path, asset: str, hour: int, ext: str = ".json") -> Path:
    """Where the storage IO manager keeps `asset` for the corpus hour `hour`."""
    return base / asset / f"{partition_key(hour)}{ext}"


def rebuild_bundle(
    instance: dg.DagsterInstance, resources: dict[str, Any], base: Path, hour: int
) -> tuple[bytes, bytes]:
    """The window's stored bundle, then the same window's bundle made again alone (its stored
    inputs read, nothing upstream run) in its place."""
    from vt_pipeline.livehunt.assets import livehunt_assets, livehunt_stix_bundles
    from vt_pipeline.livehunt.checks import livehunt_stix_bundle_is_valid

    path = stored(base, "livehunt_stix_bundles", hour)
    first = path.read_bytes()
    path.unlink()
    rebuilt = dg.materialize(
        [*livehunt_assets, livehunt_stix_bundle_is_valid],
        selection=dg.AssetSelection.assets(livehunt_stix_bundles),
        partition_key=partition_key(hour),
        instance=instance,
        resources=resources,
    )
    assert rebuilt.success
    return first, path.read_bytes()


def take(rabbitmq: RabbitMQ, queue: str) -> list[bytes]:
    """Every message waiting on a queue, acknowledged: the test consumes them (by hand, where
    the sensor would read a listen queue)."""
    connection = pika.BlockingConnection(rabbitmq.connection_parameters())
    try:
        channel = connection.channel()
        bodies = []
        while True:
            method, _, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return bodies
            bodies.append(body)
    finally:
        connection.close()


def window(hour: int) -> tuple[int, int]:
    start = int((LIVEHUNT_START + timedelta(hours=hour)).timestamp())
    return start, start + 3600


@pytest.fixture(scope="session")
def vt_corpus() -> Corpus:
    end = LIVEHUNT_START + timedelta(hours=CORPUS_HOURS)
    return generate_corpus(seed=2026, notifications=360, start=LIVEHUNT_START, end=end)


@pytest.fixture
def vt_emulator(vt_corpus: Corpus) -> Iterator[VirusTotalEmulator]:
    emulator = VirusTotalEmulator(
        vt_corpus, api_keys={PREMIUM_KEY: True, PUBLIC_KEY: False}, fault_timeout_seconds=3
    )
    with emulator.serve():
        yield emulator


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQ]:
    """A private rabbitmq-server (needs `apt-get install rabbitmq-server`)."""
    with RabbitMQ() as broker:
        yield broker


@pytest.fixture
def opencti(rabbitmq: RabbitMQ) -> Iterator[OpenCTIEmulator]:
    with OpenCTIEmulator(amqp=rabbitmq) as emulator:
        yield emulator


@pytest.fixture
def dagster_instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


ResourcesFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def livehunt_resources(vt_emulator: VirusTotalEmulator, tmp_path: Path) -> ResourcesFactory:
    """Factory of the Livehunt resources against the emulator; override any setting by name.

    `storage_dir` picks another storage base (to compare two runs), `api_key` another key,
    `opencti` an OpenCTI to deliver to.
    Retries are fast here: the emulator's faults are what we test, not the waiting.
    """

    def make(
        storage_dir: Path | None = None,
        api_key: str = PREMIUM_KEY,
        opencti: OpenCTIResource | None = None,
        **settings: Any,
    ) -> dict[str, Any]:
        base = str(storage_dir or tmp_path / "storage")
        return {
            "virustotal": ScaledClockVirusTotalResource(
                api_key=api_key,
                api_url=vt_emulator.url,
                timeout_seconds=2.0,
                backoff_base_seconds=0.01,
                backoff_max_seconds=0.05,
                budget_time_scale=240.0,  # a 429 waits for the next "minute": 0.25 s
                max_attempts=10,
            ),
            "livehunt_settings": LivehuntSettings(**{"upload_artifact": True, **settings}),
            "storage": StorageResource(base_dir=base),
            "io_manager": PartitionedFileIOManager(base_dir=base),
            "opencti": opencti or OpenCTIResource(),  # default: OpenCTI not configured
        }

    return make
