"""Enrichment benchmark: a burst of OpenCTI enrichment requests, batched runs vs one run each.

    .venv/bin/python benchmarks/enrichment.py                  # 200 requests, both designs
    .venv/bin/python benchmarks/enrichment.py --requests 40    # quicker

What runs: a real RabbitMQ, the OpenCTI emulator and the VirusTotal emulator (100 ms of latency
per request by default) in this process; mixed requests (files, domains, IPs, URLs of the
emulator's corpus) are asked of OpenCTI at once, then the sensor and the runs work as a
deployment runs them, the same code path in-process: `opencti_enrichment_sensor` is evaluated
every `--tick-interval` seconds (the daemon's loop is 5 s); each run request becomes a run in a
Dagster instance at once (what the daemon does) and is executed by a NEW PROCESS
(`execute_run` of the real `vt_enrichment_job`, its default multiprocess executor: the run
worker plus a step process, like a deployment's run launcher), at most
`--max-concurrent-runs` at a time (a deployment's run queue limit).

The two designs differ only in the sensor's batch size: `--batch-size` (20) and 1.

Printed per design: time from the first request to the last work processed, runs launched, VT
calls per request (as the VT emulator counts them), and p50/p95 of request -> work processed.
Each design has its own Dagster instance (on tmpfs when there is one), its own storage (no
lookup cache shared) and its own enrichment connector (queue).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

API_KEY = "benchmark-key"
TMPFS = Path("/dev/shm")


def bench_job() -> dg.JobDefinition:
    """The real job with the deployment's resources from the environment (reconstructable)."""
    from vt_pipeline.enrichment.job import vt_enrichment_job
    from vt_pipeline.enrichment.requests import ENRICHMENT_JOB
    from vt_pipeline.resources import build_resources

    resources = build_resources()
    defs = dg.Definitions(jobs=[vt_enrichment_job], resources=resources)
    return defs.resolve_job_def(ENRICHMENT_JOB)


def execute_one_run(run_id: str) -> int:
    """The child process: execute a run that already exists in the instance."""
    from dagster._core.execution.api import execute_run

    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        if run is None:
            print(f"no run {run_id}", file=sys.stderr)
            return 2
        result = execute_run(dg.reconstructable(bench_job), run, instance)
        return 0 if result.success else 1


@dataclass
class Measure:
    design: str
    batch_size: int
    requests: int
    seconds: float
    runs: int
    failed_runs: int
    vt_calls: int
    latencies: list[float]
    in_error: int

    def row(self) -> str:
        ordered = sorted(self.latencies)
        p50 = statistics.median(ordered) if ordered else float("nan")
        p95 = ordered[max(0, int(len(ordered) * 0.95 + 0.5) - 1)] if ordered else float("nan")
        return (
            f"| {self.design} (batch {self.batch_size}) | {self.seconds:.1f} s | {self.runs} "
            f"({self.failed_runs} failed) | {self.vt_calls / max(1, self.requests):.2f} | "
            f"{p50:.1f} s | {p95:.1f} s | {len(self.latencies) - self.in_error}/{self.requests} |"
        )


def entities(opencti: Any, corpus: Any, count: int) -> list[str]:
    """`count` mixed observables VT knows: files, domains, IPv4 addresses and URLs in turn."""
    pools: list[list[tuple[str, dict[str, Any]]]] = [
        [("StixFile", {"hashes": {"SHA-256": sha}}) for sha in sorted(corpus.files)],
        [("Domain-Name", {"value": d}) for d in sorted(corpus.domains)],
        [("IPv4-Addr", {"value": ip}) for ip in sorted(corpus.ip_addresses)],
        [("Url", {"value": u["attributes"]["url"]}) for _, u in sorted(corpus.urls.items())],
    ]
    chosen: list[tuple[str, dict[str, Any]]] = []
    index = 0
    while len(chosen) < count and any(pools):
        pool = pools[index % len(pools)]
        if pool:
            chosen.append(pool.pop(0))
        index += 1
    if len(chosen) < count:
        raise SystemExit(f"the corpus has only {len(chosen)} observables, fewer than {count}")
    return [opencti.create_observable(kind, **fields) for kind, fields in chosen]


