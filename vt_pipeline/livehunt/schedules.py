"""Keeping the open Livehunt window fresh, at upstream's cadence.

Every tick materializes the current (open) hour and re-reads the previous one, so a notification
VirusTotal publishes late, or one that arrived while the previous run was in flight, is still
picked up. Re-reading is cheap (one or two pages; stored samples are not downloaded again) and
idempotent (deterministic bundles). The cadence is upstream's `CONNECTOR_DURATION_PERIOD`
(ISO 8601, e.g. PT5M) or the older `VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_INTERVAL_SEC`; default 5
minutes. The schedule starts stopped: turn it on in the UI (Automation) once VT is configured.
"""

import os
import re
from collections.abc import Mapping
from datetime import timedelta

import dagster as dg

from vt_pipeline.livehunt.partitions import RANGE_END_TAG, RANGE_START_TAG, livehunt_partitions

_ISO_DURATION = re.compile(
    r"^P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$"
)


def livehunt_interval(env: Mapping[str, str] | None = None) -> timedelta:
    env = os.environ if env is None else env
    if period := env.get("CONNECTOR_DURATION_PERIOD", "").strip().upper():
        match = _ISO_DURATION.match(period)
        if not match or not any(match.groupdict().values()):
            raise ValueError(
                f"CONNECTOR_DURATION_PERIOD must be an ISO 8601 duration, not {period!r}"
            )
        return timedelta(**{k: int(v) for k, v in match.groupdict().items() if v})
    if seconds := env.get("VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_INTERVAL_SEC", "").strip():
        return timedelta(seconds=int(seconds))
    return timedelta(minutes=5)


def interval_to_cron(interval: timedelta) -> str:
    """Cron for an interval; rounded up to whole minutes (cron's resolution), capped at a day."""
    minutes = max(1, -(-int(interval.total_seconds()) // 60))
    if minutes < 60:
        return f"*/{minutes} * * * *"
    if minutes < 24 * 60:
        return f"0 */{minutes // 60} * * *"
    return "0 0 * * *"


livehunt_job = dg.define_asset_job(
    "livehunt_job",
    selection=dg.AssetSelection.groups("livehunt"),
    description="Livehunt notifications -> files -> rulesets/artifacts -> STIX bundles.",
)


@dg.schedule(
    cron_schedule=interval_to_cron(livehunt_interval()),
    job=livehunt_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
def livehunt_fresh_windows(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """One run over [previous hour, current hour]: the open window and late arrivals."""
    now = context.scheduled_execution_time.timestamp()
    current = livehunt_partitions.get_partition_key_for_timestamp(now)
    first = livehunt_partitions.get_first_partition_key()
    previous = max(
        livehunt_partitions.get_partition_key_for_timestamp(now - 3600), first or current
    )
    return dg.RunRequest(
        run_key=None,
        tags={
            RANGE_START_TAG: previous,
            RANGE_END_TAG: current,
        },
    )
