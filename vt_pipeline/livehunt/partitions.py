"""The Livehunt time windows: one partition per hour of notification dates.

Hourly keeps a year of history at ~8,800 partitions (well within what the UI and the instance
handle) while a window stays small enough to re-read cheaply. `end_offset=1` makes the current,
still-open hour a partition too, so the 5-minute schedule can keep it fresh.
The first partition is `VT_PIPELINE_LIVEHUNT_START` (format `YYYY-MM-DD-HH:MM`, UTC, on the
hour); a value Dagster cannot use fails the code location's load, naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime

import dagster as dg

from vt_pipeline.config import invalid

START_ENV = "VT_PIPELINE_LIVEHUNT_START"
# Run tags that make one run cover a range of windows (what a single-run backfill sets).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
DEFAULT_START = "2026-01-01-00:00"
START_FORMAT = "%Y-%m-%d-%H:%M"


def livehunt_start(env: Mapping[str, str] | None = None) -> str:
    """The first window's key from `VT_PIPELINE_LIVEHUNT_START`: a whole UTC hour, 1970 or later.

    Checked here because Dagster's own error (a bare strptime message) names no variable, and a
    start within an hour would make partitions that are not the hours VT notifications fall in.
    """
    raw = (os.environ if env is None else env).get(START_ENV, "")
    if not raw.strip():
        return DEFAULT_START
    accepted = "a UTC hour as YYYY-MM-DD-HH:00, e.g. 2026-01-01-00:00"
    try:
        start = datetime.strptime(raw.strip(), START_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise invalid(START_ENV, raw, accepted) from None
    if start.minute or start.year < 1970:
        raise invalid(START_ENV, raw, accepted + " (on the hour, 1970 or later)")
    return start.strftime(START_FORMAT)


livehunt_partitions = dg.HourlyPartitionsDefinition(
    start_date=livehunt_start(), timezone="UTC", end_offset=1
)


def partition_windows(context: dg.AssetExecutionContext) -> dict[str, dg.TimeWindow]:
    """The windows this run covers: one for a single partition, many for a backfill range."""
    return {
        key: livehunt_partitions.time_window_for_partition_key(key)
        for key in context.partition_keys
    }
