"""The `virustotal_quota` asset: the key's usage as VT reports it and the deployment's own
budget counts, every 5 minutes, in the words an operator uses.

A sensor records it as a runless materialization: a run every 5 minutes would bury the
Livehunt and enrichment runs in the runs list. Each tick is then "skipped" for Dagster (it
requested no run, and the UI labels it "0 runs requested"), so the sensor says what it recorded
in the tick's skip message (the label's tooltip) and in the tick's log (View logs).

What the UI shows:
- plotted (integers): the calls this deployment made in the last minute, this hour, today and
  this month, and what VirusTotal counts on the key (other tools on the key included);
- `quota`: a table per period (minute, hour, UTC day, month): used by the deployment, used on
  the key, and the limit in force with where it comes from (VirusTotal's figure for the key, a
  `VIRUSTOTAL_QUOTA_PER_*` setting that lowers it, a recent 429), never a bare 0;
- `calls_by_work`: today's and this month's calls per kind of work (Livehunt windows, backfills,
  enrichment clicks, auto-enrichment, playbooks), with its priority; `calls_by_job`: today's per
  job, Dagster's internal job names spelled as what they are.

Reading `/users/{key}/overall_quotas` is not counted by VirusTotal, and the budget counts come
from its store: the asset spends no quota.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import dagster as dg

from vt_pipeline.virustotal.budget import KINDS, PERIODS, PRIORITIES, UNLIMITED
from vt_pipeline.virustotal.resource import VirusTotalResource

QUOTA_INTERVAL_SECONDS = 300
# VT's overall_quotas names, by budget period.
_REPORTED = {"hour": "hourly", "day": "daily", "month": "monthly"}
# What an operator calls each kind of work the budget counts (the run's `vt_pipeline/kind`).
WORK_NAMES = {
    "interactive": "enrichment clicks",
    "playbook": "playbooks",
    "auto": "auto-enrichment",
    "livehunt": "Livehunt windows",
    "backfill": "backfills",
}
# Dagster's job names for runs that are not of a job defined here.
_JOB_NAMES = {
    "__ASSET_JOB": "assets materialized from the UI",
    "__ephemeral_asset_job__": "in-process runs (vt-pipeline demo, Python)",
    "livehunt_job": "Livehunt schedule and job runs (livehunt_job)",
    "vt_enrichment_job": "enrichment runs (vt_enrichment_job)",
}
_PERIOD_WORDS = {
    "minute": "this minute",
    "hour": "this hour",
    "day": "today",
    "month": "this month",
}


def job_name(job: str) -> str:
    """A job as an operator knows it (Dagster's implicit asset jobs by what starts them)."""
    if job in _JOB_NAMES:
        return _JOB_NAMES[job]
    if job.startswith("__ASSET_JOB"):
        return _JOB_NAMES["__ASSET_JOB"]
    return job


def limits_in_force(
    reported: Mapping[str, Any] | None,
    budget_limits: Mapping[str, int],
    configured: Mapping[str, int],
) -> dict[str, tuple[int | None, str]]:
    """Per period, the limit the budget applies now and where it comes from; None = no limit.

    The budget's figure is already the lowest of VT's and the settings (0 when neither sets
    one): a 0 there means "VirusTotal sets no limit" when VT reports one at or above
    `UNLIMITED`, and "not known yet" when it reports nothing.
    """
    allowed: dict[str, int] = {}
    for period, name in _REPORTED.items():
        value = (((reported or {}).get(f"api_requests_{name}") or {}).get("user") or {}).get(
            "allowed"
        )
        if isinstance(value, int):
            allowed[period] = value
    if "hour" in allowed:
        allowed["minute"] = allowed["hour"] // 60 if allowed["hour"] < UNLIMITED else UNLIMITED
    out: dict[str, tuple[int | None, str]] = {}
    for period in PERIODS:
        limit, vt, setting = int(budget_limits.get(period) or 0), allowed.get(period), configured
        own = int(setting.get(period) or 0)
        if limit:
            if own and limit == own:
                source = f"VIRUSTOTAL_QUOTA_PER_{period.upper()}"
            elif vt is not None and limit == vt:
                source = "VirusTotal's quota for the key"
            elif period == "minute" and vt is not None and limit < vt:
                source = "lowered for 10 minutes after a 429 (another client on the key)"
            else:
                source = "VirusTotal's quota for the key"
            out[period] = (limit, source)
        elif vt is not None and vt >= UNLIMITED:
            out[period] = (None, "none: VirusTotal sets no limit for the key")
        else:
            out[period] = (None, "not known: VirusTotal has not reported the key's quota")
    return out


def quota_metadata(
    reported: dict[str, Any] | None,
    usage: dict[str, Any],
    configured: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The asset's metadata: a few plotted counts, then the tables (see the module docstring)."""
    used_on_key: dict[str, int] = {}
    for period, name in _REPORTED.items():
        entry = ((reported or {}).get(f"api_requests_{name}") or {}).get("user") or {}
        if isinstance(entry.get("used"), int):
            used_on_key[period] = entry["used"]
    used = {p: int(usage["used"][p]) for p in PERIODS}
    out: dict[str, Any] = {
        "calls_last_minute": dg.MetadataValue.int(int(usage["last_minute"])),
        "calls_this_hour": dg.MetadataValue.int(used["hour"]),
        "calls_today": dg.MetadataValue.int(used["day"]),
        "calls_this_month": dg.MetadataValue.int(used["month"]),
    }
    for period, value in used_on_key.items():
        out[f"vt_key_used_{_PERIOD_WORDS[period].replace(' ', '_')}"] = dg.MetadataValue.int(value)
    limits = limits_in_force(reported, usage["limits"], configured or {})
    out["quota"] = dg.MetadataValue.table(
        [
            dg.TableRecord(
                {
                    "period": _PERIOD_WORDS[period],
                    "this_deployment": used[period],
                    "on_the_key": str(used_on_key.get(period, "")),
                    "limit": "none" if limits[period][0] is None else str(limits[period][0]),
                    "limit_from": limits[period][1],
                }
            )
            for period in PERIODS
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("period", "string"),
                dg.TableColumn("this_deployment", "int", description="calls budgeted here"),
                dg.TableColumn("on_the_key", "string", description="as VirusTotal counts them"),
                dg.TableColumn("limit", "string", description="the limit in force"),
                dg.TableColumn("limit_from", "string"),
            ]
        ),
    )
    month = usage.get("by_kind_month") or {}
    out["calls_by_work"] = dg.MetadataValue.table(
        [
            dg.TableRecord(
                {
                    "work": WORK_NAMES.get(kind, kind),
                    "today": int(usage["by_kind"].get(kind, 0)),
                    "this_month": int(month.get(kind, 0)),
                    "priority": PRIORITIES.get(kind, 0) + 1,
                }
            )
            for kind in KINDS
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("work", "string"),
                dg.TableColumn("today", "int"),
                dg.TableColumn("this_month", "int"),
                dg.TableColumn("priority", "int", description="1 is served first"),
            ]
        ),
    )
    jobs: dict[str, int] = {}
    for job, count in usage["by_job"].items():
        jobs[job_name(job)] = jobs.get(job_name(job), 0) + int(count)
    out["calls_by_job"] = dg.MetadataValue.table(
        [dg.TableRecord({"job": job, "today": count}) for job, count in sorted(jobs.items())],
        schema=dg.TableSchema(
            columns=[dg.TableColumn("job", "string"), dg.TableColumn("today", "int")]
        ),
    )
    return out


