"""The `virustotal_quota` asset: the key's usage as VT reports it and the deployment's own
budget counts, as integer metadata the UI plots (Asset > Plots), every 5 minutes.

A sensor records it as a runless materialization: a run every 5 minutes would bury the
Livehunt and enrichment runs in the runs list.

Reading `/users/{key}/overall_quotas` is not counted by VirusTotal, and the budget counts come
from its store: the asset spends no quota.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import dagster as dg

from vt_pipeline.virustotal.budget import KINDS, PERIODS
from vt_pipeline.virustotal.resource import VirusTotalResource

QUOTA_INTERVAL_SECONDS = 300
_REPORTED = (("hourly", "hour"), ("daily", "day"), ("monthly", "month"))


def quota_metadata(reported: dict[str, Any] | None, usage: dict[str, Any]) -> dict[str, Any]:
    """Flat integer metadata (one plot each): VT's view of the key, then the budget's."""
    out: dict[str, Any] = {}
    for name, period in _REPORTED:
        entry = ((reported or {}).get(f"api_requests_{name}") or {}).get("user") or {}
        if isinstance(entry.get("used"), int):
            out[f"vt_key_used_{period}"] = dg.MetadataValue.int(entry["used"])
        if isinstance(entry.get("allowed"), int):
            out[f"vt_key_allowed_{period}"] = dg.MetadataValue.int(entry["allowed"])
    for period in PERIODS:
        out[f"budget_used_{period}"] = dg.MetadataValue.int(int(usage["used"][period]))
        out[f"budget_limit_{period}"] = dg.MetadataValue.int(int(usage["limits"][period]))
    out["budget_used_last_minute"] = dg.MetadataValue.int(int(usage["last_minute"]))
    for kind in KINDS:
        out[f"budget_day_kind_{kind}"] = dg.MetadataValue.int(int(usage["by_kind"].get(kind, 0)))
    for job, count in sorted(usage["by_job"].items()):
        name = re.sub(r"[^A-Za-z0-9_]", "_", job)[:100]
        out[f"budget_day_job_{name}"] = dg.MetadataValue.int(int(count))
    return out


virustotal_quota = dg.AssetSpec(
    "virustotal_quota",
    group_name="virustotal",
    kinds={"virustotal"},
    description="The VT key's quota usage (overall_quotas) and the deployment's budget counts: "
    "per minute, hour, UTC day and month, per kind of work and per job today. Recorded every "
    "5 minutes by the virustotal_quota_sensor, without a run.",
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
    return quota_metadata(reported, usage)


@dg.sensor(
    name="virustotal_quota_sensor",
    minimum_interval_seconds=QUOTA_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records virustotal_quota every 5 minutes (a runless materialization: no run "
    "in the runs list, no quota spent).",
)
def virustotal_quota_sensor(
    context: dg.SensorEvaluationContext, virustotal: VirusTotalResource
) -> dg.SensorResult:
    metadata = read_quota(virustotal)
    return dg.SensorResult(
        asset_events=[dg.AssetMaterialization(asset_key=virustotal_quota.key, metadata=metadata)]
    )


defs = dg.Definitions(assets=[virustotal_quota], sensors=[virustotal_quota_sensor])
