"""The code location loads as `dagster dev` loads it; its schedule asks for the right windows."""

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from vt_pipeline.definitions import defs
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.livehunt.partitions import START_ENV
from vt_pipeline.livehunt.schedules import livehunt_fresh_windows
from vt_pipeline.resources import API_KEY_ENV_NAMES
from vt_pipeline_tests.conftest import PREMIUM_KEY, partition_key

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("flags", [["-w", "workspace.yaml"], []], ids=["workspace", "pyproject"])
def test_dagster_loads_the_code_location(flags: list[str], tmp_path: Path) -> None:
    """`dagster dev` at the root (no flags: pyproject's [tool.dagster]) or with workspace.yaml."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    env.pop("VIRUSTOTAL_TOKEN", None)  # no key needed to load: it is resolved at run time
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run(
        [str(dagster), "definitions", "validate", *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Validation successful for code location vt_pipeline" in done.stdout + done.stderr


def test_definitions_hold_the_livehunt_chain() -> None:
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == {
        "livehunt_notifications",
        "livehunt_files",
        "livehunt_rulesets",
        "livehunt_artifacts",
        "livehunt_file_relations",
        "livehunt_stix_bundles",
        "livehunt_opencti_delivery",
        "virustotal_quota",
        "hunting_rulesets",
        "retrohunt_matches",
        "retrohunt_files",
        "retrohunt_artifacts",
        "retrohunt_stix_bundles",
        "retrohunt_opencti_delivery",
    }
    assert defs.resolve_job_def("retrohunt_job") is not None
    assert defs.resolve_job_def("livehunt_job") is not None
    assert {s.name for s in defs.schedules} == {"livehunt_fresh_windows"}
    # the key is a reference to an environment variable, resolved in the run, never a value
    api_key = defs.resources["virustotal"].api_key
    assert isinstance(api_key, dg.EnvVar) and api_key.env_var_name in API_KEY_ENV_NAMES


def test_schedule_reads_the_open_window_and_the_previous_one() -> None:
    tick = datetime(2026, 11, 20, 10, 35, tzinfo=UTC)
    context = dg.build_schedule_context(scheduled_execution_time=tick)
    request = livehunt_fresh_windows(context)
    assert request.tags["dagster/asset_partition_range_start"] == "2026-11-20-09:00"
    assert request.tags["dagster/asset_partition_range_end"] == "2026-11-20-10:00"
    assert livehunt_fresh_windows.cron_schedule == "*/5 * * * *"


def test_the_ui_shows_no_first_visit_community_dialog(tmp_path: Path) -> None:
    """The instance the project's dagster.yaml configures has Dagster's `nux` turned off."""
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.nux_enabled is False


@pytest.mark.integration
def test_a_run_and_its_step_workers_print_no_beta_or_preview_warnings(
    vt_emulator: VirusTotalEmulator, tmp_path: Path
) -> None:
    """Every process that loads the code location (CLI, run, each step worker) printed the
    `backfill_policy` beta and the partitioned-check preview warnings: 21 blocks for two steps."""
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"},
        "PYTHONPATH": str(ROOT),
        "DAGSTER_HOME": str(tmp_path),
        "VIRUSTOTAL_API_URL": vt_emulator.url,
        "VIRUSTOTAL_TOKEN": PREMIUM_KEY,
        START_ENV: partition_key(0),
    }
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run(
        [
            str(dagster),
            "asset",
            "materialize",
            "-m",
            "vt_pipeline.definitions",
            "--select",
            "livehunt_notifications,livehunt_files",
            "--partition",
            partition_key(2),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:  # the steps did run
        for asset in ("livehunt_notifications", "livehunt_files"):
            assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None
    assert "BetaWarning" not in output
    assert "PreviewWarning" not in output


def test_the_deployments_vt_resource_shows_an_operator_no_test_clock() -> None:
    """The budget's scaled clock is for tests (`ScaledClockVirusTotalResource`): the resource
    the UI lists has no such settings."""
    from vt_pipeline.definitions import defs

    resource = defs.resources["virustotal"]
    fields = set(type(resource).model_fields)
    assert {"api_key", "quota_per_minute", "retry_deadline_seconds"} <= fields
    assert not {f for f in fields if f.startswith("budget_time")}
