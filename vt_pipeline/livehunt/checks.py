"""Asset checks on the Livehunt bundles: what OpenCTI would reject is caught here first."""

import re
from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from vt_pipeline.livehunt.assets import livehunt_stix_bundles
from vt_pipeline.livehunt.partitions import livehunt_partitions
from vt_pipeline.stix.validation import validate_bundles
from vt_pipeline.storage.store import PartitionMap, Partitions

CHECK_NAME = "livehunt_stix_bundle_is_valid"
PROBLEMS_SHOWN = 20
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~-])")
BUNDLES_KEY = livehunt_stix_bundles.key


@dg.asset_check(asset=livehunt_stix_bundles, partitions_def=livehunt_partitions, blocking=True)
def livehunt_stix_bundle_is_valid(
    context: dg.AssetCheckExecutionContext,
    livehunt_stix_bundles: Partitions[dict[str, Any]],
) -> Iterator[dg.AssetCheckEvaluation | dg.Output]:
    """Each bundle parses with stix2 and every `*_ref` / `*_refs` resolves inside the bundle.

    One result per window, even when a run covers many (a backfill): an `AssetCheckResult`
    can only name the step's single partition, so a multi-window run would leave every planned
    window "Skipped". The evaluations are emitted per partition instead, each tied to that
    window's materialization. Blocking: an invalid bundle stops the run before anything
    downstream (delivery) uses it. Bundles are read one window at a time; their object counts
    are noted as they are read, so no bundle is read again for its result.
    """
    asset_key = BUNDLES_KEY
    keys = sorted(livehunt_stix_bundles)
    targets = _materializations(context.instance, asset_key, set(keys))
    counted: dict[str, int] = {}

    def counting(key: str) -> dict[str, Any]:
        bundle = livehunt_stix_bundles[key]
        counted[key] = len(bundle.get("objects") or [])
        return bundle

    problems_by_window = validate_bundles(PartitionMap(keys, counting))
    for key in keys:
        problems = problems_by_window[key]
        if key not in counted:
            counting(key)
        yield dg.AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=CHECK_NAME,
            passed=not problems,
            partition=key,
            blocking=True,
            metadata=check_metadata(counted[key], problems),
            target_materialization_data=targets.get(key),
        )
    # The check's own output: what the blocking dependency of delivery waits for.
    yield dg.Output(None, output_name=context.op_execution_context.op_def.output_defs[0].name)


def check_metadata(stix_objects: int, problems: list[str]) -> dict[str, Any]:
    """The counts, and each problem as a line of text (the first `PROBLEMS_SHOWN`), so a failed
    window says what OpenCTI would have rejected without opening a JSON blob."""
    metadata: dict[str, Any] = {
        "stix_objects": stix_objects,
        "problem_count": len(problems),
    }
    if problems:
        lines = ["- " + _MARKDOWN_SPECIAL.sub(r"\\\1", p) for p in problems[:PROBLEMS_SHOWN]]
        if len(problems) > PROBLEMS_SHOWN:
            lines.append(f"\n{len(problems) - PROBLEMS_SHOWN} more problems.")
        metadata["problems"] = dg.MetadataValue.md("\n".join(lines))
    return metadata


def _materializations(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitions: set[str]
) -> dict[str, AssetCheckEvaluationTargetMaterializationData]:
    """Each window's latest materialization, which its result belongs to (what Dagster links it
    to): two queries for the whole run rather than one per window."""
    if not partitions:
        return {}
    latest = instance.event_log_storage.get_latest_storage_id_by_partition(
        asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions
    )
    if not latest:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(latest.values())),
        limit=len(latest),
    ).records
    return {
        record.partition_key: AssetCheckEvaluationTargetMaterializationData(
            run_id=record.event_log_entry.run_id,
            storage_id=record.storage_id,
            timestamp=record.timestamp,
        )
        for record in records
        if record.partition_key is not None
    }
