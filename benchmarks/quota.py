"""Quota benchmark: one VT budget against per-run backoff, under a 60-per-minute quota.

The same work twice in one invocation, against the VirusTotal emulator enforcing 60 requests
per minute on the key: a 24-window Livehunt backfill (one run of 24 hourly partitions, in a
process of its own, tagged as a backfill) and 50 enrichment lookups (interactive, arriving in
five bursts of ten while the backfill runs).

- budget: the deployment's budget (vt_pipeline/virustotal/budget.py), shared through SQLite;
- no budget: `quota_budget=False`, each run only backs off on 429 (the upstream behaviour).

Printed per variant: the calls VT accepted per minute (must stay at or under 60, and above 90%
of it while work waits), the 429s VT answered (target 0), the enrichment lookups' p50/p95 wait,
failed lookups and whether the backfill succeeded. The clock is scaled (`--scale`, default 15:
a minute lasts 4 s) for the emulator and the budget alike, so the run takes a few minutes.

    .venv/bin/python benchmarks/quota.py [--scale 15] [--notifications 1500]   # ~3 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from vt_pipeline.emulators.virustotal.corpus import generate_corpus  # noqa: E402
from vt_pipeline.emulators.virustotal.scaled_clock import (  # noqa: E402
    ScaledClockVirusTotalResource,
)
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator  # noqa: E402
from vt_pipeline.virustotal.budget import BudgetClock, window  # noqa: E402
from vt_pipeline.virustotal.resource import VirusTotalError, VirusTotalResource  # noqa: E402

QUOTA = 60
KEY = "demo"
START = datetime(2026, 11, 1, tzinfo=UTC)
ENRICHMENTS = 50
BURSTS = 5


class MinuteMeter(threading.Thread):
    """Requests VT accepted per (scaled) minute, sampled from the emulator's counters."""

    def __init__(self, emulator: VirusTotalEmulator, clock: BudgetClock) -> None:
        super().__init__(daemon=True)
        self.emulator, self.clock = emulator, clock
        self.per_minute: dict[int, int] = {}
        self.stop = threading.Event()

    def accepted(self) -> int:
        unmetered = {"sample", "overall_quotas"}  # not counted by VT
        return sum(
            count
            for endpoint, codes in self.emulator.stats().items()
            if endpoint not in unmetered
            for code, count in codes.items()
            if code != "429"
        )

    def run(self) -> None:
        last = self.accepted()
        while not self.stop.wait(0.02):
            now = self.accepted()
            if now != last:
                minute = window("minute", self.clock.now())[0]
                self.per_minute[minute] = self.per_minute.get(minute, 0) + now - last
                last = now


