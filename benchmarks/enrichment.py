"""Enrichment benchmark: the drain design against a sequential consumer of the same code.

    .venv/bin/python benchmarks/enrichment.py                    # bursts of 200 and 2,000, clicks
    .venv/bin/python benchmarks/enrichment.py --bursts 200 --clicks 10 --flood 200   # quicker
    .venv/bin/python benchmarks/enrichment.py --with-batch       # + the batch mode (slow)

What runs: a real RabbitMQ, the OpenCTI emulator and the VirusTotal emulator (`--latency-ms`,
100 ms by default, per VT request) in this process.

1. Bursts (`--bursts`): mixed requests (files, domains, IPs, URLs of the emulator's corpus) asked
   of OpenCTI at once, answered by
   - the sequential consumer, the BASELINE: one long-lived process answering one request at a
     time (read one message, enrich, send, acknowledge, read the next), which is what
     upstream's connector loop does (pycti's listen queue, prefetch 1). It is the drain run's
     own code with `concurrency=1, backlog=1`, so only the design differs;
   - the drain design: the same job with its defaults (16 at a time, reading ahead).
   Both are already running when the burst comes (as the sensor keeps one), each in a process
   of its own (a run worker's; the emulators and RabbitMQ are in this one).
   Target: the drain design >= 3x faster than the baseline, 1 VT call per request (the few
   crowdsourced-YARA files cost one more: their ruleset).
2. Clicks through a real `dagster-daemon` (`--clicks`), the deployment of one machine: the
   repository's dagster.yaml and workspace, the drain sensor keeping a drain run alive. After
   one warm-up click, `--clicks` clicks `--click-gap` s apart, request -> work complete;
   then one click after `--silence` s of silence (longer than the HTTP keep-alives of the VT
   and OpenCTI clients); then the same clicks while `--flood` auto-enrichment requests are
   being worked. Targets: p50 <= 1.5 s, p95 <= 3 s; after silence <= 6 s; under the flood
   p95 <= 10 s. Printed with where the time goes (the drain run's start: sensor, run queue,
   process start, resources; a click: read from the queue, answered) and the daemon's memory
   (its process group's RSS) before and after the flood.
3. `--expansions N` (200): N requests answered by the drain run with the base enrichment, then
   with every expansion on (README "Expansions" and "Related objects": every relation of every
   kind, families, ATT&CK, Sigma, IDS, YARA, comments, GTI context, a rescan of reports older
   than a year): seconds and VT calls per request, and the calls by endpoint.
4. `--with-batch`: the batch mode (a sensor tick makes runs of `--batch-size`, each a NEW
   PROCESS, `--max-concurrent-runs` at a time): the design before the drain, kept for the
   record.
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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

API_KEY = "benchmark-key"
TMPFS = Path("/dev/shm")


def with_deployment_resources(job: dg.JobDefinition) -> dg.JobDefinition:
    """A job with the deployment's resources from the environment."""
    from vt_pipeline.resources import build_resources

    defs = dg.Definitions(jobs=[job], resources=build_resources())
    return defs.resolve_job_def(job.name)


def bench_job() -> dg.JobDefinition:
    """The real batch job with the deployment's resources (reconstructable: a child runs it)."""
    from vt_pipeline.enrichment.job import vt_enrichment_job

    return with_deployment_resources(vt_enrichment_job)


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
    by_endpoint: dict[str, int] = field(default_factory=dict)

    def row(self) -> str:
        ordered = sorted(self.latencies)
        p50 = statistics.median(ordered) if ordered else float("nan")
        p95 = ordered[max(0, int(len(ordered) * 0.95 + 0.5) - 1)] if ordered else float("nan")
        return (
            f"| {self.design} | {self.seconds:.1f} s | {self.runs} "
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


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, min(len(ordered) - 1, int(len(ordered) * q + 0.5) - 1))]


