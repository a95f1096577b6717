"""Run wall time through the daemon: from launch to success, per executor, 1 and 24 windows.

What an operator waits for when the schedule fires or a backfill starts, measured the way those
runs really go: `dagster job launch` submits `livehunt_job` to the instance's run queue, a real
`dagster-daemon` dequeues it and the default run launcher starts the run worker process, which
executes every step (notifications, files, rulesets, artifacts, bundles, the check, delivery to
the OpenCTI emulator over a real RabbitMQ). The time reported is the run record's
`end_time - create_timestamp` (launch to success), split into the wait for the worker to start
and the execution.

Each executor gets a fresh Dagster home, storage and OpenCTI emulator (so no sample is already
stored or already in OpenCTI), and a daemon started with `VT_PIPELINE_EXECUTOR` set to it:
`multiprocess` (one process per step: the executor before this benchmark was written) and
`in_process` (every step in the run worker's process: the default now). The VirusTotal emulator
runs in its own process with 50 ms of latency per request; the instance's SQLite files live on
tmpfs, as in `livehunt.py`.

    .venv/bin/python benchmarks/run_wall_time.py             # 1,000 notifications over 24 h
    .venv/bin/python benchmarks/run_wall_time.py --repeat 2  # the best of 2 per measurement
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from livehunt import API_KEY, CORPUS_START, REPO_ROOT, TMPFS, emulator

RUN_TIMEOUT = 900.0
DAEMON_START_TIMEOUT = 120.0
EXECUTORS = ("multiprocess", "forkserver", "in_process")
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def partition_key(hour: int) -> str:
    return (CORPUS_START + timedelta(hours=hour)).strftime("%Y-%m-%d-%H:%M")


@contextmanager
def opencti() -> Iterator[Any]:
    """A real RabbitMQ and the OpenCTI emulator on it, in this process (delivery's peer)."""
    from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
    from vt_pipeline.emulators.rabbitmq import RabbitMQ

    with RabbitMQ() as broker, OpenCTIEmulator(amqp=broker) as platform:
        yield platform


def instance_at(home: str) -> Any:
    """The Dagster instance whose home is `home` (the daemon's and the runs')."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(home))


@contextmanager
def daemon(env: dict[str, str], log: Path) -> Iterator[None]:
    """`dagster-daemon run` on the repository's workspace, until its run queue is served."""

    with open(log, "w") as output:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", "workspace.yaml"],
            cwd=REPO_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + DAEMON_START_TIMEOUT
        with instance_at(env["DAGSTER_HOME"]) as instance:
            while "QUEUED_RUN_COORDINATOR" not in instance.get_daemon_heartbeats():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dagster-daemon did not start; see {log}")
                time.sleep(0.5)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch(env: dict[str, str], first: int, last: int) -> str:
    """Submit one run of livehunt_job over the windows first..last; return its id."""
    run_id = str(uuid.uuid4())
    tags = (
        {"dagster/partition": partition_key(first)}
        if first == last
        else {RANGE_START_TAG: partition_key(first), RANGE_END_TAG: partition_key(last)}
    )
    command = [
        str(Path(sys.executable).with_name("dagster")),
        "job",
        "launch",
        "-w",
        "workspace.yaml",
        "-j",
        "livehunt_job",
        "--run-id",
        run_id,
        "--tags",
        json.dumps(tags),
    ]
    subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    return run_id


def wait(home: str, run_id: str) -> dict[str, float | str]:
    """Poll the run until it ends; its launch-to-end timings from the run record."""

    deadline = time.monotonic() + RUN_TIMEOUT
    with instance_at(home) as instance:
        while True:
            record = instance.get_run_record_by_id(run_id)
            if record and record.dagster_run.is_finished:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} did not finish within {RUN_TIMEOUT:.0f} s")
            time.sleep(0.25)
    created = record.create_timestamp.timestamp()
    return {
        "status": record.dagster_run.status.value,
        "launch_to_end_s": record.end_time - created,
        "worker_start_s": record.start_time - created,
        "execution_s": record.end_time - record.start_time,
    }


def measure(executor: str, vt_url: str, windows: list[int], work: Path) -> list[dict[str, Any]]:
    """A fresh home, storage and OpenCTI; a daemon with this executor; the runs in turn."""
    home = work / f"home-{executor}"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    results = []
    with opencti() as platform:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "VT_PIPELINE_STORAGE_DIR": str(work / f"storage-{executor}"),
            "VT_PIPELINE_EXECUTOR": executor,
            "VT_PIPELINE_LIVEHUNT_START": partition_key(0),
            "VIRUSTOTAL_API_URL": vt_url,
            "VIRUSTOTAL_TOKEN": API_KEY,
            "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_UPLOAD_ARTIFACT": "true",
            "OPENCTI_URL": platform.url,
            "OPENCTI_TOKEN": platform.token,
            "PYTHONWARNINGS": "ignore",
        }
        with daemon(env, work / f"daemon-{executor}.log"):
            for count in windows:
                first = {1: 0, 24: 24}.get(count, 48)
                run_id = launch(env, first, first + count - 1)
                timing = wait(str(home), run_id)
                results.append({"executor": executor, "windows": count, **timing})
                print(
                    f"  {executor:12s} {count:2d} window(s): {timing['status']}, "
                    f"launch -> end {timing['launch_to_end_s']:.1f} s "
                    f"(worker start {timing['worker_start_s']:.1f} s, "
                    f"execution {timing['execution_s']:.1f} s)",
                    flush=True,
                )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--notifications", type=int, default=1000, help="per 24 hours (the corpus spans 72)"
    )
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--repeat", type=int, default=1, help="measurements per case (best kept)")
    args = parser.parse_args()
    base = TMPFS if TMPFS.is_dir() else None
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vt-run-wall-", dir=base) as tmp:
        work = Path(tmp)
        # 72 hours: the 1-window run reads hour 0, the 24-window run hours 24..47.
        with emulator(args.notifications * 3, 72, args.latency_ms, 7, work) as vt_url:
            print(f"VirusTotal emulator {vt_url}, {args.latency_ms:.0f} ms per request")
            for attempt in range(args.repeat):
                for executor in EXECUTORS:
                    attempt_dir = work / f"attempt-{attempt}"
                    attempt_dir.mkdir(exist_ok=True)
                    results += measure(executor, vt_url, [1, 24], attempt_dir)
    print("\nlaunch -> success through the daemon, best of", args.repeat)
    print(f"{'windows':>8}" + "".join(f"{e:>14}" for e in EXECUTORS) + "  multiprocess / best")
    for count in (1, 24):
        best = {
            executor: min(
                r["launch_to_end_s"]
                for r in results
                if r["executor"] == executor and r["windows"] == count
            )
            for executor in EXECUTORS
        }
        ratio = best["multiprocess"] / min(best.values())
        print(f"{count:>8}" + "".join(f"{best[e]:>12.1f} s" for e in EXECUTORS) + f"  {ratio:.1f}x")
    failed = [r for r in results if r["status"] != "SUCCESS"]
    for r in failed:
        print(f"FAILED: {r}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
