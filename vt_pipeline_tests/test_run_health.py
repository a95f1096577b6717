"""Dead runs end by themselves: a run whose process is killed gives its pool slots back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.utils import make_new_run_id

from vt_pipeline.enrichment.recovery import OUTCOME_TAG
from vt_pipeline.enrichment.requests import ENRICHMENT_JOB
from vt_pipeline.run_health import (
    HOST_TAG,
    dead_run_sweeper,
    end_dead_runs,
    process_start_time,
    this_host,
)

# A code location with two steps in the `virustotal` pool: one that holds its slot until killed,
# one that is done at once.
DEFS = """
import time
from pathlib import Path

import dagster as dg


@dg.asset(pool="virustotal")
def holds_a_slot() -> int:
    Path(__file__).with_name("holding").write_text("1")
    time.sleep(600)
    return 1


@dg.asset(pool="virustotal")
def quick() -> int:
    return 2
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A Dagster home whose `virustotal` pool has one slot."""
    (tmp_path / "dagster.yaml").write_text(
        textwrap.dedent(
            """
            concurrency:
              pools:
                default_limit: 1
            telemetry:
              enabled: false
            """
        )
    )
    (tmp_path / "defs.py").write_text(DEFS)
    return tmp_path


@pytest.fixture
def instance(home: Path) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def materialize_command(home: Path, asset: str) -> list[str]:
    dagster = str(Path(sys.executable).with_name("dagster"))
    return [dagster, "asset", "materialize", "-f", str(home / "defs.py"), "--select", asset]


def environment(home: Path) -> dict[str, str]:
    return {**os.environ, "DAGSTER_HOME": str(home)}


def claimed_slots(instance: dg.DagsterInstance) -> int:
    info = instance.event_log_storage.get_concurrency_info("virustotal")
    return len([slot for slot in info.claimed_slots if slot.run_id])


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.integration
def test_a_killed_cli_run_ends_and_a_later_run_gets_its_slot(
    home: Path, instance: dg.DagsterInstance
) -> None:
    holder = subprocess.Popen(
        materialize_command(home, "holds_a_slot"),
        env=environment(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    step_pids: list[int] = []
    try:
        wait_for(lambda: (home / "holding").exists(), 180, "the step holding the slot")
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED and claimed_slots(instance) == 1
        step_pids = [
            e.dagster_event.pid
            for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_START)
            if e.dagster_event and e.dagster_event.pid
        ]
        assert step_pids and holder.pid not in step_pids  # the CLI's multiprocess executor
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)

        # killed: nothing changes by itself, the slot stays taken
        time.sleep(1)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
        assert claimed_slots(instance) == 1

        # the sensor's tick ends it and gives the slot back
        context = dg.build_sensor_context(instance=instance)
        result = dead_run_sweeper(context)
        assert isinstance(result, dg.SkipReason) and run.run_id in str(result.skip_message)
        ended = instance.get_run_by_id(run.run_id)
        assert ended.status == dg.DagsterRunStatus.FAILURE
        [failure] = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)
        assert f"pid {holder.pid}" in failure.dagster_event.message
        assert "is gone" in failure.dagster_event.message
        assert claimed_slots(instance) == 0
        # the step process the killed run left behind is stopped too
        wait_for(
            lambda: not any(process_start_time(pid) for pid in step_pids),
            30,
            "the orphaned step process to stop",
        )
        # and a later run in the same pool proceeds
        later = subprocess.run(
            materialize_command(home, "quick"),
            env=environment(home),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert later.returncode == 0, later.stdout + later.stderr
        statuses = {r.run_id: r.status for r in instance.get_runs()}
        assert list(statuses.values()).count(dg.DagsterRunStatus.SUCCESS) == 1
        # a second sweep finds nothing more to do
        assert end_dead_runs(instance) == []
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        for pid in step_pids:
            if process_start_time(pid):
                os.kill(pid, signal.SIGKILL)


def started_run(
    instance: dg.DagsterInstance,
    pid: int,
    tags: dict[str, str] | None = None,
    at: float | None = None,
    job_name: str = "sweep_test",
) -> str:
    """A run as a worker with process `pid` leaves it: STARTED, its RUN_START emitted by pid."""
    run_id = make_new_run_id()
    instance.add_run(dg.DagsterRun(job_name=job_name, run_id=run_id, tags=tags or {}))
    event = DagsterEvent(DagsterEventType.RUN_START.value, job_name=job_name, pid=pid)
    instance.report_dagster_event(event, run_id, timestamp=at)
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
    return run_id


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def test_only_dead_runs_of_this_host_are_ended(instance: dg.DagsterInstance) -> None:
    alive = started_run(instance, os.getpid())
    elsewhere = started_run(instance, dead_pid(), tags={HOST_TAG: "another-host"})
    dead = started_run(instance, dead_pid())
    tagged_here = started_run(instance, dead_pid(), tags={HOST_TAG: this_host()})
    # pid 1 lives and started before the run's event: it may be the run's process, left alone
    older = started_run(instance, 1, at=time.time())

    ended = {run.run_id for run in end_dead_runs(instance)}

    assert ended == {dead, tagged_here}
    assert status(instance, alive) == dg.DagsterRunStatus.STARTED
    assert status(instance, elsewhere) == dg.DagsterRunStatus.STARTED
    assert status(instance, dead) == dg.DagsterRunStatus.FAILURE
    assert status(instance, older) == dg.DagsterRunStatus.STARTED


def test_a_pid_recycled_by_a_newer_process_is_not_the_runs(instance: dg.DagsterInstance) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        # the run's process had this pid an hour ago; the process holding it now is newer
        run_id = started_run(instance, sleeper.pid, at=time.time() - 3600)
        assert [run.run_id for run in end_dead_runs(instance)] == [run_id]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_sweep_says_what_becomes_of_a_dead_enrichment_runs_requests(
    instance: dg.DagsterInstance,
) -> None:
    livehunt = started_run(instance, dead_pid())
    enrichment = started_run(instance, dead_pid(), job_name=ENRICHMENT_JOB)
    messages = {run.run_id: run.message for run in end_dead_runs(instance)}
    assert "Re-execute it to finish the work" in messages[livehunt]
    assert "answered again by the enrichment sensor" in messages[enrichment]
    assert "no need to re-execute it" in messages[enrichment]
    assert OUTCOME_TAG in messages[enrichment]
