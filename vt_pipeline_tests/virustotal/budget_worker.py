"""A Livehunt materialization in a process of its own, for the budget tests and benchmark.

    python -m vt_pipeline_tests.virustotal.budget_worker CONFIG_JSON

CONFIG_JSON: {"api_url", "api_key", "storage", "budget_url", "scale", "per_minute", "first",
"last", "backfill": bool, "budget": bool}. Prints one JSON line: success, VT calls, the wait.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import dagster as dg

from vt_pipeline.emulators.virustotal.scaled_clock import ScaledClockVirusTotalResource
from vt_pipeline.livehunt.assets import livehunt_assets
from vt_pipeline.livehunt.checks import livehunt_stix_bundle_is_valid
from vt_pipeline.livehunt.partitions import RANGE_END_TAG, RANGE_START_TAG
from vt_pipeline.livehunt.settings import LivehuntSettings
from vt_pipeline.opencti.resource import OpenCTIResource
from vt_pipeline.storage.store import PartitionedFileIOManager, StorageResource


def resources(config: dict[str, Any]) -> dict[str, Any]:
    base = config["storage"]
    return {
        "virustotal": ScaledClockVirusTotalResource(
            api_key=config["api_key"],
            api_url=config["api_url"],
            timeout_seconds=5.0,
            backoff_base_seconds=config.get("backoff_base", 0.01),
            backoff_max_seconds=config.get("backoff_max", 0.05),
            max_attempts=config.get("max_attempts", 10),
            quota_budget=config.get("budget", True),
            quota_per_minute=config.get("per_minute", 0),
            quota_per_day=config.get("per_day", 0),
            budget_url=config.get("budget_url", ""),
            budget_time_scale=config.get("scale", 1.0),
            budget_time_offset=config.get("offset", 0.0),
            budget_boundary_margin_seconds=config.get("margin", 0.3),
        ),
        "livehunt_settings": LivehuntSettings(upload_artifact=True),
        "storage": StorageResource(base_dir=base),
        "io_manager": PartitionedFileIOManager(base_dir=base),
        "opencti": OpenCTIResource(),
    }


def main(config: dict[str, Any]) -> dict[str, Any]:
    tags = {RANGE_START_TAG: config["first"], RANGE_END_TAG: config["last"]}
    if config.get("backfill"):
        tags["dagster/backfill"] = "budget-test"
    started = time.monotonic()
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*livehunt_assets, livehunt_stix_bundle_is_valid],
            instance=instance,
            resources=resources(config),
            tags=tags,
            raise_on_error=False,
        )
        # What each step really spent: its run-level figures, once per step (a window's own
        # figures count a call shared by several windows on each of them).
        calls = waited = 0.0
        for metadata in {
            event.asset_key: event.materialization.metadata
            for event in result.get_asset_materialization_events()
        }.values():
            calls += metadata["run_vt_calls"].value if "run_vt_calls" in metadata else 0
            if "run_vt_budget_wait_seconds" in metadata:
                waited += metadata["run_vt_budget_wait_seconds"].value
        errors = [
            event.step_failure_data.error.to_string()
            for event in result.all_events
            if event.is_step_failure and event.step_failure_data.error
        ]
    return {
        "success": result.success,
        "vt_calls": calls,
        "wait": waited,
        "seconds": time.monotonic() - started,
        "errors": errors,
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