def measure(
    design: str,
    batch_size: int,
    args: argparse.Namespace,
    opencti: Any,
    vt: Any,
    targets: Sequence[str],
) -> Measure:
    from vt_pipeline.enrichment.sensor import RUN_KEY_TAG, SensorSettings, build_enrichment_sensor
    from vt_pipeline.opencti.resource import OpenCTIResource

    tmp_parent = TMPFS if TMPFS.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="enrichment-bench-", dir=tmp_parent) as home:
        os.environ.update(
            {
                "DAGSTER_HOME": home,
                "VT_PIPELINE_STORAGE_DIR": str(Path(home) / "storage"),
                "VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID": str(uuid.uuid4()),
            }
        )
        connector_id = os.environ["VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID"]
        resource = OpenCTIResource(
            url=opencti.url, token=opencti.token, enrichment_connector_id=connector_id
        )
        with resource.connector("enrichment"):
            pass  # registered: OpenCTI can send it requests
        job = bench_job()
        sensor = build_enrichment_sensor(
            SensorSettings(batch_size=batch_size), default_status=dg.DefaultSensorStatus.RUNNING
        )
        definitions = dg.Definitions(jobs=[job], sensors=[sensor])
        vt.reset_stats()
        asked: dict[str, float] = {}
        started = time.time()
        for entity in targets:
            work = opencti.ask_enrichment(entity, connector_id)
            asked[work] = time.time()
        pool = ThreadPoolExecutor(max_workers=args.max_concurrent_runs)
        launched: list[Future[int]] = []
        cursor: str | None = None
        deadline = time.monotonic() + args.timeout
        with dg.DagsterInstance.get() as instance:
            while time.monotonic() < deadline:
                tick_started = time.monotonic()
                context = dg.build_sensor_context(
                    instance=instance,
                    cursor=cursor,
                    resources={"opencti": resource},
                    definitions=definitions,
                )
                data = sensor.evaluate_tick(context)
                cursor = data.cursor
                for request in data.run_requests or []:
                    key = request.run_key or ""
                    if instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: key})):
                        continue  # the daemon's run key check
                    run = instance.create_run_for_job(
                        job_def=job,
                        run_config=request.run_config,
                        tags={**request.tags, RUN_KEY_TAG: key},
                    )
                    launched.append(pool.submit(_launch, run.run_id))
                works = [opencti.work(w) for w in asked]
                if all(w is not None and w.status == "complete" for w in works):
                    break
                time.sleep(max(0.0, args.tick_interval - (time.monotonic() - tick_started)))
            pool.shutdown(wait=True)
            failed = sum(1 for f in launched if f.result() != 0)
        latencies, last, in_error = [], started, 0
        for work_id, at in asked.items():
            work = opencti.work(work_id)
            if work is None or work.status != "complete" or not work.completed_time:
                continue
            done = datetime.strptime(work.completed_time, "%Y-%m-%dT%H:%M:%S.%fZ")
            done_at = done.replace(tzinfo=UTC).timestamp()
            latencies.append(done_at - at)
            last = max(last, done_at)
            in_error += bool(work.in_error)
        vt_calls = sum(sum(codes.values()) for codes in vt.stats().values())
        return Measure(
            design,
            batch_size,
            len(asked),
            last - started,
            len(launched),
            failed,
            vt_calls,
            latencies,
            in_error,
        )


def _launch(run_id: str) -> int:
    command = [sys.executable, str(Path(__file__).resolve()), "--execute-run", run_id]
    done = subprocess.run(command, cwd=REPO_ROOT, env=dict(os.environ), capture_output=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr.decode(errors="replace")[-2000:])
    return done.returncode


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--max-concurrent-runs", type=int, default=4)
    parser.add_argument("--tick-interval", type=float, default=5.0)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="per design, seconds")
    parser.add_argument("--only", choices=("batched", "per-request"), default=None)
    parser.add_argument("--execute-run", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.execute_run:
        return execute_one_run(args.execute_run)
    from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
    from vt_pipeline.emulators.rabbitmq import RabbitMQ
    from vt_pipeline.emulators.virustotal.corpus import generate_corpus
    from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator

    start = datetime(2026, 11, 20, tzinfo=UTC)
    corpus = generate_corpus(
        seed=2026, notifications=360, start=start, end=start + timedelta(hours=6)
    )
    vt = VirusTotalEmulator(corpus, api_keys={API_KEY: True}, latency_ms=args.latency_ms)
    designs = [("batched", args.batch_size), ("per-request", 1)]
    if args.only:
        designs = [d for d in designs if d[0] == args.only]
    with RabbitMQ() as mq, OpenCTIEmulator(amqp=mq) as opencti, vt.serve():
        os.environ.update(
            {
                "VIRUSTOTAL_API_URL": vt.url,
                "VIRUSTOTAL_TOKEN": API_KEY,
                "OPENCTI_URL": opencti.url,
                "OPENCTI_TOKEN": opencti.token,
            }
        )
        targets = entities(opencti, corpus, args.requests)
        results = []
        for design, size in designs:
            print(f"{design}: {args.requests} requests, batch {size} ...", flush=True)
            results.append(measure(design, size, args, opencti, vt, targets))
            print(json.dumps(results[-1].__dict__ | {"latencies": len(results[-1].latencies)}))
    print()
    print(
        f"{args.requests} requests, VT latency {args.latency_ms:.0f} ms, sensor tick every "
        f"{args.tick_interval:.0f} s, at most {args.max_concurrent_runs} runs at a time, "
        "one process per run (in-process sensor, runs as a deployment launches them)"
    )
    print(
        "| design | first request -> last work processed | runs | VT calls / request "
        "| p50 request -> processed | p95 | works processed without error |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for result in results:
        print(result.row())
    if len(results) == 2 and results[0].seconds > 0:
        print(f"\nbatched is {results[1].seconds / results[0].seconds:.1f}x faster (target >= 5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
