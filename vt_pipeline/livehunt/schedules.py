"""Keeping the open Livehunt window fresh, at upstream's cadence.

Every tick materializes the current (open) hour and re-reads the previous one, so a notification
VirusTotal publishes late, or one that arrived while the previous run was in flight, is still
picked up. Re-reading is cheap (one or two pages; stored samples are not downloaded again) and
idempotent (deterministic bundles). The cadence is upstream's `CONNECTOR_DURATION_PERIOD`
(ISO 8601, e.g. PT5M) or the older `VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_INTERVAL_SEC`; default 5
minutes. Cron spells it rounded up to whole minutes, whole hours from an hour on, and at most a
day; a tick reads back over the whole rounded interval (at least the previous hour), so a longer
cadence never skips a window. The schedule starts stopped: turn it on in the UI (Automation) once
VT is configured.
"""

import os
import re
from collections.abc import Mapping
from datetime import timedelta

import dagster as dg

from vt_pipeline.config import invalid, parse_int
from vt_pipeline.livehunt.partitions import RANGE_END_TAG, RANGE_START_TAG, livehunt_partitions

DURATION_ENV = "CONNECTOR_DURATION_PERIOD"
INTERVAL_ENV = "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_INTERVAL_SEC"
_ISO_DURATION = re.compile(
    r"^P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$"
)


def livehunt_interval(env: Mapping[str, str] | None = None) -> timedelta:
    """The cadence from the upstream variables; both are checked when set, the period wins."""
    env = os.environ if env is None else env
    seconds = env.get(INTERVAL_ENV, "")
    interval = (
        timedelta(seconds=parse_int(INTERVAL_ENV, seconds, minimum=1)) if seconds.strip() else None
    )
    if period := env.get(DURATION_ENV, ""):
        match = _ISO_DURATION.match(period.strip().upper())
        parts = {k: int(v) for k, v in (match.groupdict() if match else {}).items() if v}
        if not parts or not timedelta(**parts):
            accepted = (
                "a positive ISO 8601 duration in weeks, days, hours, minutes, seconds, e.g. PT5M"
            )
            raise invalid(DURATION_ENV, period, accepted)
        return timedelta(**parts)
    return interval or timedelta(minutes=5)


def tick_period(interval: timedelta) -> timedelta:
    """The interval as cron can keep it: whole minutes, whole hours from an hour on, a day at most.

    Rounded up, so the schedule never runs more often than asked (quota is money), except past a
    day, which cron cannot spell as a step.
    """
    minutes = max(1, -(-int(interval.total_seconds()) // 60))
    if minutes < 60:
        return timedelta(minutes=minutes)
    return timedelta(hours=min(24, -(-minutes // 60)))


def interval_to_cron(interval: timedelta) -> str:
    """Cron for `tick_period(interval)`."""
    period = tick_period(interval)
    minutes = int(period.total_seconds()) // 60
    if minutes < 60:
        return f"*/{minutes} * * * *"
    if minutes < 24 * 60:
        return f"0 */{minutes // 60} * * *"
    return "0 0 * * *"


def spelled(period: timedelta) -> str:
    """A tick period in words for the UI: `5 minutes`, `1 hour`, `24 hours`."""
    minutes = int(period.total_seconds()) // 60
    count, unit = (minutes // 60, "hour") if minutes >= 60 else (minutes, "minute")
    return f"{count} {unit}{'' if count == 1 else 's'}"


# Room for a run to start and finish on a loaded machine, on top of the schedule's ticks.
RUN_ALLOWANCE = timedelta(minutes=10)


def livehunt_freshness(interval: timedelta) -> dg.FreshnessPolicy:
    """Freshness of the Livehunt assets, from the schedule's cadence: every tick materializes
    them, so a healthy deployment's latest materialization is at most one tick (plus a run) old.
    Two ticks missed or failed in a row warn, four fail: the asset shows stale in the UI (the
    daemon evaluates it), which is how a stuck schedule or a window that keeps failing shows.
    With the schedule off (its default) they go stale too, which is true: nothing updates them.
    """
    period = tick_period(interval)
    return dg.FreshnessPolicy.time_window(
        warn_window=2 * period + RUN_ALLOWANCE, fail_window=4 * period + RUN_ALLOWANCE
    )


LIVEHUNT_INTERVAL = livehunt_interval()
LIVEHUNT_FRESHNESS = livehunt_freshness(LIVEHUNT_INTERVAL)


livehunt_job = dg.define_asset_job(
    "livehunt_job",
    selection=dg.AssetSelection.groups("livehunt"),
    description=(
        "VirusTotal Livehunt to OpenCTI, per hourly window: notifications -> files (filtered, "
        "with drop reasons) -> rulesets and samples -> STIX bundles (checked) -> delivered to "
        "OpenCTI, samples uploaded, then, with delete_notification on, the notifications "
        "deleted on VirusTotal. Replaces the "
        "virustotal-livehunt-notifications connector."
    ),
)


@dg.schedule(
    cron_schedule=interval_to_cron(LIVEHUNT_INTERVAL),
    job=livehunt_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description=(
        f"Every {spelled(tick_period(LIVEHUNT_INTERVAL))} (CONNECTOR_DURATION_PERIOD, upstream's "
        "cadence): one livehunt_job run over the open hour and the previous one, so late "
        "notifications are still read; re-reading is idempotent and downloads nothing twice. "
        "Starts stopped: turn it on once VirusTotal and OpenCTI are configured."
    ),
)
def livehunt_fresh_windows(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """One run from the previous hour (or the previous tick, if longer ago) to the open hour."""
    now = context.scheduled_execution_time.timestamp()
    lookback = max(3600.0, tick_period(LIVEHUNT_INTERVAL).total_seconds())
    current = livehunt_partitions.get_partition_key_for_timestamp(now)
    first = livehunt_partitions.get_first_partition_key()
    previous = max(
        livehunt_partitions.get_partition_key_for_timestamp(now - lookback), first or current
    )
    return dg.RunRequest(
        run_key=None,
        tags={
            RANGE_START_TAG: previous,
            RANGE_END_TAG: current,
        },
    )
