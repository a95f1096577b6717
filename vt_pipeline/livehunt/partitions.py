"""The Livehunt time windows: one partition per hour of notification dates.

Hourly keeps a window small enough to re-read cheaply. `end_offset=1` makes the current,
still-open hour a partition too, so the 5-minute schedule can keep it fresh.

Where the windows start, and why it moves once a week:
- VirusTotal deletes IoC Stream (Livehunt) notifications 7 days after they matched
  (`VT_RETENTION`; Google Threat Intelligence's IoC Stream documentation: "Notifications are
  deleted automatically after 7 days"). A window older than that can never be filled: a fixed
  start months back showed thousands of "missing" windows that no backfill could ever fill.
- `MAX_AGE_DAYS` does not move the start: it drops files by their age *at the notification
  date*, so it changes what a window keeps, not which windows VirusTotal can still serve.
- The default start is Monday 00:00 UTC of the week holding "now - 7 days": every window VT
  still serves is a partition, and at most 7 days of already-expired windows are shown
  before them (7 to 14 days of windows in all, ~170-340 partitions).
- Why not "now - 7 days" to the hour: the start is part of the partitions definition, and
  Dagster drops keys before it. A start that moved every hour would invalidate the oldest
  window of a backfill while it runs, and give the code server, the daemon and each run
  worker (each loads the code at its own moment) definitions that disagree about the first
  key. A start that moves only at Monday 00:00 UTC is the same for every process of a week;
  only a backfill started just before a Monday midnight over the oldest windows (windows VT
  has already deleted) can see its first keys leave the definition.
- What Dagster does with materializations before a new start: they stay in the event log and
  storage keeps their files (nothing is deleted); the asset's partition status is rebuilt for
  the new definition (its cache is keyed by the definition) and simply no longer lists them.
  To keep a longer history visible, pin the start: `VT_PIPELINE_LIVEHUNT_START`
  (`YYYY-MM-DD-HH:MM`, UTC, on the hour) overrides the rolling default; a value Dagster cannot
  use fails the code location's load, naming the variable.

How many windows a backfill puts in one run (`VT_PIPELINE_LIVEHUNT_WINDOWS_PER_RUN`, default
24, a day): a run's memory follows its busiest window, not its number of windows, because every
step reads and writes one window at a time. What a run keeps for all its windows is small and
grows with its work, not its windows: a download record and a call tally per kept sample (about
0.5 KiB each, ~20 MiB for the 40,000 samples of a 100,000-notification day). More windows per
run share one process start and the run's fixed cost (~2 s of Dagster events); fewer bound
that per-sample part for a team whose days are far bigger. The README has the figures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import dagster as dg

from vt_pipeline.config import env_int, invalid

START_ENV = "VT_PIPELINE_LIVEHUNT_START"
WINDOWS_PER_RUN_ENV = "VT_PIPELINE_LIVEHUNT_WINDOWS_PER_RUN"
DEFAULT_WINDOWS_PER_RUN = 24
MAX_WINDOWS_PER_RUN = 168  # a week: VT keeps notifications 7 days
# Run tags that make one run cover a range of windows (what a single-run backfill sets).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
START_FORMAT = "%Y-%m-%d-%H:%M"
# How long VirusTotal keeps a Livehunt (IoC Stream) notification: older windows cannot be read.
VT_RETENTION = timedelta(days=7)


def rolling_start(now: datetime) -> str:
    """The first window by default: Monday 00:00 UTC of the week that holds `now - VT_RETENTION`,
    so every window VT still serves is a partition and the start moves once a week."""
    oldest = (now - VT_RETENTION).astimezone(UTC)
    monday = oldest.date() - timedelta(days=oldest.weekday())
    return datetime(monday.year, monday.month, monday.day, tzinfo=UTC).strftime(START_FORMAT)


def livehunt_start(env: Mapping[str, str] | None = None, now: datetime | None = None) -> str:
    """The first window's key: `VT_PIPELINE_LIVEHUNT_START` (a whole UTC hour, 1970 or later),
    else the rolling start of VirusTotal's retention (`rolling_start`).

    Checked here because Dagster's own error (a bare strptime message) names no variable, and a
    start within an hour would make partitions that are not the hours VT notifications fall in.
    """
    raw = (os.environ if env is None else env).get(START_ENV, "")
    if not raw.strip():
        return rolling_start(now or datetime.now(UTC))
    accepted = "a UTC hour as YYYY-MM-DD-HH:00, e.g. 2026-01-01-00:00"
    try:
        start = datetime.strptime(raw.strip(), START_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise invalid(START_ENV, raw, accepted) from None
    if start.minute or start.year < 1970:
        raise invalid(START_ENV, raw, accepted + " (on the hour, 1970 or later)")
    return start.strftime(START_FORMAT)


def windows_per_run(env: Mapping[str, str] | None = None) -> int:
    """The windows a backfill puts in one run (the assets' BackfillPolicy): an integer from 1
    to 168, default 24; see the module docstring for how to size it."""
    return env_int(
        WINDOWS_PER_RUN_ENV, DEFAULT_WINDOWS_PER_RUN, env, minimum=1, maximum=MAX_WINDOWS_PER_RUN
    )


livehunt_partitions = dg.HourlyPartitionsDefinition(
    start_date=livehunt_start(), timezone="UTC", end_offset=1
)


def partition_windows(context: dg.AssetExecutionContext) -> dict[str, dg.TimeWindow]:
    """The windows this run covers: one for a single partition, many for a backfill range."""
    return {
        key: livehunt_partitions.time_window_for_partition_key(key)
        for key in context.partition_keys
    }