def variant(name: str, budget: bool, scale: float, corpus: Any, hashes: list[str]) -> dict:
    clock = BudgetClock(scale)
    emulator = VirusTotalEmulator(
        corpus, api_keys={KEY: True}, quota_per_minute=QUOTA, clock=clock.now
    )
    with tempfile.TemporaryDirectory() as tmp, emulator.serve():
        budget_url = f"sqlite:///{Path(tmp) / 'budget.db'}"
        common = {
            "quota_budget": budget,
            "quota_per_minute": QUOTA,
            "budget_url": budget_url,
            "budget_time_scale": scale,
            "budget_boundary_margin_seconds": 0.3,
            # Per-run backoff on the same scaled time (1 s first, 60 s longest, in VT minutes).
            "backoff_base_seconds": 1.0 / scale,
            "backoff_max_seconds": 60.0 / scale,
        }
        settings = {
            "api_url": emulator.url,
            "api_key": KEY,
            "storage": str(Path(tmp) / "storage"),
            "budget": budget,
            "per_minute": QUOTA,
            "budget_url": budget_url,
            "scale": scale,
            "margin": 0.3,
            "backoff_base": 1.0 / scale,
            "backoff_max": 60.0 / scale,
            "max_attempts": 8,
            "first": START.strftime("%Y-%m-%d-%H:%M"),
            "last": (START + timedelta(hours=23)).strftime("%Y-%m-%d-%H:%M"),
            "backfill": True,
        }
        meter = MinuteMeter(emulator, clock)
        meter.start()
        started = time.monotonic()
        backfill = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vt_pipeline_tests.virustotal.budget_worker",
                json.dumps(settings),
            ],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        vt = ScaledClockVirusTotalResource(
            api_key=KEY, api_url=emulator.url, timeout_seconds=30, **common
        )
        waits, failed = asyncio.run(enrich(vt, hashes, clock))
        out, _ = backfill.communicate(timeout=3600)
        ended = time.monotonic()
        meter.stop.set()
        meter.join()
        result = json.loads(out.strip().splitlines()[-1])
        rejected = sum(codes.get("429", 0) for codes in emulator.stats().values())
    minutes = [meter.per_minute[m] for m in sorted(meter.per_minute)]
    # While work waits: from the first minute that reached the quota to the last whole minute
    # (before, the backfill's process is still starting; the last minute is partial).
    full = next((i for i, count in enumerate(minutes) if count >= QUOTA), len(minutes))
    busy = minutes[full:-1]
    return {
        "variant": name,
        "backfill_ok": result["success"],
        "wall_s": round(ended - started, 1),
        "calls_per_minute": minutes,
        "max_per_minute": max(minutes, default=0),
        "busy_mean_share": round(statistics.mean(busy) / QUOTA, 3) if busy else None,
        "429s": rejected,
        "enrich_p50_s": round(statistics.median(waits) * scale, 1) if waits else None,
        "enrich_p95_s": round(percentile(waits, 95) * scale, 1) if waits else None,
        "enrich_failed": failed,
    }


async def enrich(vt: VirusTotalResource, hashes: list[str], clock: BudgetClock) -> tuple:
    """Five bursts of ten interactive lookups, one (scaled) minute apart; each one's wait."""
    waits: list[float] = []
    failed = 0
    async with vt.session() as session:
        session.kind = "interactive"

        async def one(sha: str) -> None:
            nonlocal failed
            asked = time.monotonic()
            try:
                await session.lookup("file", sha)
                waits.append(time.monotonic() - asked)
            except VirusTotalError:
                failed += 1

        per_burst = ENRICHMENTS // BURSTS
        for burst in range(BURSTS):
            # The first burst once the backfill spends the quota (its process takes a few
            # seconds to start), then one a minute.
            await asyncio.sleep(clock.real(60.0) if burst else clock.real(180.0))
            chunk = hashes[burst * per_burst : (burst + 1) * per_burst]
            await asyncio.gather(*(one(sha) for sha in chunk))
    return waits, failed


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=15.0, help="clock seconds per second")
    parser.add_argument("--notifications", type=int, default=1500, help="over the 24 windows")
    args = parser.parse_args()
    corpus = generate_corpus(
        seed=7, notifications=args.notifications, start=START, end=START + timedelta(hours=24)
    )
    hashes = sorted(corpus.files)[:ENRICHMENTS]
    print(f"quota {QUOTA}/minute, 24-window backfill + {ENRICHMENTS} enrichment lookups")
    print(f"clock x{args.scale:g}: seconds below are VT seconds (real = / {args.scale:g})")
    rows = [
        variant("budget", True, args.scale, corpus, hashes),
        variant("no budget", False, args.scale, corpus, hashes),
    ]
    for row in rows:
        print(json.dumps(row))
    budgeted = rows[0]
    ok = (
        budgeted["max_per_minute"] <= QUOTA
        and budgeted["429s"] == 0
        and (budgeted["busy_mean_share"] or 1.0) > 0.9
        and budgeted["backfill_ok"]
        and not budgeted["enrich_failed"]
    )
    print("verdict:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
