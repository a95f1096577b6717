"""Livehunt end-to-end benchmark: the pipeline against its latency-bound floor and a sequential
baseline.

For each corpus size it measures, against the VirusTotal emulator with a fixed latency per
request, notifications per second end to end, VirusTotal calls per notification and peak memory,
for two variants of the same code in the same invocation:

- pipeline: as built (VirusTotalResource's default max_concurrency, rulesets cached per run),
  measured `--repeats` times (default 3), each in a fresh emulator and a fresh process; the
  figures are the fastest repetition's, and every repetition's time and the worst ratio are
  printed beside them;
- baseline: max_concurrency=1 and cache_rulesets=False (one ruleset fetch per notification),
  `--baseline-repeats` times (default 1: it is sleep-bound, ~80 s at 1,000, ~760 s at 10,000).

Both download the kept samples (upload_artifact=True): downloads are most of the VT calls.

The latency-bound floor (`latency_floor`) is what no client can beat at the pipeline's
concurrency C and the emulator's latency L: from the emulator's request log of the first
pipeline repetition (`GET /_emulator/requests`; the corpus is the same every time) it rebuilds
the round trips the corpus needs (per window a chain of pages; a ruleset once a page names it;
a sample's download, two round trips, once a page lists it) and list-schedules them on C slots
with zero CPU. Targets (TARGETS, by the emulator's latency): at 50 ms, end to end at most 2.5x
the floor at 1,000 notifications and at least 15x the baseline at 1,000 and at 10,000; at
300 ms (closer to VirusTotal's own), end to end at most 1.5x the floor at 10,000 and 100,000
and a run's peak RSS at most 1 GiB at 100,000; at every size, at most 0.45 VT API calls per
notification. The baseline runs only at `--baseline-sizes` (it is sleep-bound: hours at
100,000), the floor at every size.

A further measurement processes the same corpus size spread over 4 days (96 hourly partitions)
as 4 successive runs of 24 partitions, the way a 4-day backfill runs with the assets'
BackfillPolicy.multi_run(24). Memory must not grow with the partitions processed: the verdict
compares the peak RSS after the last run with the one after run 2 (run 1 leaves a one-time
footprint: Dagster's lazily built record constructors capture the first step context, and
with it run 1's in-process outputs; see benchmarks/README.md) and also prints the ratio to
run 1 and what tracemalloc sees still allocated after each run (flat = nothing accumulates).

Every measurement runs in a fresh subprocess (its own peak RSS, temporary storage and
`dg.instance_for_test()`) against a freshly started emulator process (VirusTotal is remote in
reality; in-process the emulator would share the GIL with the pipeline). The Dagster instance's
SQLite files live on tmpfs (/dev/shm) when there is one: a window run stores ~300 events, and
on this machine's disk each SQLite commit costs ~18 ms of fsync, a constant of both variants
that says nothing about the pipeline (a PostgreSQL instance commits far faster). With the
instance on disk the 1,000-notification speedup measured ~8x instead of ~11x.

    .venv/bin/python benchmarks/livehunt.py            # sizes 1,000 and 10,000 (~25 minutes)
    .venv/bin/python benchmarks/livehunt.py --quick    # 1,000 only (~3 minutes)
    .venv/bin/python benchmarks/livehunt.py --check    # exit status 1 when a target is missed
    .venv/bin/python benchmarks/livehunt.py --latency-ms 300 --sizes 10000,100000 \
        --baseline-sizes '' --memory-sizes 10000 --repeats 1   # a big team's day (~1 hour)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import heapq
import importlib
import itertools
import json
import math
import os
import platform
import resource
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_START = datetime(2026, 11, 1, tzinfo=UTC)
HOURS_PER_RUN = 24  # the assets' BackfillPolicy.multi_run(max_partitions_per_run=24)
MEMORY_RUNS = 4  # days of the memory measurement: 96 hourly partitions
API_KEY = "demo"
TARGET_SIZE = 1000  # the size of --quick


@dataclass(frozen=True)
class Targets:
    """The targets at one emulator latency (issue 16 set them at 50 ms, issue 18 at 300 ms)."""

    floor_ratio: float | None = None  # end to end / latency-bound floor, at most
    floor_sizes: tuple[int, ...] = ()
    speedup: float | None = None  # pipeline / baseline, notifications per second, at least
    speedup_sizes: tuple[int, ...] = ()
    peak_rss_mib: float | None = None  # peak RSS of the run, at most
    peak_rss_sizes: tuple[int, ...] = ()


TARGETS = {
    50.0: Targets(floor_ratio=2.5, floor_sizes=(1000,), speedup=15.0, speedup_sizes=(1000, 10000)),
    300.0: Targets(
        floor_ratio=1.5, floor_sizes=(10000, 100000), peak_rss_mib=1024.0, peak_rss_sizes=(100000,)
    ),
}
TARGET_CALLS_PER_NOTIFICATION = 0.45  # VT API calls per notification, at most, at every size
BASELINE_SIZES = "1000,10000"  # the sequential baseline: ~80 s at 1,000, ~760 s at 10,000 (50 ms)
MEMORY_SIZES = "1000,10000"
MEMORY_GROWTH_LIMIT = 1.10  # peak RSS after the last run / after run 2 (see the docstring)
TMPFS = Path("/dev/shm")
EMULATOR_START_TIMEOUT = 180.0
RESULT_PREFIX = "BENCHMARK-RESULT "
# Requests per notification of the baseline at 50 ms and the seconds a run costs besides VT,
# measured on a 2-core machine; only used for the duration estimates printed along the way.
EST_SEQUENTIAL_REQUESTS = 1.35
EST_RUN_OVERHEAD_S = 5.0
EST_CPU_PER_NOTIFICATION_S = 0.001


@dataclass(frozen=True)
class Variant:
    """One configuration of the same pipeline code."""

    name: str
    max_concurrency: int | None  # None: VirusTotalResource's default
    cache_rulesets: bool


PIPELINE = Variant("pipeline", None, True)
BASELINE = Variant("baseline", 1, False)


# -- the measuring subprocess ------------------------------------------------------------------


def _quiet_dagster(log_level: str) -> None:
    """No Dagster console logs below `log_level` (Python loggers too), no Beta/Preview warnings."""
    import logging
    import warnings

    import dagster as dg

    for category in (dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("dagster").setLevel(log_level)


def _tmpfs() -> Path | None:
    """Where the Dagster instance goes: tmpfs when the machine has one (see the docstring)."""
    return TMPFS if TMPFS.is_dir() and os.access(TMPFS, os.W_OK) else None


def _peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _partition_key(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d-%H:%M")


class RssSampler:
    """The process's resident set size every `interval` seconds (from /proc/self/statm), in a
    thread: what each step of a run peaks at, where ru_maxrss only has the process's peak."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (time.time(), MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with open("/proc/self/statm") as statm:
                    pages = int(statm.read().split()[1])
            except (OSError, ValueError, IndexError):
                return  # not Linux: no per-step figures
            self.samples.append((time.time(), pages * self._page / (1 << 20)))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_between(self, start: float, end: float) -> float | None:
        inside = [mib for moment, mib in self.samples if start <= moment <= end]
        return round(max(inside), 1) if inside else None