def summary(metadata: Mapping[str, Any]) -> str:
    """One line on what a tick recorded: the sensor's tick message in the UI."""
    if "calls_today" not in metadata:
        return "Recorded virustotal_quota: the budget is off (VIRUSTOTAL_QUOTA_BUDGET=false)."
    rows = {r.data["period"]: r.data for r in metadata["quota"].records}

    def of(period: str) -> str:
        row = rows[period]
        return f"{row['this_deployment']} {period}" + (
            f" of {row['limit']}" if row["limit"] != "none" else ""
        )

    key = metadata.get("vt_key_used_today")
    return (
        f"Recorded virustotal_quota: VT calls {of('today')}, {of('this minute')}"
        + (f"; the key used {key.value} today as VirusTotal counts" if key else "")
        + ". No run: the quota is recorded without one."
    )


virustotal_quota = dg.AssetSpec(
    "virustotal_quota",
    group_name="virustotal",
    kinds={"virustotal"},
    description="The VT key's quota and what this deployment spent of it: calls this minute, "
    "hour, UTC day and month, the limit in force, and today's calls per kind of work (Livehunt "
    "windows, backfills, enrichment clicks, auto-enrichment, playbooks) and per job. Recorded "
    "every 5 minutes by virustotal_quota_sensor, without a run and without spending quota.",
)


def read_quota(virustotal: VirusTotalResource) -> dict[str, Any]:
    """The metadata of one `virustotal_quota` materialization (no VT quota spent)."""

    async def read() -> tuple[dict[str, Any] | None, dict[str, Any]]:
        async with virustotal.session() as session:
            reported = await session.read_overall_quotas()
            budget = session.budget
            usage = await asyncio.to_thread(budget.usage) if budget else None
        return reported, usage or {}

    reported, usage = asyncio.run(read())
    if not usage:
        return {"budget": dg.MetadataValue.text("off (VIRUSTOTAL_QUOTA_BUDGET=false)")}
    configured = {
        "minute": virustotal.quota_per_minute,
        "day": virustotal.quota_per_day,
        "month": virustotal.quota_per_month,
    }
    return quota_metadata(reported, usage, configured)


@dg.sensor(
    name="virustotal_quota_sensor",
    minimum_interval_seconds=QUOTA_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=[virustotal_quota.key],
    description="Records virustotal_quota every 5 minutes without a run (a runless "
    "materialization: no run in the runs list, no quota spent). Each tick's message says what "
    "it recorded; Dagster lists such ticks as skipped because they requested no run.",
)
def virustotal_quota_sensor(
    context: dg.SensorEvaluationContext, virustotal: VirusTotalResource
) -> dg.SensorResult:
    metadata = read_quota(virustotal)
    recorded = summary(metadata)
    # Dagster labels a tick that requested no run "0 runs requested" whatever it did; what it
    # recorded is the tick's skip message (the label's tooltip) and its log (View logs).
    context.log.info(recorded)
    return dg.SensorResult(
        asset_events=[dg.AssetMaterialization(asset_key=virustotal_quota.key, metadata=metadata)],
        skip_reason=recorded,
    )


defs = dg.Definitions(assets=[virustotal_quota], sensors=[virustotal_quota_sensor])
