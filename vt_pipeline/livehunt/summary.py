"""Materialize Livehunt windows in-process and summarize them (the demo and the benchmark)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import dagster as dg

from vt_pipeline.livehunt.assets import livehunt_assets, table_counts
from vt_pipeline.livehunt.checks import livehunt_stix_bundle_is_valid
from vt_pipeline.livehunt.delivery import livehunt_opencti_delivery
from vt_pipeline.livehunt.partitions import RANGE_END_TAG, RANGE_START_TAG


def materialize_windows(
    instance: dg.DagsterInstance,
    first: str,
    last: str,
    resources: Mapping[str, Any],
    raise_on_error: bool = True,
    log_level: str = "DEBUG",
    deliver: bool = False,
) -> dg.ExecuteInProcessResult:
    """One in-process run of the Livehunt chain over the windows first..last, up to the bundles,
    or with `deliver` up to OpenCTI.

    `log_level` is the console's; the run's events are stored in the instance either way.
    """
    single = first == last
    return dg.materialize(
        [*livehunt_assets, livehunt_stix_bundle_is_valid]
        + ([livehunt_opencti_delivery] if deliver else []),
        instance=instance,
        resources=dict(resources),
        partition_key=first if single else None,
        tags=None if single else {RANGE_START_TAG: first, RANGE_END_TAG: last},
        raise_on_error=raise_on_error,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )


def livehunt_totals(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """Metadata of every materialized partition, added up per quantity."""
    totals: dict[str, Any] = {
        "windows": set(),
        "notifications": 0,
        "kept": 0,
        "dropped_by_reason": Counter(),
        "stix_objects_by_type": Counter(),
        "vt_calls_by_endpoint": Counter(),
        "artifacts": 0,
        "artifact_bytes": 0,
    }
    run_calls: dict[str, dict[str, int]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        asset = materialization.asset_key.to_user_string()
        meta = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
        totals["windows"].add(materialization.partition)
        if asset == "livehunt_files":
            totals["notifications"] += meta["notifications"]
            totals["kept"] += meta["kept"]
            totals["dropped_by_reason"].update(table_counts(meta["dropped_by_reason"]))
        elif asset == "livehunt_stix_bundles":
            totals["stix_objects_by_type"].update(table_counts(meta["stix_objects_by_type"]))
        elif asset == "livehunt_artifacts":
            totals["artifacts"] += meta.get("artifacts", 0)
            totals["artifact_bytes"] += meta.get("artifact_bytes", 0)
        # What each step spent in the run, counted once (a window's own figure also counts
        # the calls it shared with the run's other windows).
        if "vt_calls_by_endpoint" in meta:
            run_calls[asset] = table_counts(meta["vt_calls_by_endpoint"], "run")
    for calls in run_calls.values():
        totals["vt_calls_by_endpoint"].update(calls)
    totals["windows"] = sorted(totals["windows"])
    return totals


def livehunt_summary(result: dg.ExecuteInProcessResult) -> str:
    totals = livehunt_totals(result)
    calls = totals["vt_calls_by_endpoint"]

    def listing(counter: Counter[str]) -> str:
        return ", ".join(f"{key} {value}" for key, value in sorted(counter.items())) or "none"

    lines = [
        f"Run {result.run_id}: {'succeeded' if result.success else 'FAILED'}",
        f"  windows        {len(totals['windows'])} ({', '.join(totals['windows'])})",
        f"  notifications  {totals['notifications']}",
        f"  kept           {totals['kept']}",
        f"  dropped        {sum(totals['dropped_by_reason'].values())}: "
        f"{listing(totals['dropped_by_reason'])}",
        f"  artifacts      {totals['artifacts']} ({totals['artifact_bytes']} bytes)",
        f"  STIX objects   {sum(totals['stix_objects_by_type'].values())}: "
        f"{listing(totals['stix_objects_by_type'])}",
        f"  VT calls       {sum(calls.values())}: {listing(calls)}",
    ]
    return "\n".join(lines)