def _stamp(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def wait_works(opencti: Any, works: Sequence[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((w := opencti.work(work)) is not None and w.status == "complete" for work in works):
            return
        time.sleep(0.05)
    left = sum(1 for work in works if (w := opencti.work(work)) is None or w.status != "complete")
    raise SystemExit(f"{left} of {len(works)} works still not complete after {timeout:.0f} s")


def latencies(opencti: Any, asked: dict[str, float]) -> tuple[list[float], float, int]:
    """Request -> work complete per work, the last completion, and how many are in error."""
    found, last, in_error = [], 0.0, 0
    for work_id, at in asked.items():
        work = opencti.work(work_id)
        done = _stamp(work.completed_time if work else None)
        if work is None or done is None:
            continue
        found.append(done - at)
        last = max(last, done)
        in_error += bool(work.in_error)
    return found, last, in_error


def execute_drain(limits_json: str) -> int:
    """The child process: one drain run with these limits, in the instance of $DAGSTER_HOME."""
    from vt_pipeline.enrichment.drain import DrainLimits, drain_run_config, vt_enrichment_drain_job

    limits = DrainLimits(**json.loads(limits_json))
    with dg.DagsterInstance.get() as instance:
        result = with_deployment_resources(vt_enrichment_drain_job).execute_in_process(
            run_config=drain_run_config(limits), instance=instance, raise_on_error=False
        )
    return 0 if result.success else 1


def drain_burst(design: str, limits: Any, opencti: Any, vt: Any, targets: Sequence[str]) -> Measure:
    """A drain run already reading (a process of its own, as a run worker is; the emulators
    stay in this one), then the burst asked at once."""
    from vt_pipeline.opencti.resource import OpenCTIResource

    tmp_parent = TMPFS if TMPFS.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="enrichment-bench-", dir=tmp_parent) as home:
        connector_id = str(uuid.uuid4())
        os.environ.update(
            {
                "DAGSTER_HOME": home,
                "VT_PIPELINE_STORAGE_DIR": str(Path(home) / "storage"),
                "VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID": connector_id,
            }
        )
        resource = OpenCTIResource(
            url=opencti.url, token=opencti.token, enrichment_connector_id=connector_id
        )
        with resource.connector("enrichment"):
            pass
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--execute-drain",
            json.dumps(limits.to_config()),
        ]
        child = subprocess.Popen(command, cwd=REPO_ROOT, env=dict(os.environ))
        with dg.DagsterInstance.get() as instance:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not instance.get_runs(
                filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
            ):
                time.sleep(0.05)
            time.sleep(2.0)  # its step is up and reads the queue
            vt.reset_stats()
            asked: dict[str, float] = {}
            started = time.time()
            for entity in targets:
                asked[opencti.ask_enrichment(entity, connector_id)] = time.time()
            wait_works(opencti, list(asked), timeout=3600)
            returncode = child.wait(timeout=600)
        found, last, in_error = latencies(opencti, asked)
        by_endpoint = {
            endpoint: sum(codes.values())
            for endpoint, codes in vt.stats().items()
            if "quota" not in endpoint
        }
        print(f"{design}: VT calls by endpoint {json.dumps(by_endpoint)}", flush=True)
        calls = sum(by_endpoint.values())
        failed = int(returncode != 0)
        return Measure(
            design,
            limits.concurrency,
            len(asked),
            last - started,
            1,
            failed,
            calls,
            found,
            in_error,
            by_endpoint,
        )


def _rss_kib(pgid: int) -> int:
    """Resident memory of a process group (the daemon and what it started), in KiB."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            for line in (status.parent / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


def _drain_start_breakdown(instance: dg.DagsterInstance, run_id: str, since: float) -> str:
    """Where the drain run's start went: sensor tick, run queue, process start, resources."""
    from dagster._core.events import DagsterEventType

    record = instance.get_run_records(filters=dg.RunsFilter(run_ids=[run_id]))[0]
    stamps: dict[str, float] = {"created": record.create_timestamp.timestamp()}
    kinds = {
        DagsterEventType.RUN_DEQUEUED: "dequeued",
        DagsterEventType.RUN_STARTING: "launched",
        DagsterEventType.RUN_START: "process up",
        DagsterEventType.STEP_START: "resources up, reading",
    }
    for record_ in instance.get_records_for_run(run_id, of_type=set(kinds)).records:
        event = record_.event_log_entry.dagster_event
        if event is not None:
            stamps.setdefault(kinds[event.event_type], record_.event_log_entry.timestamp)
    order = ["created", "dequeued", "launched", "process up", "resources up, reading"]
    parts, previous = [f"daemon up -> run created {stamps['created'] - since:.1f} s"], "created"
    for name in order[1:]:
        if name in stamps:
            parts.append(f"-> {name} {stamps[name] - stamps[previous]:.1f} s")
            previous = name
    return " ".join(parts)


def daemon_clicks(
    args: argparse.Namespace, opencti: Any, vt: Any, entities_: Sequence[str]
) -> list[str]:
    """Clicks through a real dagster-daemon in drain mode; returns the report's lines."""
    import yaml

    from vt_pipeline.emulators.processes import spawn_owned, terminate_group
    from vt_pipeline.enrichment.requests import DRAIN_JOB
    from vt_pipeline.opencti.resource import OpenCTIResource

    clicks_at = list(entities_[: 2 * args.clicks + 2])
    flood = list(entities_[2 * args.clicks + 2 : 2 * args.clicks + 2 + args.flood])
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="enrichment-daemon-") as home_dir:
        home = Path(home_dir)
        config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        (home / "workspace.yaml").write_text((REPO_ROOT / "workspace.yaml").read_text())
        connector_id = str(uuid.uuid4())
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "VT_PIPELINE_STORAGE_DIR": str(home / "storage"),
            "VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID": connector_id,
            "VT_PIPELINE_ENRICHMENT_MODE": "drain",
            "CONNECTOR_AUTO": "true",
        }
        resource = OpenCTIResource(
            url=opencti.url,
            token=opencti.token,
            enrichment_connector_id=connector_id,
            connector_auto=True,
        )
        with resource.connector("enrichment"):
            pass
        with dg.DagsterInstance.from_config(str(home)):
            pass  # storages migrated once, not by the daemon and its code server at once
        daemon = Path(sys.executable).parent / "dagster-daemon"
        log = (home / "daemon.log").open("ab")
        up = time.time()
        process, watchdog = spawn_owned(
            [str(daemon), "run", "-w", str(home / "workspace.yaml")],
            grace=20.0,
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            with dg.DagsterInstance.from_config(str(home)) as instance:
                deadline = time.monotonic() + 300
                run_id = None
                while time.monotonic() < deadline and run_id is None:
                    runs = instance.get_runs(
                        filters=dg.RunsFilter(
                            job_name=DRAIN_JOB, statuses=[dg.DagsterRunStatus.STARTED]
                        )
                    )
                    run_id = runs[0].run_id if runs else None
                    time.sleep(0.2)
                if run_id is None:
                    raise SystemExit("no drain run started within 300 s; see the daemon's log")
                warm = opencti.ask_enrichment(clicks_at.pop(), connector_id)
                asked_warm = time.time()
                wait_works(opencti, [warm], 120)
                first, _, _ = latencies(opencti, {warm: asked_warm})
                lines.append(f"drain run start: {_drain_start_breakdown(instance, run_id, up)}")
                lines.append(f"warm-up click (the run just started): {first[0]:.2f} s")

                def click_series(count: int) -> dict[str, float]:
                    asked: dict[str, float] = {}
                    for _ in range(count):
                        asked[opencti.ask_enrichment(clicks_at.pop(), connector_id)] = time.time()
                        time.sleep(args.click_gap)
                    return asked

                idle_clicks = click_series(args.clicks)
                wait_works(opencti, list(idle_clicks), 300)
                found, _, errors = latencies(opencti, idle_clicks)
                read = [
                    _stamp(opencti.work(w).received_time) - at  # type: ignore[operator,union-attr]
                    for w, at in idle_clicks.items()
                ]
                lines.append(
                    f"{len(found)} clicks {args.click_gap:.0f} s apart: p50 "
                    f"{percentile(found, 0.5):.2f} s, p95 {percentile(found, 0.95):.2f} s "
                    "(targets 1.5 s, 3 s); of which read from "
                    f"the queue p50 {percentile(read, 0.5):.2f} s; {errors} in error"
                )
                time.sleep(args.silence)
                cold = opencti.ask_enrichment(clicks_at.pop(), connector_id)
                asked_cold = time.time()
                wait_works(opencti, [cold], 120)
                after_silence, _, _ = latencies(opencti, {cold: asked_cold})
                lines.append(
                    f"a click after {args.silence:.0f} s of silence: {after_silence[0]:.2f} s "
                    "(target 6 s)"
                )
                rss_before = _rss_kib(process.pid)
                flood_asked: dict[str, float] = {}
                flood_started = time.time()
                for entity in flood:
                    work = opencti.platform.ask_enrichment(entity, connector_id, mode="auto")
                    flood_asked[work.id] = time.time()
                busy_clicks = click_series(args.clicks)
                wait_works(opencti, list(busy_clicks), 600)
                rss_during = _rss_kib(process.pid)
                wait_works(opencti, list(flood_asked), 3600)
                busy, _, _ = latencies(opencti, busy_clicks)
                _, flood_last, flood_errors = latencies(opencti, flood_asked)
                lines.append(
                    f"{len(busy)} clicks during {len(flood)} auto-enrichment requests: p50 "
                    f"{percentile(busy, 0.5):.2f} s, p95 {percentile(busy, 0.95):.2f} s "
                    f"(target 10 s); the flood done in {flood_last - flood_started:.1f} s "
                    f"({len(flood) / max(1e-9, flood_last - flood_started):.1f}/s), "
                    f"{flood_errors} in error"
                )
                lines.append(
                    f"daemon process group RSS (daemon, code server, drain run): "
                    f"{rss_before / 1024:.0f} MiB before the flood, "
                    f"{rss_during / 1024:.0f} MiB during (the drain sensor keeps no cursor; "
                    "the drain run holds at most its backlog)"
                )
        finally:
            terminate_group(process, 20.0)
            watchdog.release()
            log.close()
    return lines


def _launch(run_id: str) -> int:
    command = [sys.executable, str(Path(__file__).resolve()), "--execute-run", run_id]
    done = subprocess.run(command, cwd=REPO_ROOT, env=dict(os.environ), capture_output=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr.decode(errors="replace")[-2000:])
    return done.returncode


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bursts", default="200,2000", help="burst sizes, comma separated")
    parser.add_argument("--clicks", type=int, default=20, help="clicks per series (0: none)")
    parser.add_argument("--click-gap", type=float, default=2.0, help="seconds between clicks")
    parser.add_argument("--silence", type=float, default=65.0, help="seconds before a cold click")
    parser.add_argument("--flood", type=int, default=2000, help="auto requests under the clicks")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument(
        "--expansions", type=int, default=200, help="requests with every expansion on (0: none)"
    )
    parser.add_argument("--with-batch", action="store_true", help="also the batch mode (slow)")
    parser.add_argument("--requests", type=int, default=200, help="--with-batch: requests")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--max-concurrent-runs", type=int, default=4)
    parser.add_argument("--tick-interval", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="per design, seconds")
    parser.add_argument("--execute-run", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--execute-drain", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# Every enrichment expansion on (README, "Expansions" and "Related objects"), every relation.
EVERY_EXPANSION = {
    "VIRUSTOTAL_FILE_RELATIONSHIPS": "contacted_domains,contacted_ips,contacted_urls,"
    "dropped_files,execution_parents,bundled_files,itw_urls",
    "VIRUSTOTAL_DOMAIN_RELATIONSHIPS": "resolutions,communicating_files,downloaded_files,"
    "referrer_files,subdomains",
    "VIRUSTOTAL_IP_RELATIONSHIPS": "resolutions,communicating_files,downloaded_files",
    "VIRUSTOTAL_URL_RELATIONSHIPS": "last_serving_ip_address,downloaded_files,redirects_to,"
    "contacted_domains,contacted_ips",
    "VIRUSTOTAL_FILE_MALWARE_FAMILY": "true",
    "VIRUSTOTAL_FILE_ATTACK_PATTERNS": "true",
    "VIRUSTOTAL_FILE_IMPORT_SIGMA": "true",
    "VIRUSTOTAL_FILE_IMPORT_IDS": "true",
    "VIRUSTOTAL_FILE_IMPORT_YARA": "true",
    "VIRUSTOTAL_CREATE_NOTE_COMMENTS": "true",
    "VIRUSTOTAL_GTI_CONTEXT": "true",
    "VIRUSTOTAL_RESCAN_OLDER_THAN_DAYS": "365",
}

HEADER = (
    "| design | first request -> last work complete | runs | VT calls / request "
    "| p50 request -> complete | p95 | works complete without error |\n"
    "| --- | --- | --- | --- | --- | --- | --- |"
)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.execute_run:
        return execute_one_run(args.execute_run)
    if args.execute_drain:
        return execute_drain(args.execute_drain)
    from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
    from vt_pipeline.emulators.rabbitmq import RabbitMQ
    from vt_pipeline.emulators.virustotal.corpus import generate_corpus
    from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
    from vt_pipeline.enrichment.drain import DrainLimits

    bursts = [int(n) for n in args.bursts.split(",") if n.strip() and int(n) > 0]
    needed = max(
        [
            *bursts,
            args.requests if args.with_batch else 0,
            args.expansions,
            2 * args.clicks + 2 + args.flood,
        ]
    )
    start = datetime(2026, 11, 20, tzinfo=UTC)
    corpus = generate_corpus(
        seed=2026,
        notifications=max(360, needed * 3 // 2),
        start=start,
        end=start + timedelta(hours=6),
    )
    vt = VirusTotalEmulator(corpus, api_keys={API_KEY: True}, latency_ms=args.latency_ms)
    load = os.getloadavg()
    print(
        f"VT latency {args.latency_ms:.0f} ms; {os.cpu_count()} cores, load "
        f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}",
        flush=True,
    )
    report: list[str] = []
    with RabbitMQ() as mq, OpenCTIEmulator(amqp=mq) as opencti, vt.serve():
        os.environ.update(
            {
                "VIRUSTOTAL_API_URL": vt.url,
                "VIRUSTOTAL_TOKEN": API_KEY,
                "OPENCTI_URL": opencti.url,
                "OPENCTI_TOKEN": opencti.token,
                # The base enrichment (1 VT call per request): GTI context is an expansion,
                # measured by --expansions.
                "VIRUSTOTAL_GTI_CONTEXT": os.environ.get("VIRUSTOTAL_GTI_CONTEXT", "false"),
            }
        )
        targets = entities(opencti, corpus, needed)
        for size in bursts:
            baseline = drain_burst(
                "sequential consumer (baseline)",
                DrainLimits(concurrency=1, backlog=1, idle_seconds=3),
                opencti,
                vt,
                targets[:size],
            )
            print(
                json.dumps(baseline.__dict__ | {"latencies": len(baseline.latencies)}), flush=True
            )
            drained = drain_burst(
                "drain run (16 at a time)", DrainLimits(idle_seconds=3), opencti, vt, targets[:size]
            )
            print(json.dumps(drained.__dict__ | {"latencies": len(drained.latencies)}), flush=True)
            report += [f"\nBurst of {size} mixed requests", HEADER, baseline.row(), drained.row()]
            if drained.seconds > 0:
                report.append(
                    f"drain run {baseline.seconds / drained.seconds:.1f}x faster than the "
                    "sequential consumer (target >= 3x)"
                )
        if args.expansions:
            size = min(args.expansions, len(targets))
            base = drain_burst(
                "drain run, base enrichment",
                DrainLimits(idle_seconds=3),
                opencti,
                vt,
                targets[:size],
            )
            saved = {name: os.environ.get(name) for name in EVERY_EXPANSION}
            os.environ.update(EVERY_EXPANSION)
            try:
                expanded = drain_burst(
                    "drain run, every expansion on",
                    DrainLimits(idle_seconds=3),
                    opencti,
                    vt,
                    targets[:size],
                )
            finally:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
            report += [f"\nEvery expansion on, {size} mixed requests", HEADER, base.row()]
            report.append(expanded.row())
            report.append(
                f"per request: {base.seconds / size:.3f} s and {base.vt_calls / size:.2f} VT "
                f"calls (base) against {expanded.seconds / size:.3f} s and "
                f"{expanded.vt_calls / size:.2f} VT calls (every expansion on); by endpoint: "
                + json.dumps(expanded.by_endpoint)
            )
        if args.with_batch:
            os.environ["VT_PIPELINE_ENRICHMENT_MODE"] = "batch"
            batch = measure(
                "batch mode", args.batch_size, args, opencti, vt, targets[: args.requests]
            )
            report += [f"\nBatch mode, {args.requests} requests", HEADER, batch.row()]
        if args.clicks:
            print("clicks through a real dagster-daemon ...", flush=True)
            report.append("\nClicks through a real dagster-daemon (drain mode)")
            report += daemon_clicks(args, opencti, vt, targets)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
