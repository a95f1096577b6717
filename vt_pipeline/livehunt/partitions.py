"""The Livehunt time windows: one partition per hour of notification dates.

Hourly keeps a year of history at ~8,800 partitions (well within what the UI and the instance
handle) while a window stays small enough to re-read cheaply. `end_offset=1` makes the current,
still-open hour a partition too, so the 5-minute schedule can keep it fresh.
The first partition is `VT_PIPELINE_LIVEHUNT_START` (format `YYYY-MM-DD-HH:MM`, UTC).
"""

from __future__ import annotations

import os

import dagster as dg

START_ENV = "VT_PIPELINE_LIVEHUNT_START"
# Run tags that make one run cover a range of windows (what a single-run backfill sets).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
DEFAULT_START = "2026-01-01-00:00"

livehunt_partitions = dg.HourlyPartitionsDefinition(
    start_date=os.environ.get(START_ENV) or DEFAULT_START, timezone="UTC", end_offset=1
)


def partition_windows(context: dg.AssetExecutionContext) -> dict[str, dg.TimeWindow]:
    """The windows this run covers: one for a single partition, many for a backfill range."""
    return {
        key: livehunt_partitions.time_window_for_partition_key(key)
        for key in context.partition_keys
    }
