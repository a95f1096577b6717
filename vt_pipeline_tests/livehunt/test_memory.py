"""A Livehunt run's memory follows its busiest window, not the whole run (issue 18).

A day of 100,000 notifications is ~2.6 GiB of parsed JSON (27 KiB a notification): a run that
held every window's values at once, as the chain did before, needed gigabytes (27 KiB more per
notification measured between 1,000 and 10,000). Every step now reads and writes one window at
a time. Measured here with tracemalloc on the real chain against the emulator: tripling the
notifications of a 12-window run may add only a fraction of their parsed size to the run's
peak, as it adds a twelfth of them to each window.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from vt_pipeline.emulators.virustotal.corpus import generate_corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.livehunt.settings import LivehuntSettings
from vt_pipeline.livehunt.summary import materialize_windows
from vt_pipeline.opencti.resource import OpenCTIResource
from vt_pipeline.storage.store import PartitionedFileIOManager, StorageResource, dumps_json
from vt_pipeline.virustotal.resource import VirusTotalResource
from vt_pipeline_tests.conftest import LIVEHUNT_START, PREMIUM_KEY, partition_key

pytestmark = pytest.mark.integration

WINDOWS = 12
SIZES = (480, 1440)  # 40 and 120 a window: full pages (40) in both, as many in flight
HELD = 0  # the IO manager's hand-over cache off: the chain's own memory, whatever the volume


def run_peak(tmp_path: Path, notifications: int) -> tuple[int, int, int]:
    """Peak Python heap of one run over WINDOWS windows (bytes above its start), the
    notifications it stored and their parsed size in bytes."""
    end = LIVEHUNT_START + timedelta(hours=WINDOWS)
    corpus = generate_corpus(seed=18, notifications=notifications, start=LIVEHUNT_START, end=end)
    emulator = VirusTotalEmulator(corpus, api_keys={PREMIUM_KEY: True})
    base = str(tmp_path / f"storage-{notifications}")
    with emulator.serve(), dg.instance_for_test() as instance:
        resources = {
            "virustotal": VirusTotalResource(api_key=PREMIUM_KEY, api_url=emulator.url),
            "livehunt_settings": LivehuntSettings(upload_artifact=False),
            "storage": StorageResource(base_dir=base),
            "io_manager": PartitionedFileIOManager(base_dir=base, held_bytes=HELD),
            "opencti": OpenCTIResource(),
        }
        gc.collect()
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            last = partition_key(WINDOWS - 1)
            result = materialize_windows(
                instance, partition_key(0), last, resources, log_level="ERROR"
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
    return peak, stored, parsed_size(list(corpus.notifications))


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
    (small, seen_small, _), (large, seen_large, size_large) = (
        run_peak(tmp_path, size) for size in SIZES
    )
    assert (seen_small, seen_large) == SIZES
    added = SIZES[1] - SIZES[0]
    per_notification = size_large / SIZES[1]  # ~27 KiB
    growth = (large - small) / added
    print(
        f"peak MiB {small / 2**20:.1f} -> {large / 2**20:.1f}: {growth / 1024:.1f} KiB per "
        f"added notification ({per_notification / 1024:.1f} KiB parsed)"
    )
    # A run holding all its notifications grows by at least their parsed size; one holding a
    # window at a time (plus a copy or two of it while a step works) by a fraction of it.
    assert growth < 0.5 * per_notification, (small, large, per_notification)
