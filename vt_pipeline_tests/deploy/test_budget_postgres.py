"""Two Livehunt runs in two processes share one VirusTotal budget kept in the deployment's
PostgreSQL (found from DAGSTER_POSTGRES_*, as every process of deploy/ has them): together they
stay under the key's quota (no 429) and produce what unlimited runs produce."""

from __future__ import annotations

from pathlib import Path

import pytest

from vt_pipeline.emulators.postgres import PostgreSQL
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.virustotal.budget import BUDGET_URL_ENV
from vt_pipeline_tests.virustotal import budget_worker
from vt_pipeline_tests.virustotal.test_budget_pipeline import (  # noqa: F401 (fixture)
    bundles,
    config,
    finish,
    limited,
    start_worker,
)

pytestmark = pytest.mark.integration


def test_two_runs_share_the_budget_in_postgresql(
    vt_emulator: VirusTotalEmulator,
    limited: VirusTotalEmulator,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference = tmp_path / "unlimited"
    assert budget_worker.main(config(vt_emulator, reference, 0, 3, budget=False))["success"]

    with PostgreSQL() as postgres:
        monkeypatch.delenv(BUDGET_URL_ENV, raising=False)
        for name, value in postgres.dagster_env().items():
            monkeypatch.setenv(name, value)  # what the workers inherit
        shared = tmp_path / "budgeted"
        first = start_worker(config(limited, shared, 0, 1))
        second = start_worker(config(limited, shared, 2, 3))
        results = [finish(first), finish(second)]

        assert all(r["success"] for r in results), results
        assert sum(limited.count(endpoint, 429) for endpoint in limited.stats()) == 0
        assert bundles(shared, range(4)) == bundles(reference, range(4))
        assert sum(r["wait"] for r in results) > 0  # the shared quota was the bottleneck
        # The budget lives in PostgreSQL: both runs' calls are counted there.
        connection = postgres.connect()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT sum(count) FROM vt_pipeline_budget_counters WHERE period = 'day'"
            )
            (counted,) = cursor.fetchone()
        connection.close()
        assert counted == sum(r["vt_calls"] for r in results) > 0