def _step_peak_rss(instance: Any, run_id: str, sampler: RssSampler) -> dict[str, float]:
    """Peak RSS sampled while each step ran, from its STEP_START to its end in the event log."""
    started: dict[str, float] = {}
    peaks: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or not entry.step_key:
            continue
        if event.event_type_value == "STEP_START":
            started[entry.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            peak = sampler.peak_between(started.get(entry.step_key, 0.0), entry.timestamp)
            if peak is not None:
                peaks[entry.step_key] = peak
    return peaks


def _step_seconds(result: Any) -> dict[str, float]:
    """Duration of every successful step of a run, from its STEP_SUCCESS events."""
    steps: dict[str, float] = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_SUCCESS":
            duration_ms = getattr(event.event_specific_data, "duration_ms", None) or 0.0
            steps[event.step_key] = round(duration_ms / 1000, 3)
    return steps


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement: `runs` successive materializations of 24 partitions each."""
    import tracemalloc

    _quiet_dagster(spec["log_level"])

    import dagster as dg

    from vt_pipeline.livehunt.settings import LivehuntSettings
    from vt_pipeline.livehunt.summary import livehunt_totals, materialize_windows
    from vt_pipeline.opencti.resource import OpenCTIResource
    from vt_pipeline.storage.store import PartitionedFileIOManager, StorageResource
    from vt_pipeline.virustotal.resource import VirusTotalResource

    # What a run worker does first: load the code location (which also freezes what it loaded
    # out of the garbage collector's walks; see the end of vt_pipeline/definitions.py).
    importlib.import_module("vt_pipeline.definitions")

    variant = Variant(**spec["variant"])
    vt_options: dict[str, Any] = {"api_key": API_KEY, "api_url": spec["url"]}
    if variant.max_concurrency is not None:
        vt_options["max_concurrency"] = variant.max_concurrency
    virustotal = VirusTotalResource(**vt_options)
    runs: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="livehunt-bench-") as base,
        tempfile.TemporaryDirectory(prefix="livehunt-bench-instance-", dir=_tmpfs()) as home,
        dg.instance_for_test(temp_dir=home) as instance,
    ):
        resources = {
            "virustotal": virustotal,
            "livehunt_settings": LivehuntSettings(
                upload_artifact=True, cache_rulesets=variant.cache_rulesets
            ),
            "opencti": OpenCTIResource(),  # not configured: ingestion up to the STIX bundles
            "storage": StorageResource(base_dir=base),
            "io_manager": PartitionedFileIOManager(base_dir=base),
        }
        setup_rss = _peak_rss_mib()
        if spec["tracemalloc"]:
            tracemalloc.start()
        for index in range(spec["runs"]):
            first = CORPUS_START + timedelta(hours=HOURS_PER_RUN * index)
            last = first + timedelta(hours=HOURS_PER_RUN - 1)
            if spec["tracemalloc"]:
                tracemalloc.reset_peak()
            started = time.perf_counter()
            with RssSampler() as sampler:
                result = materialize_windows(
                    instance,
                    _partition_key(first),
                    _partition_key(last),
                    resources,
                    log_level=spec["log_level"],
                )
            seconds = time.perf_counter() - started
            totals = livehunt_totals(result)
            run: dict[str, Any] = {
                "first_partition": _partition_key(first),
                "last_partition": _partition_key(last),
                "success": result.success,
                "seconds": round(seconds, 3),
                "partitions": len(totals["windows"]),
                "notifications": totals["notifications"],
                "kept": totals["kept"],
                "artifacts": totals["artifacts"],
                "artifact_bytes": totals["artifact_bytes"],
                "stix_objects": sum(totals["stix_objects_by_type"].values()),
                "vt_calls_by_endpoint": dict(sorted(totals["vt_calls_by_endpoint"].items())),
                "steps": _step_seconds(result),
                "steps_peak_rss_mib": _step_peak_rss(instance, result.run_id, sampler),
            }
            del result, totals  # a backfill keeps nothing of a finished run either
            if spec["tracemalloc"]:
                peak = tracemalloc.get_traced_memory()[1]
                gc.collect()  # what the run left behind, not its garbage awaiting collection
                current = tracemalloc.get_traced_memory()[0]
                run["traced_peak_mib"] = round(peak / (1 << 20), 1)
                run["traced_current_mib"] = round(current / (1 << 20), 1)
            run["peak_rss_mib"] = round(_peak_rss_mib(), 1)
            runs.append(run)
            print(
                f"run {index + 1}/{spec['runs']} done in {seconds:.1f} s, "
                f"peak RSS {run['peak_rss_mib']} MiB",
                flush=True,
            )
    return {
        "max_concurrency": virustotal.max_concurrency,
        "cache_rulesets": variant.cache_rulesets,
        "setup_peak_rss_mib": round(setup_rss, 1),
        "runs": runs,
    }


# -- the latency-bound floor ------------------------------------------------------------------

FLOOR_ENDPOINTS = ("ioc_stream", "hunting_ruleset", "file_download", "sample")
_PAGE, _RULESET, _DOWNLOAD, _SAMPLE = FLOOR_ENDPOINTS


@dataclass(frozen=True)
class Floor:
    """The latency-bound floor of a corpus: the fastest any client could fetch what the
    pipeline fetched, with `concurrency` requests in flight, `latency_s` per request and no CPU.

    `seconds` is the makespan of list scheduling over the DAG of round trips;
    `lower_bound_seconds` the trivial bound max(longest chain, ceil(round trips / C)) * L.
    """

    seconds: float
    lower_bound_seconds: float
    rounds: int  # `seconds` in round trips of L
    longest_chain: int  # round trips on the longest dependency chain
    round_trips: dict[str, int]  # per endpoint
    windows: int  # distinct ioc_stream filters
    concurrency: int
    latency_s: float

    @property
    def total_round_trips(self) -> int:
        return sum(self.round_trips.values())


@dataclass
class _Task:
    """One round trip of the floor's DAG."""

    endpoint: str
    rank: tuple[int, int]  # a topological order: pages by position in their chain, then the rest
    successors: list[int] = dataclasses.field(default_factory=list)
    predecessors: list[int] = dataclasses.field(default_factory=list)  # any one releases it
    remaining: int = 1  # round trips on the longest path from this one, itself included


def _needed(entry: dict[str, Any]) -> bool:
    """A round trip the corpus needs: not a retryable refusal (429, 5xx), and a page only when
    it was served (its files and rulesets are what the other round trips wait for)."""
    status = int(entry["status"])
    if entry["endpoint"] == _PAGE:
        return status == 200
    return status < 500 and status != 429


def floor_tasks(log: Sequence[dict[str, Any]]) -> list[_Task]:
    """The DAG of round trips behind an emulator request log (see `latency_floor`)."""
    tasks: list[_Task] = []
    chains: dict[str, dict[str | None, int]] = {}  # filter -> cursor -> page task, in order
    named: list[tuple[int, list[str]]] = []  # (page, the keys of what it releases)
    keyed: dict[str, int] = {}  # "ruleset:<id>" / "file:<sha256>" -> the task a page releases
    samples: dict[str, int] = {}  # sha256 -> its `sample` task

    def add(endpoint: str, rank: tuple[int, int]) -> int:
        tasks.append(_Task(endpoint, rank))
        return len(tasks) - 1

    for entry in sorted(log, key=lambda e: e["start"]):
        endpoint = entry["endpoint"]
        if endpoint not in FLOOR_ENDPOINTS or not _needed(entry):
            continue
        if endpoint == _PAGE:
            pages = chains.setdefault(str(entry.get("filter") or ""), {})
            cursor = entry.get("cursor") or None
            if cursor not in pages:
                pages[cursor] = page = add(_PAGE, (0, len(pages)))
                keys = [f"ruleset:{r}" for r in entry.get("rulesets") or []]
                named.append((page, keys + [f"file:{f}" for f in entry.get("files") or []]))
        elif endpoint in (_RULESET, _DOWNLOAD):
            key = (
                f"ruleset:{entry.get('ruleset')}"
                if endpoint == _RULESET
                else f"file:{entry.get('file')}"
            )
            if key not in keyed:
                keyed[key] = add(endpoint, (1, 0))
        elif str(entry.get("sha256")) not in samples:
            samples[str(entry.get("sha256"))] = add(_SAMPLE, (2, 0))

    def link(before: int, after: int) -> None:
        tasks[before].successors.append(after)
        tasks[after].predecessors.append(before)

    for pages in chains.values():
        order = list(pages.values())
        for page, following in itertools.pairwise(order):
            link(page, following)
    for sha256, sample in samples.items():
        download = keyed.get(f"file:{sha256}")
        if download is None:  # a sample fetched without its API call: the page releases it
            keyed[f"file:{sha256}"] = sample
        else:
            link(download, sample)
    for page, keys in named:
        for key in dict.fromkeys(keys):
            if key in keyed:
                link(page, keyed[key])
    return tasks


def latency_floor(log: Sequence[dict[str, Any]], concurrency: int, latency_s: float) -> Floor:
    """The latency-bound floor of the round trips in an emulator request log.

    The DAG, from the log of one pipeline run (`GET /_emulator/requests`): per window (filter)
    the chain of its pages (distinct cursors, in the order they were fetched); each ruleset
    fetched is ready once the first page naming it has completed; each sample downloaded is
    `file_download` then `sample`, ready once the first page listing the file has completed (a
    round trip no page names is ready at once). Retries collapse: each page, ruleset and
    download counts once. Only FLOOR_ENDPOINTS count (not overall_quotas or deletions).
    Scheduling is list scheduling on `concurrency` slots, every round trip lasting `latency_s`
    and no CPU, priority to the longest remaining path (pages on a tie). Equal durations make
    it a sequence of rounds: each round starts the `concurrency` best ready round trips.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    tasks = floor_tasks(log)
    order = sorted(range(len(tasks)), key=lambda index: tasks[index].rank)
    earliest = [0] * len(tasks)  # the round it could end in with unlimited slots
    for index in order:  # every task has one predecessor or several alternative ones
        task = tasks[index]
        earliest[index] = 1 + min((earliest[p] for p in task.predecessors), default=0)
    for index in reversed(order):
        task = tasks[index]
        task.remaining = 1 + max((tasks[s].remaining for s in task.successors), default=0)

    def key(index: int) -> tuple[int, bool, int]:
        return (-tasks[index].remaining, tasks[index].endpoint != _PAGE, index)

    released = [not task.predecessors for task in tasks]
    ready = [key(index) for index, free in enumerate(released) if free]
    heapq.heapify(ready)
    rounds = 0
    while ready:
        rounds += 1
        started = [heapq.heappop(ready)[2] for _ in range(min(concurrency, len(ready)))]
        for index in started:
            for successor in tasks[index].successors:
                if not released[successor]:
                    released[successor] = True
                    heapq.heappush(ready, key(successor))
    counts = dict.fromkeys(FLOOR_ENDPOINTS, 0)
    for task in tasks:
        counts[task.endpoint] += 1
    longest = max(earliest, default=0)
    bound = max(longest, math.ceil(len(tasks) / concurrency))
    return Floor(
        seconds=rounds * latency_s,
        lower_bound_seconds=bound * latency_s,
        rounds=rounds,
        longest_chain=longest,
        round_trips=counts,
        windows=len({e.get("filter") for e in log if e["endpoint"] == _PAGE and _needed(e)}),
        concurrency=concurrency,
        latency_s=latency_s,
    )


def mean_in_flight(log: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """Seconds from the first request of FLOOR_ENDPOINTS to the last one's end, and the mean
    number in flight over them: how much of the allowed concurrency the run used."""
    spans = [(e["start"], e["end"]) for e in log if e["endpoint"] in FLOOR_ENDPOINTS]
    if not spans:
        return 0.0, 0.0
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    busy = sum(end - start for start, end in spans)
    return wall, (busy / wall if wall > 0 else 0.0)


# -- the emulator process ----------------------------------------------------------------------


class BenchmarkError(RuntimeError):
    """A measurement could not be made (emulator or measuring process failed)."""


class EmulatorError(BenchmarkError):
    """The VirusTotal emulator did not start."""


@contextmanager
def emulator(
    notifications: int, hours: int, latency_ms: float, seed: int, log_dir: Path
) -> Iterator[str]:
    """A VirusTotal emulator process serving `notifications` over `hours` hours; yields its URL."""
    end = CORPUS_START + timedelta(hours=hours)
    command = [
        sys.executable,
        "-m",
        "vt_pipeline.cli",
        "emulate",
        "virustotal",
        "--port",
        "0",
        "--seed",
        str(seed),
        "--notifications",
        str(notifications),
        "--start",
        CORPUS_START.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "--end",
        end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "--latency-ms",
        str(latency_ms),
        "--api-key",
        API_KEY,
    ]
    stderr_path = log_dir / "emulator.stderr"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO_ROOT
        )
    try:
        url = _wait_for_url(process, stderr_path)
        threading.Thread(target=process.stdout.read, daemon=True).start()  # type: ignore[union-attr]
        yield url
    finally:
        _stop(process)


def _wait_for_url(process: subprocess.Popen[str], stderr_path: Path) -> str:
    """Read the emulator's stdout until it says where it listens."""
    assert process.stdout is not None
    deadline = time.monotonic() + EMULATOR_START_TIMEOUT
    marker = "listening on "
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise EmulatorError(
                f"the VirusTotal emulator did not start within {EMULATOR_START_TIMEOUT:.0f} s"
                f"{_tail(stderr_path)}"
            )
        ready, _, _ = select.select([process.stdout], [], [], min(remaining, 1.0))
        if ready:
            line = process.stdout.readline()
            if marker in line:
                return line.split(marker, 1)[1].strip()
            if line:
                continue
        if process.poll() is not None:
            raise EmulatorError(
                f"the VirusTotal emulator exited with status {process.returncode} before "
                f"listening{_tail(stderr_path)}"
            )


def _stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return ("\n  " + "\n  ".join(text[-lines:])) if text else ""


def emulator_requests(url: str) -> dict[str, dict[str, int]]:
    """Requests the emulator served, per endpoint and HTTP status (GET /_emulator/stats)."""
    with urllib.request.urlopen(f"{url}/_emulator/stats", timeout=30) as response:
        return json.load(response)["requests"]


def emulator_request_log(url: str) -> tuple[list[dict[str, Any]], int]:
    """The emulator's request log (GET /_emulator/requests) and how many it did not keep."""
    with urllib.request.urlopen(f"{url}/_emulator/requests", timeout=120) as response:
        dropped = int(response.headers.get("X-Emulator-Requests-Dropped") or 0)
        return json.load(response), dropped


# -- the driver --------------------------------------------------------------------------------


class Clock:
    """Elapsed time since the benchmark started, for progress lines."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def say(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.start)
        print(f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {text}", flush=True)


def estimate_seconds(size: int, latency_ms: float, concurrency: int) -> float:
    """A rough duration of one run, for the progress lines only."""
    waiting = size * EST_SEQUENTIAL_REQUESTS * (latency_ms + 5) / 1000 / concurrency
    return EST_RUN_OVERHEAD_S + waiting + size * EST_CPU_PER_NOTIFICATION_S


def measure(
    clock: Clock,
    args: argparse.Namespace,
    label: str,
    variant: Variant,
    size: int,
    runs: int,
    tracemalloc: bool,
    estimate: float,
    request_log: bool = False,
) -> dict[str, Any]:
    """Start an emulator and a measuring subprocess; return the child's result and VT counts
    (with `request_log`, the emulator's request log too: `request_log`, `request_log_dropped`)."""
    spec = {
        "variant": dataclasses.asdict(variant),
        "runs": runs,
        "tracemalloc": tracemalloc,
        "log_level": args.dagster_log_level,
    }
    with tempfile.TemporaryDirectory(prefix="livehunt-bench-logs-") as logs:
        log_dir = Path(logs)
        hours = runs * HOURS_PER_RUN
        clock.say(f"{label}: starting the emulator ({size:,} notifications over {hours} h)")
        with emulator(size, hours, args.latency_ms, args.seed, log_dir) as url:
            spec["url"] = url
            clock.say(f"{label}: measuring (estimate ~{_duration(estimate)})")
            child = _run_child(clock, label, spec, log_dir, args.progress_seconds)
            requests = emulator_requests(url)
            if request_log:
                child["request_log"], child["request_log_dropped"] = emulator_request_log(url)
    child["emulator_requests"] = requests
    return child


def _run_child(
    clock: Clock, label: str, spec: dict[str, Any], log_dir: Path, progress_seconds: float
) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    stdout_path, stderr_path = log_dir / "child.stdout", log_dir / "child.stderr"
    show_logs = spec["log_level"] not in {"WARNING", "ERROR", "CRITICAL"}
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            command,
            stdout=stdout,
            stderr=None if show_logs else stderr,
            cwd=REPO_ROOT,
            # the windows start at the corpus's, not at the rolling start of VT's retention
            env={**os.environ, "VT_PIPELINE_LIVEHUNT_START": _partition_key(CORPUS_START)},
        )
        started = time.monotonic()
        reported = 0
        try:
            while process.poll() is None:
                try:
                    process.wait(timeout=progress_seconds)
                except subprocess.TimeoutExpired:
                    lines = stdout_path.read_text().splitlines()
                    runs_done = [line for line in lines if line.startswith("run ")]
                    news = runs_done[reported:]
                    reported = len(runs_done)
                    note = f"; {news[-1]}" if news else ""
                    clock.say(f"{label}: still running, {time.monotonic() - started:.0f} s{note}")
        finally:
            _stop(process)
    output = stdout_path.read_text()
    results = [line for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
    if process.returncode != 0 or not results:
        raise BenchmarkError(
            f"{label}: the measuring process failed (status {process.returncode})"
            f"{_tail(stdout_path)}{_tail(stderr_path, 40)}"
        )
    return json.loads(results[-1][len(RESULT_PREFIX) :])


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def summarize(size: int, variant: Variant, child: dict[str, Any]) -> dict[str, Any]:
    """The figures of one throughput measurement (a single run of 24 partitions)."""
    run = child["runs"][0]
    requests = child["emulator_requests"]
    http_total = sum(sum(codes.values()) for codes in requests.values())
    http_errors = sum(
        count
        for codes in requests.values()
        for status, count in codes.items()
        if not 200 <= int(status) < 400
    )
    api_calls = sum(run["vt_calls_by_endpoint"].values())
    steps = run["steps"]
    return {
        "size": size,
        "variant": variant.name,
        "max_concurrency": child["max_concurrency"],
        "cache_rulesets": child["cache_rulesets"],
        "success": run["success"],
        "seconds": run["seconds"],
        "notifications_per_second": round(size / run["seconds"], 2),
        "notifications_seen": run["notifications"],
        "kept": run["kept"],
        "artifacts": run["artifacts"],
        "artifact_bytes": run["artifact_bytes"],
        "stix_objects": run["stix_objects"],
        "vt_api_calls": api_calls,
        "vt_api_calls_by_endpoint": run["vt_calls_by_endpoint"],
        "vt_api_calls_per_notification": round(api_calls / size, 4),
        "http_requests": http_total,
        "http_requests_by_endpoint": requests,
        "http_requests_per_notification": round(http_total / size, 4),
        "http_errors": http_errors,
        "peak_rss_mib": run["peak_rss_mib"],
        "setup_peak_rss_mib": child["setup_peak_rss_mib"],
        "steps_seconds": steps,
        "steps_peak_rss_mib": run.get("steps_peak_rss_mib", {}),
        "run_overhead_seconds": round(run["seconds"] - sum(steps.values()), 3),
    }


def summarize_memory(
    size: int, child: dict[str, Any], traced: dict[str, Any] | None
) -> dict[str, Any]:
    """The figures of the memory measurement (MEMORY_RUNS successive runs).

    `child` ran without tracemalloc (its RSS is the verdict's), `traced` the same runs with it.
    """
    runs = child["runs"]
    traced_runs = traced["runs"] if traced else [{} for _ in runs]
    first, last = runs[0]["peak_rss_mib"], runs[-1]["peak_rss_mib"]
    warm = runs[1]["peak_rss_mib"] if len(runs) > 1 else first
    ratio = last / warm
    return {
        "size": size,
        "partitions": sum(run["partitions"] for run in runs),
        "runs": len(runs),
        "notifications_seen": sum(run["notifications"] for run in runs),
        "success": all(run["success"] for run in runs),
        "setup_peak_rss_mib": child["setup_peak_rss_mib"],
        "peak_rss_mib_after_run": [run["peak_rss_mib"] for run in runs],
        "seconds_per_run": [run["seconds"] for run in runs],
        "traced_peak_mib_per_run": [run.get("traced_peak_mib") for run in traced_runs],
        "traced_current_mib_after_run": [run.get("traced_current_mib") for run in traced_runs],
        "traced_seconds_per_run": [run.get("seconds") for run in traced_runs],
        "growth_ratio": round(ratio, 3),
        "growth_ratio_from_run_1": round(last / first, 3),
        "passed": ratio <= MEMORY_GROWTH_LIMIT,
    }


def _short_step(step_key: str) -> str:
    if step_key.endswith("_is_valid"):
        return "check"
    return step_key.removeprefix("livehunt_")


OUTPUT_KEYS = ("notifications_seen", "kept", "artifacts", "artifact_bytes", "stix_objects")


def fastest(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The fastest repetition's figures, with every repetition's seconds beside them."""
    best = min(rows, key=lambda row: row["seconds"])
    return {
        **best,
        "repeats": len(rows),
        "seconds_each": [row["seconds"] for row in rows],
        "seconds_max": max(row["seconds"] for row in rows),
    }


def same_output(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether every measurement (both variants, every repetition) produced the same output."""
    return (
        all(row["success"] for row in rows)
        and len({tuple(row[key] for key in OUTPUT_KEYS) for row in rows}) == 1
    )


def floor_figures(floor: Floor, log: Sequence[dict[str, Any]], dropped: int) -> dict[str, Any]:
    """The floor as JSON, with how busy VT was in the measured run the log comes from."""
    wall, in_flight = mean_in_flight(log)
    return {
        "seconds": round(floor.seconds, 3),
        "rounds": floor.rounds,
        "lower_bound_seconds": round(floor.lower_bound_seconds, 3),
        "longest_chain": floor.longest_chain,
        "round_trips": floor.round_trips,
        "windows": floor.windows,
        "concurrency": floor.concurrency,
        "latency_ms": floor.latency_s * 1000,
        "log_entries": len(log),
        "log_dropped": dropped,
        "measured_vt_seconds": round(wall, 3),
        "measured_mean_in_flight": round(in_flight, 2),
    }


def verdicts(
    size: int,
    targets: Targets,
    pipeline: dict[str, Any],
    baseline: dict[str, Any] | None,
    floor: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """The targets at this size: end to end / floor, the speedup over the baseline (when it was
    measured), the run's peak RSS and VT calls per notification.

    `value` is the fastest repetition's figure, `worst` the slowest one's; `passed` is None
    where no target is set at this size (or the baseline was not measured).
    """
    floor_seconds = floor["seconds"]
    ratio = {
        "value": round(pipeline["seconds"] / floor_seconds, 3),
        "worst": round(pipeline["seconds_max"] / floor_seconds, 3),
        "baseline": round(baseline["seconds"] / floor_seconds, 3) if baseline else None,
        "target": targets.floor_ratio if size in targets.floor_sizes else None,
    }
    ratio["passed"] = None if ratio["target"] is None else ratio["value"] <= ratio["target"]
    speedup: dict[str, Any] = {"value": None, "worst": None, "target": None, "passed": None}
    if baseline:
        speedup = {
            "value": round(baseline["seconds"] / pipeline["seconds"], 3),
            "worst": round(baseline["seconds"] / pipeline["seconds_max"], 3),
            "target": targets.speedup if size in targets.speedup_sizes else None,
        }
        target = speedup["target"]
        speedup["passed"] = None if target is None else speedup["value"] >= target
    rss = {
        "value": pipeline["peak_rss_mib"],
        "target": targets.peak_rss_mib if size in targets.peak_rss_sizes else None,
    }
    rss["passed"] = None if rss["target"] is None else rss["value"] <= rss["target"]
    calls = {
        "value": pipeline["vt_api_calls_per_notification"],
        "target": TARGET_CALLS_PER_NOTIFICATION if size else None,
    }
    calls["passed"] = None if calls["target"] is None else calls["value"] <= calls["target"]
    return {"floor_ratio": ratio, "speedup": speedup, "peak_rss": rss, "calls": calls}


def _verdict(target: dict[str, Any], text: str) -> str:
    if target["passed"] is None:
        return "(no target at this size)"
    return f"{'PASS' if target['passed'] else 'FAIL'} (target {text})"


def measure_fixed_cost(clock: Clock, args: argparse.Namespace, pipeline: Variant) -> dict[str, Any]:
    """The pipeline's run over an empty corpus (`--repeats` times, fastest kept): what a run of
    24 windows costs whatever it carries - Dagster's events (a planned and a materialization
    event per window and asset, a check result per window), step starts, files per window, one
    page per window."""
    seconds, steps = [], {}
    for repeat in range(args.repeats):
        label = f"empty corpus {repeat + 1}/{args.repeats}"
        child = measure(clock, args, label, pipeline, 0, 1, False, EST_RUN_OVERHEAD_S)
        run = child["runs"][0]
        if not run["success"]:
            raise BenchmarkError(f"{label}: the run failed")
        seconds.append(run["seconds"])
        if run["seconds"] == min(seconds):
            steps = run["steps"]
    clock.say(
        f"empty corpus: {min(seconds):.2f} s (each: {', '.join(f'{s:.2f}' for s in seconds)})"
    )
    return {"seconds": min(seconds), "seconds_each": seconds, "steps_seconds": steps}


def report_fixed_cost(
    fixed: dict[str, Any], pipeline: dict[str, Any], floor: dict[str, Any]
) -> None:
    """How much of the end-to-end time any 24-window run costs, and what the data adds."""
    data = pipeline["seconds"] - fixed["seconds"]
    steps = ", ".join(f"{_short_step(k)} {v:.2f}" for k, v in fixed["steps_seconds"].items())
    print(
        f"fixed cost, the same run over an empty corpus: {fixed['seconds']:.2f} s = "
        f"{fixed['seconds'] / floor['seconds']:.2f} x the floor (steps: {steps})"
    )
    print(
        f"  end to end minus that: {data:.2f} s = {data / floor['seconds']:.2f} x the floor "
        "(what the notifications add over the fixed cost)"
    )


def report(
    size: int,
    latency_ms: float,
    goals: Targets,
    rows: dict[str, dict[str, Any]],
    floor: dict[str, Any],
    targets: dict[str, dict[str, Any]],
    same: bool,
    memory: dict[str, Any] | None,
) -> tuple[bool, str]:
    """Print one size's table and verdicts; whether its targets are met, and a one-line summary."""
    print()
    print(
        f"== {size:,} notifications, {HOURS_PER_RUN} hourly partitions in one run, "
        f"latency {latency_ms:g} ms per request =="
    )
    header = (
        f"{'variant':<9} {'max_conc':>8} {'rs_cache':>8} {'seconds':>8} {'notif/s':>8} "
        f"{'API calls/notif':>15} {'HTTP req/notif':>14} {'peak RSS MiB':>12} {'setup RSS':>9}"
    )
    print(header)
    for row in rows.values():
        print(
            f"{row['variant']:<9} {row['max_concurrency']:>8} "
            f"{'yes' if row['cache_rulesets'] else 'no':>8} {row['seconds']:>8.1f} "
            f"{row['notifications_per_second']:>8.1f} "
            f"{row['vt_api_calls_per_notification']:>15.3f} "
            f"{row['http_requests_per_notification']:>14.3f} {row['peak_rss_mib']:>12.1f} "
            f"{row['setup_peak_rss_mib']:>9.1f}"
        )
    for row in rows.values():
        each = ", ".join(f"{seconds:.1f}" for seconds in row["seconds_each"])
        plural = "s" if row["repeats"] > 1 else ""
        print(
            f"  {row['variant']}: {row['repeats']} repetition{plural}, seconds {each} "
            f"(the table shows the fastest)"
        )
    trips = floor["round_trips"]
    counted = ", ".join(f"{endpoint} {count:,}" for endpoint, count in trips.items())
    latency = f"L={floor['latency_ms']:g} ms"
    print(
        f"latency-bound floor at C={floor['concurrency']}, {latency}: {floor['seconds']:.2f} s "
        f"({floor['rounds']:,} rounds of L); trivial bound {floor['lower_bound_seconds']:.2f} s "
        f"= max(longest chain {floor['longest_chain']}, "
        f"ceil({sum(trips.values()):,} / {floor['concurrency']}) = "
        f"{math.ceil(sum(trips.values()) / floor['concurrency'])}) x L"
    )
    print(
        f"  round trips counted (first pipeline repetition's request log, {floor['windows']} "
        f"windows): {counted}"
    )
    if floor["log_dropped"]:
        print(f"  WARNING: the emulator dropped {floor['log_dropped']:,} log entries")
    print(
        f"  that repetition: {floor['measured_vt_seconds']:.2f} s from its first VT request to "
        f"its last, {floor['measured_mean_in_flight']:.1f} in flight on average "
        f"(of {floor['concurrency']})"
    )
    ratio, speedup = targets["floor_ratio"], targets["speedup"]
    rss, calls = targets["peak_rss"], targets["calls"]
    baseline_ratio = f"; baseline {ratio['baseline']:.1f}" if ratio["baseline"] else ""
    print(
        f"end to end / floor: {ratio['value']:.2f} (slowest repetition {ratio['worst']:.2f}"
        f"{baseline_ratio})  {_verdict(ratio, f'<= {goals.floor_ratio:g}')}"
    )
    pipeline, baseline = rows["pipeline"], rows.get("baseline")
    if baseline:
        print(
            f"speedup, notifications/s pipeline / baseline: {speedup['value']:.2f}x (slowest "
            f"repetition {speedup['worst']:.2f}x)  {_verdict(speedup, f'>= {goals.speedup:g}x')}"
        )
        print(
            "VT API calls, pipeline / baseline: "
            f"{pipeline['vt_api_calls'] / baseline['vt_api_calls']:.2f}   peak RSS, pipeline / "
            f"baseline: {pipeline['peak_rss_mib'] / baseline['peak_rss_mib']:.2f}"
        )
    else:
        print("sequential baseline: not measured at this size (see --baseline-sizes)")
    print(
        f"peak RSS of the run: {rss['value']:.0f} MiB  "
        f"{_verdict(rss, f'<= {goals.peak_rss_mib or 0:g} MiB')}"
    )
    print(
        f"VT API calls per notification: {calls['value']:.3f}  "
        f"{_verdict(calls, f'<= {TARGET_CALLS_PER_NOTIFICATION:g}')}"
    )
    by_step = pipeline.get("steps_peak_rss_mib") or {}
    if by_step:
        peaks = ", ".join(f"{_short_step(k)} {v:.0f}" for k, v in by_step.items())
        print(
            f"  peak RSS MiB while each step ran (setup {pipeline['setup_peak_rss_mib']:.0f}): "
            f"{peaks}"
        )
    for row in rows.values():
        endpoints = ", ".join(f"{k} {v}" for k, v in row["vt_api_calls_by_endpoint"].items())
        steps = ", ".join(f"{_short_step(k)} {v:.1f}" for k, v in row["steps_seconds"].items())
        print(
            f"  {row['variant']}: API calls {row['vt_api_calls']} ({endpoints}); "
            f"HTTP requests {row['http_requests']} ({row['http_errors']} errors)"
        )
        overhead = row["run_overhead_seconds"]
        print(f"  {row['variant']}: step seconds: {steps}; run overhead {overhead:.1f}")
    print(
        f"same output in every measurement: {'yes' if same else 'NO'} "
        f"({pipeline['notifications_seen']:,} notifications, {pipeline['kept']:,} kept, "
        f"{pipeline['artifacts']:,} samples = {pipeline['artifact_bytes'] / (1 << 20):.1f} MiB, "
        f"{pipeline['stix_objects']:,} STIX objects)"
    )
    ok = same and not floor["log_dropped"]
    summary = f"{size:,}:"
    named = (
        ("end to end / floor", ratio, ""),
        ("speedup", speedup, "x"),
        ("peak RSS", rss, " MiB"),
        ("VT calls/notification", calls, ""),
    )
    for name, target, unit in named:
        if target["value"] is None:
            continue
        summary += f" {name} {target['value']:.2f}{unit}"
        if target["passed"] is not None:
            ok = ok and target["passed"]
            summary += f" {'PASS' if target['passed'] else 'FAIL'};"
        else:
            summary += ";"
    summary = summary.rstrip(";")
    if memory is not None:
        ok = ok and memory["passed"] and memory["success"]
        after = ", ".join(f"{value:.1f}" for value in memory["peak_rss_mib_after_run"])
        print(
            f"memory, pipeline, {memory['notifications_seen']:,} notifications over "
            f"{memory['partitions']} partitions in {memory['runs']} runs of {HOURS_PER_RUN}: "
            f"peak RSS MiB after each run {after} (setup {memory['setup_peak_rss_mib']:.1f})"
        )
        traced = memory["traced_peak_mib_per_run"]
        if traced[0] is not None:
            retained = ", ".join(f"{v:.1f}" for v in memory["traced_current_mib_after_run"])
            peaks = ", ".join(f"{v:.1f}" for v in traced)
            print(
                f"  tracemalloc (same runs, separate process), MiB: peak per run {peaks}; "
                f"still allocated after each run {retained}"
            )
        print(
            f"  peak RSS after run {memory['runs']} / after run 2: {memory['growth_ratio']:.3f}  "
            f"{'PASS' if memory['passed'] else 'FAIL'} (target <= {MEMORY_GROWTH_LIMIT:.2f}; "
            f"/ after run 1, warm-up included: {memory['growth_ratio_from_run_1']:.3f})"
        )
        summary += (
            f"; memory growth over {memory['runs']} runs {memory['growth_ratio']:.3f} "
            f"{'PASS' if memory['passed'] else 'FAIL'}"
        )
    if not same:
        summary += "; OUTPUTS DIFFER"
    return ok, summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sizes", default="1000,10000", help="corpus sizes, comma separated")
    parser.add_argument("--quick", action="store_true", help=f"size {TARGET_SIZE} only")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="emulator delay/request")
    parser.add_argument("--seed", type=int, default=2026, help="corpus seed")
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the 4-run memory measurement"
    )
    parser.add_argument(
        "--no-tracemalloc",
        action="store_true",
        help="skip the memory measurement's second pass under tracemalloc (Python heap per "
        "run; a separate process, as tracemalloc slows Python down and inflates RSS)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        help="max_concurrency of the pipeline variant (default: VirusTotalResource's, as built)",
    )
    parser.add_argument(
        "--repeats",
        type=_positive,
        default=3,
        help="measurements of the pipeline variant per size, each in a fresh emulator and "
        "process; the fastest is reported",
    )
    parser.add_argument(
        "--baseline-sizes",
        default=BASELINE_SIZES,
        help="sizes at which the sequential baseline is measured (comma separated, '' for none; "
        "sleep-bound: at 300 ms ~7 min at 1,000, ~70 min at 10,000)",
    )
    parser.add_argument(
        "--memory-sizes",
        default=MEMORY_SIZES,
        help="sizes at which the 4-run memory measurement runs (comma separated)",
    )
    parser.add_argument(
        "--baseline-repeats",
        type=_positive,
        default=1,
        help="measurements of the sequential baseline per size (sleep-bound: ~80 s at 1,000, "
        "~760 s at 10,000)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--dagster-log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="Dagster console logs of the measuring processes (below WARNING: shown on stderr)",
    )
    parser.add_argument("--progress-seconds", type=float, default=30.0, help="progress interval")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 when a target is missed"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(RESULT_PREFIX + json.dumps(run_child(json.loads(args.child))), flush=True)
        return 0
    sizes = [TARGET_SIZE] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups on SIGTERM too

    clock = Clock()
    pipeline = dataclasses.replace(PIPELINE, max_concurrency=args.concurrency)
    goals = TARGETS.get(args.latency_ms, Targets())
    baseline_sizes = {int(s) for s in args.baseline_sizes.split(",") if s.strip()}
    memory_sizes = set() if args.no_memory else {int(s) for s in args.memory_sizes.split(",") if s}
    concurrency = args.concurrency or 32  # VirusTotalResource's default when this was written
    estimates = {
        size: {
            "pipeline": estimate_seconds(size, args.latency_ms, concurrency),
            "baseline": estimate_seconds(size, args.latency_ms, 1) * (size in baseline_sizes),
            "memory": MEMORY_RUNS
            * estimate_seconds(size // MEMORY_RUNS, args.latency_ms, concurrency)
            * (size in memory_sizes),
        }
        for size in sizes
    }
    traced_factor = 0 if args.no_tracemalloc else 2.5  # tracemalloc slows Python ~2.5x
    total = sum(
        e["pipeline"] * args.repeats
        + e["baseline"] * args.baseline_repeats
        + e["memory"] * (1 + traced_factor)
        for e in estimates.values()
    )
    print(
        f"Livehunt benchmark: sizes {', '.join(f'{s:,}' for s in sizes)}; emulator latency "
        f"{args.latency_ms:g} ms per request; seed {args.seed}; corpus from "
        f"{CORPUS_START:%Y-%m-%dT%H:%MZ}"
    )
    print(
        f"machine: {os.cpu_count()} cores, {_memory_gib():.0f} GiB, Python "
        f"{platform.python_version()}, {platform.platform()}"
    )
    instance_home = f"SQLite on tmpfs ({TMPFS})" if _tmpfs() else "SQLite in the temp dir"
    print(f"Dagster instance: {instance_home}; VT concurrency of the pipeline: its default")
    print(
        f"repetitions per size: pipeline {args.repeats}, baseline {args.baseline_repeats} "
        f"(the fastest of each is reported); the sequential baseline at "
        f"{_sizes(baseline_sizes & set(sizes))}; 4-run memory at "
        f"{_sizes(memory_sizes & set(sizes))}"
    )
    print(f"targets at {args.latency_ms:g} ms: {_targets_text(goals)}")
    print(f"estimated duration: ~{_duration(total)}")

    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "latency_ms": args.latency_ms,
        "seed": args.seed,
        "sizes": {},
    }
    ok, summaries = True, []
    fixed = measure_fixed_cost(clock, args, pipeline)
    results["fixed_cost"] = fixed
    for size in sizes:
        measured: dict[str, list[dict[str, Any]]] = {}
        log: list[dict[str, Any]] = []
        dropped = 0
        variants = [(pipeline, args.repeats)]
        if size in baseline_sizes:
            variants.append((BASELINE, args.baseline_repeats))
        for variant, repeats in variants:
            measured[variant.name] = []
            for repeat in range(repeats):
                label = f"{size:,} {variant.name}"
                label += f" {repeat + 1}/{repeats}" if repeats > 1 else ""
                first_pipeline = variant is pipeline and repeat == 0
                estimate = estimates[size][variant.name]
                child = measure(
                    clock, args, label, variant, size, 1, False, estimate, first_pipeline
                )
                if first_pipeline:
                    log, dropped = child.pop("request_log"), child.pop("request_log_dropped")
                row = summarize(size, variant, child)
                measured[variant.name].append(row)
                clock.say(
                    f"{label}: {row['seconds']:.1f} s, {row['notifications_per_second']:.1f} "
                    f"notifications/s, peak RSS {row['peak_rss_mib']:.0f} MiB"
                )
        rows = {name: fastest(runs) for name, runs in measured.items()}
        floor_model = latency_floor(
            log, rows["pipeline"]["max_concurrency"], args.latency_ms / 1000
        )
        if not floor_model.total_round_trips:
            raise BenchmarkError(f"{size:,}: the emulator's request log has no round trip")
        floor = floor_figures(floor_model, log, dropped)
        del log
        targets = verdicts(size, goals, rows["pipeline"], rows.get("baseline"), floor)
        same = same_output([row for runs in measured.values() for row in runs])
        memory = None
        if size in memory_sizes:
            label, estimate = f"{size:,} memory", estimates[size]["memory"]
            child = measure(clock, args, label, pipeline, size, MEMORY_RUNS, False, estimate)
            traced = None
            if not args.no_tracemalloc:
                label, estimate = f"{size:,} memory+tracemalloc", estimate * traced_factor
                traced = measure(clock, args, label, pipeline, size, MEMORY_RUNS, True, estimate)
            memory = summarize_memory(size, child, traced)
        size_ok, summary = report(size, args.latency_ms, goals, rows, floor, targets, same, memory)
        report_fixed_cost(fixed, rows["pipeline"], floor)
        ok, summaries = ok and size_ok, [*summaries, summary]
        results["sizes"][str(size)] = {
            **rows,
            "floor": floor,
            "targets": targets,
            "same_output": same,
            "memory": memory,
        }
        print(flush=True)
    clock.say(f"done: {'all targets met' if ok else 'TARGET MISSED'}; {'; '.join(summaries)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 1 if args.check and not ok else 0


def _sizes(sizes: set[int]) -> str:
    return ", ".join(f"{size:,}" for size in sorted(sizes)) or "no size"


def _targets_text(goals: Targets) -> str:
    parts = []
    if goals.floor_ratio:
        parts.append(
            f"end to end <= {goals.floor_ratio:g}x the floor at {_sizes(set(goals.floor_sizes))}"
        )
    if goals.speedup:
        parts.append(f"speedup >= {goals.speedup:g}x at {_sizes(set(goals.speedup_sizes))}")
    if goals.peak_rss_mib:
        parts.append(
            f"peak RSS <= {goals.peak_rss_mib:g} MiB at {_sizes(set(goals.peak_rss_sizes))}"
        )
    parts.append(f"VT API calls per notification <= {TARGET_CALLS_PER_NOTIFICATION:g}")
    return "; ".join(parts)


def _memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    except (ValueError, OSError):
        return 0.0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        sys.exit(2)
