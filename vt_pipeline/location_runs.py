"""Runs executed in this process that the Dagster UI shows as runs of the code location.

A run made by `dg.materialize` or `job.execute_in_process` has no code-location origin: the UI
lists it under Runs, but the Overview timeline and the job's page leave it out ("No runs or
scheduled ticks" after the demo). Here the run is created as a run of a job of the
`vt_pipeline` code location, with the origin the webserver matches by location and repository
name, and executed in this process (no code server, no daemon), as the demo needs.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.execution.api import execute_run
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

MODULE = "vt_pipeline.definitions"
LOCATION_NAME = "vt_pipeline"  # workspace.yaml and [tool.dagster] / [tool.dg] name it so
REPOSITORY_NAME = "__repository__"  # what Dagster names the repository of a Definitions
_WORKING_DIRECTORY = str(Path(__file__).resolve().parent.parent)


def execute_location_job(
    instance: dg.DagsterInstance,
    job_name: str,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> dg.JobExecutionResult:
    """Execute `job_name` of the code location here, recorded as that location's run.

    The job is loaded from `vt_pipeline.definitions` as a deployment loads it (its resources
    from the environment), so set the environment first.
    """
    repository = ReconstructableRepository.for_module(
        MODULE, "defs", working_directory=_WORKING_DIRECTORY
    )
    job = repository.get_reconstructable_job(job_name)
    origin = RemoteRepositoryOrigin(
        code_location_origin=InProcessCodeLocationOrigin(
            LoadableTargetOrigin(
                executable_path=sys.executable,
                module_name=MODULE,
                working_directory=_WORKING_DIRECTORY,
            ),
            location_name=LOCATION_NAME,
        ),
        repository_name=REPOSITORY_NAME,
    )
    run = instance.create_run_for_job(
        job_def=job.get_definition(),
        run_config=dict(run_config or {}),
        tags=dict(tags or {}),
        remote_job_origin=origin.get_job_origin(job_name),
        job_code_origin=job.get_python_origin(),
    )
    return execute_run(job, run, instance)
