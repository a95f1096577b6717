"""The budget against the VT emulator enforcing quotas as VT does, with Livehunt runs in
processes of their own and enrichment-like bursts of lookups, on a scaled clock (an emulator
and budget "minute" lasts 1.5 s) so that nothing waits real minutes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.scaled_clock import ScaledClockVirusTotalResource
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.quota.definitions import virustotal_quota_sensor
from vt_pipeline.virustotal.budget import BudgetClock, window
from vt_pipeline.virustotal.resource import VirusTotalError, VirusTotalResource
from vt_pipeline_tests.conftest import PREMIUM_KEY, partition_key
from vt_pipeline_tests.virustotal import budget_worker

pytestmark = pytest.mark.integration
SCALE = 40.0  # a budget and emulator minute lasts 1.5 s
PER_MINUTE = 20
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def limited(vt_corpus: Corpus) -> Iterator[VirusTotalEmulator]:
    """VT with 20 requests per (scaled) minute on the key."""
    emulator = VirusTotalEmulator(
        vt_corpus,
        api_keys={PREMIUM_KEY: True},
        quota_per_minute=PER_MINUTE,
        clock=BudgetClock(SCALE).now,
    )
    with emulator.serve():
        yield emulator


def config(emulator: VirusTotalEmulator, storage: Path, first: int, last: int, **kw: Any) -> dict:
    return {
        "api_url": emulator.url,
        "api_key": PREMIUM_KEY,
        "storage": str(storage),
        "scale": SCALE,
        "per_minute": PER_MINUTE,
        "margin": 0.4,  # a loaded CI host can take this long from grant to VT
        "first": partition_key(first),
        "last": partition_key(last),
        **kw,
    }


def start_worker(settings: dict) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "vt_pipeline_tests.virustotal.budget_worker", json.dumps(settings)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=240)
    return json.loads(out.strip().splitlines()[-1])


def bundles(storage: Path, hours: range) -> dict[int, bytes]:
    base = storage / "livehunt_stix_bundles"
    return {hour: (base / f"{partition_key(hour)}.json").read_bytes() for hour in hours}


def resource(emulator: VirusTotalEmulator, budget_url: str, **kw: Any) -> VirusTotalResource:
    return ScaledClockVirusTotalResource(
        api_key=PREMIUM_KEY,
        api_url=emulator.url,
        timeout_seconds=5.0,
        backoff_base_seconds=0.01,
        backoff_max_seconds=0.05,
        quota_per_minute=PER_MINUTE,
        budget_url=budget_url,
        budget_time_scale=SCALE,
        budget_boundary_margin_seconds=0.4,
        **kw,
    )


def lookups(vt: VirusTotalResource, hashes: list[str], kind: str) -> tuple[list, list[float]]:
    """Look the files up as `kind` work; the answers and when each came (monotonic)."""

    async def main() -> tuple[list, list[float]]:
        async with vt.session() as session:
            session.kind = kind
            done: list[float] = []

            async def one(sha: str) -> Any:
                body = await session.lookup("file", sha)
                done.append(time.monotonic())
                return body

            return list(await asyncio.gather(*(one(h) for h in hashes))), done

    return asyncio.run(main())


def test_two_livehunt_processes_and_a_burst_share_the_quota_without_a_429(
    vt_emulator: VirusTotalEmulator,
    limited: VirusTotalEmulator,
    vt_corpus: Corpus,
    tmp_path: Path,
) -> None:
    hashes = sorted(vt_corpus.files)[:30]
    reference = tmp_path / "unlimited"
    assert budget_worker.main(config(vt_emulator, reference, 0, 3, budget=False))["success"]
    expected_lookups, _ = lookups(resource(vt_emulator, "", quota_budget=False), hashes, "auto")

    budget_url = f"sqlite:///{tmp_path / 'budget.db'}"
    shared = tmp_path / "budgeted"
    first = start_worker(config(limited, shared, 0, 1, budget_url=budget_url))
    second = start_worker(config(limited, shared, 2, 3, budget_url=budget_url))
    answers, _ = lookups(resource(limited, budget_url), hashes, "interactive")
    results = [finish(first), finish(second)]

    assert all(r["success"] for r in results), results
    assert limited.stats()
    assert sum(limited.count(endpoint, 429) for endpoint in limited.stats()) == 0
    assert answers == expected_lookups
    assert bundles(shared, range(4)) == bundles(reference, range(4))
    assert sum(r["wait"] for r in results) > 0  # the quota was the bottleneck


def test_enrichment_during_a_backfill_is_answered_before_the_backfill_goes_on(
    limited: VirusTotalEmulator, vt_corpus: Corpus, tmp_path: Path
) -> None:
    budget_url = f"sqlite:///{tmp_path / 'budget.db'}"
    backfill = start_worker(
        config(limited, tmp_path / "s", 0, 5, budget_url=budget_url, backfill=True)
    )
    time.sleep(6.0)  # the backfill is spending the quota (it needs about 170 calls)
    asked = time.monotonic()
    answers, done = lookups(
        resource(limited, budget_url), sorted(vt_corpus.files)[:30], "interactive"
    )
    answered = max(done)
    result = finish(backfill)
    ended = time.monotonic()

    assert result["success"], result
    assert all(answer is not None for answer in answers)
    # 30 calls at 20 per 1.5 s minute: about two minutes, not a wait behind the backfill.
    assert answered - asked < 6.0
    assert ended - answered > 3.0  # the backfill still had calls to make after them
    # The run's kind came from its dagster/backfill tag, the lookups' from their session.
    usage = resource(limited, budget_url).budget().usage()  # type: ignore[union-attr]
    by_kind = usage["by_kind_month"]  # a scaled day lasts 36 minutes: the month holds it all
    assert by_kind["interactive"] == 30 and by_kind["backfill"] > 100
    assert sum(limited.count(endpoint, 429) for endpoint in limited.stats()) == 0


def test_a_spent_day_fails_clearly_and_loses_nothing(
    vt_emulator: VirusTotalEmulator, tmp_path: Path
) -> None:
    budget_url = f"sqlite:///{tmp_path / 'budget.db'}"
    noon = window("day", time.time())[0] + 43200  # far from the reset, whenever this runs
    settings = config(
        vt_emulator, tmp_path / "s", 0, 0, budget_url=budget_url, scale=1.0, offset=0.0
    )
    settings["offset"] = noon - time.time()
    spent = budget_worker.main({**settings, "per_minute": 0, "per_day": 10})
    assert not spent["success"]
    message = " ".join(spent["errors"])
    assert "daily quota spent" in message and "retry after 00:00 UTC" in message
    assert not vt_emulator.deleted_notifications

    # The same window again once the day's budget allows it (re-execution): complete.
    again = budget_worker.main({**settings, "per_minute": 0, "per_day": 0})
    assert again["success"], again
    reference = tmp_path / "reference"
    assert budget_worker.main(config(vt_emulator, reference, 0, 0, budget=False))["success"]
    assert bundles(tmp_path / "s", range(1)) == bundles(reference, range(1))


def test_another_client_on_the_key_slows_the_pipeline_instead_of_failing_it(
    vt_emulator: VirusTotalEmulator,
    limited: VirusTotalEmulator,
    tmp_path: Path,
) -> None:
    reference = tmp_path / "reference"
    assert budget_worker.main(config(vt_emulator, reference, 0, 1, budget=False))["success"]
    stop = threading.Event()

    def other_client() -> None:
        # 14 of every (scaled) minute's 20: a run's burst always meets the other client,
        # however slow or fast the host runs it.
        while not stop.is_set():
            limited.spend(PREMIUM_KEY, 14)
            stop.wait(1.5)

    spender = threading.Thread(target=other_client, daemon=True)
    spender.start()
    try:
        result = budget_worker.main(
            config(limited, tmp_path / "s", 0, 1, budget_url=f"sqlite:///{tmp_path / 'b.db'}")
        )
    finally:
        stop.set()
        spender.join()
    assert result["success"], result
    # The other client made itself felt: VT refused calls (the budget then shrank and the calls
    # waited for the next window), or the budget held calls back - never a failed run.
    refused = sum(limited.count(endpoint, 429) for endpoint in limited.stats())
    assert refused > 0 or result["wait"] > 0, result
    assert bundles(tmp_path / "s", range(2)) == bundles(reference, range(2))


def test_a_persistent_429_still_fails_after_its_attempts(
    vt_emulator: VirusTotalEmulator, tmp_path: Path
) -> None:
    vt_emulator.set_faults("file:429:1.0")
    vt = resource(vt_emulator, f"sqlite:///{tmp_path / 'b.db'}", max_attempts=3)
    with pytest.raises(VirusTotalError, match="after 3 attempts"):
        lookups(vt, ["0" * 64], "interactive")


def test_the_quota_sensor_records_the_keys_usage_and_the_budgets_counts(
    limited: VirusTotalEmulator, vt_corpus: Corpus, tmp_path: Path
) -> None:
    budget_url = f"sqlite:///{tmp_path / 'budget.db'}"
    lookups(resource(limited, budget_url), sorted(vt_corpus.files)[:5], "interactive")
    limited.spend(PREMIUM_KEY, 3)  # another tool on the key: VT sees it, the budget does not
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance, resources={"virustotal": resource(limited, budget_url)}
        )
        result = virustotal_quota_sensor(context)
    assert isinstance(result, dg.SensorResult) and not result.run_requests
    (event,) = result.asset_events
    assert event.asset_key == dg.AssetKey("virustotal_quota")
    metadata = event.metadata
    # Plotted: what was spent, by this deployment and on the key (VT also counts the other tool)
    assert metadata["calls_today"].value == 5
    assert metadata["vt_key_used_today"].value == 8
    # The limit in force, with where it comes from, never a bare 0
    quota = {r.data["period"]: r.data for r in metadata["quota"].value.records}
    assert quota["this minute"]["limit"] == str(PER_MINUTE)
    assert quota["this hour"]["limit"] == str(PER_MINUTE * 60)
    assert quota["this hour"]["limit_from"] == "VirusTotal's quota for the key"
    # Work and jobs named as an operator knows them, no Dagster internals
    work = {r.data["work"]: r.data["today"] for r in metadata["calls_by_work"].value.records}
    assert work["enrichment clicks"] == 5 and work["backfills"] == 0
    assert set(work) == {
        "enrichment clicks",
        "playbooks",
        "auto-enrichment",
        "Livehunt windows",
        "backfills",
    }
    assert not any("__" in name for name in metadata)
    assert all(
        isinstance(value, dg.IntMetadataValue | dg.TableMetadataValue)
        for value in metadata.values()
    )
    # The tick says what it recorded (Dagster shows such a runless tick as skipped)
    assert result.skip_reason is not None
    assert result.skip_reason.skip_message.startswith("Recorded virustotal_quota: VT calls 5 today")
