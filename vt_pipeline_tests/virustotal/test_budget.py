"""The quota budget itself: real SQLite files shared by several Budget objects (as processes
share them), a scaled clock (a "minute" of about a second), no VirusTotal."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from vt_pipeline.virustotal.budget import (
    CLAIMS,
    COUNTERS,
    Budget,
    BudgetClock,
    BudgetExhausted,
    Limits,
    default_url,
    key_id,
    kind_from_tags,
    window,
)

KEY = "secret-api-key-0123456789"
SCALE = 60.0  # one budget minute per real second


def budget(tmp_path: Path, limits: Limits, clock: BudgetClock | None = None, **kw: float) -> Budget:
    return Budget(
        f"sqlite:///{tmp_path / 'budget.db'}",
        KEY,
        limits,
        clock=clock or BudgetClock(SCALE),
        boundary_margin=0.05,
        **kw,
    )


def at_minute_start(clock: BudgetClock) -> None:
    """Sleep until a fresh budget minute begins (so a test's grants share one window)."""
    now = clock.now()
    time.sleep(clock.real(window("minute", now)[1] - now) + 0.02)


def grants_per_minute(moments: list[float]) -> dict[int, int]:
    """How many grants each budget minute saw, by the minute's start."""
    per_minute: dict[int, int] = {}
    for moment in moments:
        start = window("minute", moment)[0]
        per_minute[start] = per_minute.get(start, 0) + 1
    return per_minute


def test_kind_comes_from_the_run_tags() -> None:
    assert kind_from_tags({"vt_pipeline/kind": "interactive"}) == "interactive"
    assert kind_from_tags({"vt_pipeline/kind": "auto,playbook"}) == "playbook"
    assert kind_from_tags({"dagster/backfill": "abc"}) == "backfill"
    assert kind_from_tags({}) == "livehunt"


def test_store_location_follows_the_deployment() -> None:
    assert default_url({"VT_PIPELINE_BUDGET_URL": "sqlite:////x/b.db"}) == "sqlite:////x/b.db"
    postgres = default_url(
        {
            "DAGSTER_POSTGRES_HOSTNAME": "db",
            "DAGSTER_POSTGRES_USER": "dagster",
            "DAGSTER_POSTGRES_PASSWORD": "pw",
            "DAGSTER_POSTGRES_DB": "dagster",
        }
    )
    assert postgres == "postgresql://dagster:pw@db:5432/dagster"
    assert default_url({"DAGSTER_HOME": "/opt/dagster"}) == (
        "sqlite:////opt/dagster/vt_pipeline_budget.db"
    )


def test_two_budgets_on_one_store_never_grant_more_than_the_minute(tmp_path: Path) -> None:
    clock = BudgetClock(SCALE)
    first, second = (budget(tmp_path, Limits(per_minute=5), clock) for _ in range(2))
    at_minute_start(clock)

    async def grab(b: Budget, n: int) -> list[float]:
        granted = []
        for _ in range(n):
            await b.acquire("livehunt")
            granted.append(clock.now())
        return granted

    async def main() -> list[float]:
        a, b = await asyncio.gather(grab(first, 6), grab(second, 6))
        return a + b

    moments = asyncio.run(main())
    per_minute = grants_per_minute(moments)
    assert max(per_minute.values()) <= 5
    assert len(per_minute) >= 3  # 12 grants at 5 a minute took three minutes
    assert first.usage()["by_kind"] == {"livehunt": 12}


def test_a_higher_priority_waiter_goes_first(tmp_path: Path) -> None:
    clock = BudgetClock(SCALE / 2)  # a minute lasts 2 s
    backfill, interactive = (budget(tmp_path, Limits(per_minute=2), clock) for _ in range(2))
    at_minute_start(clock)
    order: list[str] = []

    async def take(b: Budget, kind: str, n: int, after: int = 0) -> None:
        """`n` concurrent calls, as a run's tasks make them, once `after` calls were granted."""
        while len(order) < after:  # arrive while the backfill waits, however loaded the host
            await asyncio.sleep(0.01)

        async def one() -> None:
            await b.acquire(kind)
            order.append(kind)

        await asyncio.gather(*(one() for _ in range(n)))

    async def main() -> None:
        await asyncio.gather(
            take(backfill, "backfill", 6), take(interactive, "interactive", 3, after=2)
        )

    asyncio.run(main())
    # The backfill spent the first minute; the interactive calls, arriving while it waited,
    # took the whole next minute and the first unit of the one after, before any further
    # backfill call. Read from the store's per-kind counts of each minute: the order in which
    # two calls granted in the same instant resume their coroutines says nothing.
    with interactive.engine.begin() as conn:
        rows = conn.execute(
            sa.select(COUNTERS.c.period, COUNTERS.c.start, COUNTERS.c.count).where(
                COUNTERS.c.period.like("minute/kind/%")
            )
        ).fetchall()
    minutes = sorted({start for _, start, _ in rows})
    per_minute = [
        {period.rsplit("/", 1)[1]: count for period, start, count in rows if start == minute}
        for minute in minutes
    ]
    assert per_minute[0] == {"backfill": 2}
    assert per_minute[1] == {"interactive": 2}
    assert per_minute[2] == {"interactive": 1, "backfill": 1}
    assert order.count("interactive") == 3 and order.count("backfill") == 6


def test_a_claim_of_a_dead_process_stops_counting(tmp_path: Path) -> None:
    b = budget(tmp_path, Limits(per_minute=100))
    with b.engine.begin() as conn:
        conn.execute(
            CLAIMS.insert().values(
                claim_id="dead", key_id=b.key, priority=0, kind="interactive", heartbeat=time.time()
            )
        )

    async def main() -> float:
        return await b.acquire("backfill")

    waited = asyncio.run(main())
    assert 3.0 < waited < 8.0  # held back by the live claim, then free once it went stale


def test_a_spent_day_fails_saying_when_it_resets(tmp_path: Path) -> None:
    b = budget(tmp_path, Limits(per_day=3), BudgetClock(1.0), max_reset_wait=300)
    noon = window("day", time.time())[0] + 43200

    async def main() -> None:
        for _ in range(4):
            await b.acquire("livehunt")

    b.clock = BudgetClock(1.0, offset=noon - time.time())
    with pytest.raises(BudgetExhausted) as raised:
        asyncio.run(main())
    message = str(raised.value)
    assert "daily quota spent" in message and "3 calls" in message
    assert "retry after 00:00 UTC" in message
    assert raised.value.resets_at.timestamp() == window("day", noon)[1]


def test_a_spent_day_close_to_midnight_is_waited_for(tmp_path: Path) -> None:
    almost = window("day", time.time())[1] - 3.0  # 3 s before midnight UTC
    clock = BudgetClock(1.0, offset=almost - time.time())
    b = budget(tmp_path, Limits(per_day=2), clock, max_reset_wait=300)

    async def main() -> float:
        await b.acquire("livehunt")
        await b.acquire("livehunt")
        return await b.acquire("livehunt")

    waited = asyncio.run(main())
    assert 1.5 < waited < 6.0
    assert b.usage()["used"]["day"] >= 1  # counted in the new day


def test_a_kind_share_caps_it_and_not_the_others(tmp_path: Path) -> None:
    noon = window("day", time.time())[0] + 43200
    clock = BudgetClock(1.0, offset=noon - time.time())
    b = budget(tmp_path, Limits(per_day=10, max_share={"backfill": 0.5}), clock)

    async def main() -> int:
        granted = 0
        try:
            for _ in range(10):
                await b.acquire("backfill")
                granted += 1
        except BudgetExhausted as exc:
            assert "50% share of backfill" in str(exc)
        for _ in range(5):
            await b.acquire("interactive")
        return granted

    assert asyncio.run(main()) == 5


def test_limits_come_from_overall_quotas_and_settings_only_lower_them(tmp_path: Path) -> None:
    b = budget(tmp_path, Limits(per_day=100, per_month=10**9))
    b.record_report(
        {
            "api_requests_hourly": {"user": {"allowed": 240, "used": 7}},
            "api_requests_daily": {"user": {"allowed": 500, "used": 42}},
            "api_requests_monthly": {"user": {"allowed": 15000, "used": 42}},
        }
    )
    usage = b.usage()
    assert usage["limits"] == {"minute": 4, "hour": 240, "day": 100, "month": 15000}
    assert b.report_is_fresh()


def test_the_store_never_holds_the_key(tmp_path: Path) -> None:
    b = budget(tmp_path, Limits(per_minute=5))
    asyncio.run(b.acquire("auto", job="vt_enrichment_job"))
    assert b.key == key_id(KEY) and KEY not in b.key
    raw = (tmp_path / "budget.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("budget.db-*")
    )
    assert KEY.encode() not in raw
    with b.engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from vt_pipeline_budget_counters")).scalar()
    assert b.usage()["by_job"] == {"vt_enrichment_job": 1}


class CountingBudget(Budget):
    """The real budget, counting its store transactions (one `_try` each)."""

    transactions = 0

    def _try(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        type(self).transactions += 1
        return super()._try(*args, **kwargs)  # type: ignore[arg-type]


def test_queued_calls_share_one_transaction_and_never_exceed_the_minute(tmp_path: Path) -> None:
    """40 calls of one run queued at once: the one polling asks for all of them, the store
    grants what the minute allows (10), and the rest wait for the next minutes. The counters
    hold exactly the 40 calls made: no unit is granted to nobody."""
    clock = BudgetClock(SCALE)
    shared = CountingBudget(
        f"sqlite:///{tmp_path / 'budget.db'}",
        KEY,
        Limits(per_minute=10),
        clock=clock,
        boundary_margin=0.05,
    )
    at_minute_start(clock)

    async def call() -> float:
        await shared.acquire("livehunt")
        return clock.now()

    async def main() -> list[float]:
        return await asyncio.gather(*(call() for _ in range(40)))

    CountingBudget.transactions = 0
    moments = asyncio.run(main())
    per_minute = grants_per_minute(moments)
    assert max(per_minute.values()) <= 10
    assert sum(per_minute.values()) == 40
    assert shared.usage()["by_kind"] == {"livehunt": 40}
    # one transaction per grant would be 40 plus the waits; a batch serves all queued callers
    waits = CountingBudget.transactions - len(per_minute)
    assert CountingBudget.transactions < 40, (CountingBudget.transactions, waits)
