"""A Livehunt run's memory follows its busiest window, not the whole run (issue 18).

A day of 100,000 notifications is ~2.6 GiB of parsed JSON (27 KiB a notification): a run that
held every window's values at once, as the chain did before, needed gigabytes (27 KiB more per
notification measured between 1,000 and 10,000). Every step now reads and writes one window at
a time. Measured here with tracemalloc on the real chain against the emulator: tripling the
notifications of an 8-window run may add only a fraction of their parsed size to the run's
peak, as it adds an eighth of them to each window (the code before added 22 KiB a notification
here, its parsed size being 26 KiB; this code adds 4 to 7).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from vt_pipeline.emulators.processes import spawn_owned, terminate_group
from vt_pipeline.emulators.virustotal.corpus import generate_corpus
from vt_pipeline.livehunt.assets import livehunt_assets
from vt_pipeline.livehunt.partitions import RANGE_END_TAG, RANGE_START_TAG
from vt_pipeline.livehunt.settings import LivehuntSettings
from vt_pipeline.opencti.resource import OpenCTIResource
from vt_pipeline.storage.store import PartitionedFileIOManager, StorageResource, dumps_json
from vt_pipeline.virustotal.resource import VirusTotalResource
from vt_pipeline_tests.conftest import LIVEHUNT_START, PREMIUM_KEY, partition_key

pytestmark = pytest.mark.integration

WINDOWS = 8
SIZES = (320, 960)  # 40 and 120 a window: full pages (40) in both, as many in flight
HELD = 0  # the IO manager's hand-over cache off: the chain's own memory, whatever the volume


@contextmanager
def emulator_process(notifications: int, log: Path) -> Iterator[str]:
    """The VirusTotal emulator in a process of its own, as VT is remote: its allocations are
    not the pipeline's, and tracemalloc does not slow it down. Yields its URL."""
    end = LIVEHUNT_START + timedelta(hours=WINDOWS)
    command = [
        sys.executable, "-m", "vt_pipeline.cli", "emulate", "virustotal", "--port", "0",
        "--seed", "18", "--notifications", str(notifications),
        "--start", LIVEHUNT_START.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "--end", end.strftime("%Y-%m-%dT%H:%M:%SZ"), "--api-key", PREMIUM_KEY,
    ]  # fmt: skip
    with log.open("wb") as out:
        process, watchdog = spawn_owned(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "listening on " not in (text := log.read_text(errors="replace")):
            assert process.poll() is None and time.monotonic() < deadline, text[-2000:]
            time.sleep(0.1)
        yield text.split("listening on ", 1)[1].split()[0]
    finally:
        terminate_group(process, grace=5.0)
        watchdog.release()


def run_peak(tmp_path: Path, notifications: int) -> tuple[int, int]:
    """Peak Python heap of one run over WINDOWS windows (bytes above its start), and the
    notifications it stored."""
    base = str(tmp_path / f"storage-{notifications}")
    log = tmp_path / f"emulator-{notifications}.log"
    with emulator_process(notifications, log) as url, dg.instance_for_test() as instance:
        resources = {
            "virustotal": VirusTotalResource(api_key=PREMIUM_KEY, api_url=url),
            "livehunt_settings": LivehuntSettings(upload_artifact=False),
            "storage": StorageResource(base_dir=base),
            "io_manager": PartitionedFileIOManager(base_dir=base, held_bytes=HELD),
            "opencti": OpenCTIResource(),
        }
        gc.collect()
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            result = dg.materialize(  # the chain's assets; the check reads bundles as they do
                livehunt_assets,
                instance=instance,
                resources=resources,
                tags={RANGE_START_TAG: partition_key(0), RANGE_END_TAG: partition_key(WINDOWS - 1)},
                run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            )
            peak = tracemalloc.get_traced_memory()[1] - start
        finally:
            tracemalloc.stop()
    assert result.success
    stored = sum(
        event.materialization.metadata["notifications"].value
        for event in result.get_asset_materialization_events()
        if event.materialization.asset_key.to_user_string() == "livehunt_files"
    )
    return peak, stored


def parsed_size(items: list[dict]) -> int:
    """What the notifications take parsed (as the steps hold them), by tracemalloc."""
    encoded = [dumps_json(item) for item in items]
    tracemalloc.start()
    try:
        parsed = [json.loads(text) for text in encoded]
        size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del parsed
    return size


def test_a_run_peaks_with_its_windows_not_with_the_whole_run(tmp_path: Path) -> None:
    (small, seen_small), (large, seen_large) = (run_peak(tmp_path, size) for size in SIZES)
    assert (seen_small, seen_large) == SIZES
    added = SIZES[1] - SIZES[0]
    end = LIVEHUNT_START + timedelta(hours=WINDOWS)
    corpus = generate_corpus(seed=18, notifications=SIZES[1], start=LIVEHUNT_START, end=end)
    per_notification = parsed_size(list(corpus.notifications)) / SIZES[1]  # ~27 KiB
    growth = (large - small) / added
    print(
        f"peak MiB {small / 2**20:.1f} -> {large / 2**20:.1f}: {growth / 1024:.1f} KiB per "
        f"added notification ({per_notification / 1024:.1f} KiB parsed)"
    )
    # A run holding all its notifications grows by at least their parsed size; one holding a
    # window at a time (plus a copy or two of it while a step works) by a fraction of it.
    assert growth < 0.5 * per_notification, (small, large, per_notification)
