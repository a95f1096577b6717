"""The runs' executor: in-process by default (I/O-bound steps), multiprocess on request."""

import subprocess
import sys

import dagster as dg
import pytest

from vt_pipeline.config import ConfigError
from vt_pipeline.definitions import EXECUTOR_ENV, defs, run_executor


def test_every_job_runs_its_steps_in_the_run_process_by_default() -> None:
    assert defs.get_job_def("livehunt_job").executor_def is dg.in_process_executor
    # The implicit job behind "Materialize" and backfills in the UI too.
    assert defs.resolve_implicit_global_asset_job_def().executor_def is dg.in_process_executor


def test_the_multiprocess_executor_can_be_chosen() -> None:
    assert run_executor({EXECUTOR_ENV: "Multiprocess"}) is dg.multiprocess_executor


def test_an_unknown_executor_fails_at_load_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"VT_PIPELINE_EXECUTOR='threads'.*in_process"):
        run_executor({EXECUTOR_ENV: "threads"})
    loaded = subprocess.run(
        [sys.executable, "-c", "import vt_pipeline.definitions"],
        env={"PATH": "", EXECUTOR_ENV: "threads"},
        capture_output=True,
        text=True,
    )
    assert loaded.returncode != 0 and "VT_PIPELINE_EXECUTOR='threads'" in loaded.stderr


def test_the_forkserver_executor_forks_steps_from_a_preloaded_server() -> None:
    executor = run_executor({EXECUTOR_ENV: "forkserver"})
    assert executor.name == "forkserver_executor"
    resolved = executor.apply_config_mapping({}).value["config"]
    assert resolved["start_method"] == {"forkserver": {}}
