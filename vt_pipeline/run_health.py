"""Runs whose process died end by themselves, and give their concurrency slots back.

A run whose process is killed (SIGKILL, OOM killer, a crashed machine) stays STARTED forever and
keeps its `virustotal` / `opencti` pool slots: every later run then waits with "Step blocked by
limit for pool virustotal". Dagster's run monitoring cannot see it with the DefaultRunLauncher
(no worker health check), nor for runs started from the CLI (`dagster asset materialize`) or
in-process (no launcher at all), and `free_slots_after_run_end_seconds` only frees the slots of
runs that have ENDED.

`end_dead_runs(instance)` finds STARTED (and STARTING) runs whose run process is gone, reports
them failed with a message saying so, frees their slots, and stops the step processes they left
running (orphans that would keep spending VT quota). The sensor `dead_run_sweeper` (running by
default, every 30 s) calls it, so with the daemon running a dead run ends within about a minute,
whoever started it. Without a daemon: `vt-pipeline sweep-runs`.

How a run's process is known: every Dagster event carries the `pid` of the process that emitted
it. RUN_START is emitted by the run's coordinator (the run worker the launcher started, the CLI
process, or the caller of `materialize`); STEP_START by each step's process. A run is alive
while its coordinator lives; a pid counts as that process only if the process on this machine
started before the event (else the pid was recycled after the run's process died).

Multi-host deployments - the decision: a pid means something only on the machine whose kernel
handed it out, and nothing in a Dagster run records that machine. So a run is judged only when
it is known to have run here:
- its tag `vt_pipeline/run_host` names this host (`socket.gethostname()`), for deployments that
  tag their runs; a run tagged with another host is never touched;
- untagged, only when the instance's storage is local (SQLite under $DAGSTER_HOME, the default):
  such an instance serves one machine, so its runs ran here. With shared storage (PostgreSQL)
  untagged runs are left alone: use a run launcher with worker health checks (K8s, Docker, ECS)
  or the `dagster/max_runtime` tag there;
- untagged, also when `VT_PIPELINE_RUNS_ON_CODE_SERVER=true`: the deployment says every run of
  the instance runs beside the code server that evaluates this sensor (one code server with the
  DefaultRunLauncher: the three-process topology of deploy/, its compose file). Never set it
  with a launcher that runs runs elsewhere (K8s, Docker) or when runs are started from the CLI
  on other machines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._core.events import DagsterEventType, JobFailureData, RunFailureReason
from dagster._core.storage.dagster_run import RunsFilter
from dagster._core.storage.runs import InMemoryRunStorage, SqliteRunStorage

from vt_pipeline.config import env_bool
from vt_pipeline.enrichment.recovery import OUTCOME_TAG
from vt_pipeline.enrichment.requests import ENRICHMENT_JOB

log = logging.getLogger(__name__)

HOST_TAG = "vt_pipeline/run_host"
RUNS_ON_CODE_SERVER_ENV = "VT_PIPELINE_RUNS_ON_CODE_SERVER"
# How much later than its event a process may seem to have started: /proc's boot time is whole
# seconds, and the wall clock may have been adjusted since boot.
CLOCK_SLACK_SECONDS = 5.0
_JUDGED = (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING)


@dataclass(frozen=True)
class EndedRun:
    """A run `end_dead_runs` reported failed: its dead coordinator, the orphans it stopped."""

    run_id: str
    pid: int
    message: str
    orphans_stopped: list[int] = field(default_factory=list)


def this_host() -> str:
    return socket.gethostname()


def storage_is_local(instance: dg.DagsterInstance) -> bool:
    """True when the run storage lives on this machine (SQLite, in memory): one-host instance."""
    return isinstance(instance.run_storage, (SqliteRunStorage, InMemoryRunStorage))


def end_dead_runs(
    instance: dg.DagsterInstance, slack_seconds: float = CLOCK_SLACK_SECONDS
) -> list[EndedRun]:
    """Report failed every STARTED/STARTING run of this host whose process is gone; free its
    slots. One run that cannot be judged or ended is logged and skipped, never the sweep."""
    local = storage_is_local(instance) or env_bool(RUNS_ON_CODE_SERVER_ENV, False)
    host = this_host()
    ended = []
    for run in instance.get_runs(filters=RunsFilter(statuses=list(_JUDGED))):
        tagged = run.tags.get(HOST_TAG)
        if (tagged or (host if local else None)) != host:
            continue  # ran elsewhere, or cannot tell: its pids mean nothing here
        try:
            result = _end_if_dead(instance, run, host, slack_seconds)
        except Exception:
            log.exception("could not check run %s", run.run_id)
            continue
        if result is not None:
            ended.append(result)
    return ended


def _end_if_dead(
    instance: dg.DagsterInstance, run: dg.DagsterRun, host: str, slack: float
) -> EndedRun | None:
    coordinator: tuple[int, float] | None = None
    steps: dict[int, float] = {}
    kinds = {DagsterEventType.RUN_START, DagsterEventType.ENGINE_EVENT, DagsterEventType.STEP_START}
    for entry in instance.all_logs(run.run_id, of_type=kinds):
        event = entry.dagster_event
        if event is None or event.pid is None:
            continue
        if event.event_type == DagsterEventType.RUN_START:
            coordinator = (event.pid, entry.timestamp)
        elif event.event_type == DagsterEventType.STEP_START:
            steps.setdefault(event.pid, entry.timestamp)
        elif coordinator is None and _announces_itself(event):
            coordinator = (event.pid, entry.timestamp)  # a STARTING run's worker
    if coordinator is None:
        return None  # not started yet: Dagster's own start timeout covers it
    pid, since = coordinator
    if _alive_since(pid, since, slack):
        return None
    current = instance.get_run_by_id(run.run_id)
    if current is None or current.status not in _JUDGED:
        return None  # ended meanwhile (it was finishing, not dead)
    message = (
        f"The process of this run (pid {pid} on {host}) is gone - killed or crashed - while the "
        f"run was {current.status.value}: vt_pipeline's dead-run sweep marked it failed and "
        "freed its concurrency slots. "
    )
    if current.job_name == ENRICHMENT_JOB:
        message += (
            "Its enrichment requests that it had not answered are answered again by the "
            "enrichment sensor, in one new run (a second death closes their works in error): "
            f"no need to re-execute it; the run's tag {OUTCOME_TAG} says what became of them."
        )
    else:
        message += "Re-execute it to finish the work."
    instance.report_run_failed(
        current,
        message,
        JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION),
    )
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    orphans = [
        step_pid
        for step_pid, started in steps.items()
        if step_pid != pid and _alive_since(step_pid, started, slack, after=since - slack)
    ]
    for orphan in orphans:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(orphan, signal.SIGTERM)
    log.warning("%s (run %s)", message, run.run_id)
    return EndedRun(run.run_id, pid, message, orphans)


def _announces_itself(event: dg.DagsterEvent) -> bool:
    """The engine event a run worker emits about itself ("Started process for run (pid: N)")."""
    data = event.event_specific_data
    metadata = getattr(data, "metadata", None) or {}
    value = metadata.get("pid")
    return value is not None and str(getattr(value, "value", value)) == str(event.pid)


def _alive_since(pid: int, event_time: float, slack: float, after: float | None = None) -> bool:
    """Whether `pid` is a live process of this machine started before `event_time` (and after
    `after`): the process that emitted the event, not a later one given the same pid."""
    started = process_start_time(pid)
    if started is None or started > event_time + slack:
        return False
    return after is None or started >= after


def process_start_time(pid: int) -> float | None:
    """Wall-clock start of a live (non-zombie) process, from /proc; None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X", "x"):
        return None  # exited, not yet reaped
    ticks = int(fields[19])  # field 22, starttime, in clock ticks after boot
    return _boot_time() + ticks / os.sysconf("SC_CLK_TCK")


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError("/proc/stat has no btime")


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Ends runs whose process died (killed, crashed) and frees their pool slots, so that "
        "they do not block every later run. Runs of other hosts are left alone."
    ),
)
def dead_run_sweeper(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Every 30 s: `end_dead_runs` on the instance; it never requests runs."""
    ended = end_dead_runs(context.instance)
    for run in ended:
        context.log.warning(f"run {run.run_id}: {run.message}")
    if not ended:
        return dg.SkipReason("no dead run")
    return dg.SkipReason(
        f"ended {len(ended)} dead run(s) and freed their slots: "
        + ", ".join(run.run_id for run in ended)
    )
