"""The bundle check records one result per window, also when one run covers many windows."""

from pathlib import Path

import dagster as dg
import pytest

from vt_pipeline.livehunt.assets import livehunt_stix_bundles
from vt_pipeline.livehunt.checks import CHECK_NAME
from vt_pipeline_tests.conftest import ResourcesFactory, materialize_hours, partition_key

pytestmark = pytest.mark.integration


def test_a_multi_window_run_records_a_passed_result_per_window(
    dagster_instance: dg.DagsterInstance, livehunt_resources: ResourcesFactory, tmp_path: Path
) -> None:
    result = materialize_hours(dagster_instance, livehunt_resources(), 1, 3)

    evaluations = result.get_asset_check_evaluations()
    assert sorted(e.partition for e in evaluations) == [partition_key(h) for h in (1, 2, 3)]
    assert all(e.passed for e in evaluations)
    # What the UI's Partitions tab reads: the instance's execution records, one per window,
    # none left planned (shown "Skipped") and none without a partition.
    check_key = dg.AssetCheckKey(livehunt_stix_bundles.key, CHECK_NAME)
    records = dagster_instance.event_log_storage.get_asset_check_execution_history(
        check_key, limit=20
    )
    assert sorted(r.partition for r in records) == [partition_key(h) for h in (1, 2, 3)]
    assert {r.status.value for r in records} == {"SUCCEEDED"}
    # Each result is tied to its own window's materialization of the bundle.
    for evaluation in evaluations:
        target = evaluation.target_materialization_data
        assert target is not None and target.run_id == result.run_id
