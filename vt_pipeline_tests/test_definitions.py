"""The code location loads as `dagster dev` loads it; its schedule asks for the right windows."""

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from vt_pipeline.definitions import defs
from vt_pipeline.livehunt.schedules import livehunt_fresh_windows
from vt_pipeline.resources import API_KEY_ENV_NAMES

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
        "livehunt_stix_bundles",
        "livehunt_opencti_delivery",
    }
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
