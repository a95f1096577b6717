"""One VirusTotal quota budget for every run, sensor and process of a deployment.

VirusTotal counts a key's requests per minute, hour, UTC day and UTC month, and answers 429 past
a quota. Each run backing off on its own 429s lets a backfill starve enrichment and wastes the
calls it retries, so every call takes a unit of budget here BEFORE it is made:

- State lives in SQL (SQLAlchemy Core, portable SQLite/PostgreSQL): one row per key (identified
  by a hash of the API key, never the key) that every grant locks for a short transaction
  (`BEGIN IMMEDIATE` on SQLite, `SELECT ... FOR UPDATE` on PostgreSQL), counters per window,
  and the claims of callers waiting for budget. Dagster's pools bound concurrency, not rate,
  so they cannot be the budget.
- Limits: the configured ones (a setting only lowers a limit), else what
  `/users/{key}/overall_quotas` reports (hourly, daily, monthly; per minute: the hourly / 60,
  which is a public key's 4 per minute). The usage VT reports is a floor of the own counts, so
  other tools on the key are accounted for.
- Priority: a caller waits while a live claim of a higher priority waits for the same key
  (interactive/playbook > auto > Livehunt > backfill). A claim whose process died stops counting
  when its heartbeat is older than `CLAIM_TTL_SECONDS`.
- A grant near the end of a window also counts in the next one: a call that arrives at VT after
  the window turned must not overrun it.
- Day or month spent: wait for the reset when it is at most `max_reset_wait` away, else raise
  `BudgetExhausted`, whose message says when the quota resets (UTC).
- A 429 despite the budget (another client on the key): `shrink` asks which quota VT refused
  for, from the usage `overall_quotas` reports, and holds calls back for that window only; see
  its docstring.

Time is a `BudgetClock`: tests and benchmarks scale it (a "minute" of 2 s) and shift it (just
before midnight UTC) without waiting real minutes; the emulator takes the same clock.
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

BUDGET_URL_ENV = "VT_PIPELINE_BUDGET_URL"
BUDGET_FILE = "vt_pipeline_budget.db"
PERIODS = ("minute", "hour", "day", "month")
# Lower number = served first. A playbook step is an analyst's automation: as urgent as a click.
PRIORITIES = {"interactive": 0, "playbook": 0, "auto": 1, "livehunt": 2, "backfill": 3}
KINDS = tuple(PRIORITIES)
KIND_TAG = "vt_pipeline/kind"  # set by the enrichment sensor on its runs
BACKFILL_TAG = "dagster/backfill"
CLAIM_TTL_SECONDS = 5.0  # real seconds: a waiting claim of a dead process stops counting
HEARTBEAT_SECONDS = 0.5  # real seconds between two polls of a waiting caller
REPORT_TTL_SECONDS = 3600.0  # real seconds an overall_quotas reading is reused
SHRINK_SECONDS = 120.0  # clock seconds a 429 of the per-minute rate keeps the limit lowered
# A 429 never lowers the per-minute limit below this (a public key's rate, VT's smallest quota)
SHRINK_FLOOR = 4
ANCHOR = 1_750_000_000.0  # where a scaled clock meets the real one (2025-06-15)
UNLIMITED = 1_000_000_000  # what VT reports as "allowed" for no limit (and above)
MAX_UNITS_PER_GRANT = 64  # units one transaction grants at most (for the callers queued)


class BudgetExhausted(Exception):
    """The day's (or month's) budget is spent and the reset is too far away to wait for."""

    def __init__(self, message: str, resets_at: datetime) -> None:
        super().__init__(message)
        self.resets_at = resets_at


@dataclass(frozen=True)
class BudgetClock:
    """The budget's time: `scale` clock seconds per real second since `ANCHOR` (so that every
    process of a test agrees), shifted by `offset` seconds."""

    scale: float = 1.0
    offset: float = 0.0

    def now(self) -> float:
        return ANCHOR + (time.time() - ANCHOR) * self.scale + self.offset

    def real(self, seconds: float) -> float:
        """Real seconds that last `seconds` on this clock."""
        return seconds / self.scale


def key_id(api_key: str) -> str:
    """How the budget names a key: a hash, so that the store never holds the key."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


def kind_from_tags(tags: Mapping[str, str]) -> str:
    """The kind of work of a run: the enrichment sensor's tag, a backfill, else Livehunt."""
    named = [k.strip() for k in str(tags.get(KIND_TAG, "")).split(",") if k.strip() in PRIORITIES]
    if named:
        return min(named, key=PRIORITIES.__getitem__)
    if tags.get(BACKFILL_TAG):
        return "backfill"
    return "livehunt"


def window(period: str, now: float) -> tuple[int, int]:
    """[start, end) of the window of `period` holding `now` (UTC days and calendar months)."""
    if period == "month":
        moment = datetime.fromtimestamp(now, UTC)
        start = calendar.timegm((moment.year, moment.month, 1, 0, 0, 0))
        days = calendar.monthrange(moment.year, moment.month)[1]
        return start, start + days * 86400
    length = {"minute": 60, "hour": 3600, "day": 86400}[period]
    start = int(now // length) * length
    return start, start + length


def utc_text(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M UTC")


ADJECTIVES = {"minute": "per-minute", "hour": "hourly", "day": "daily", "month": "monthly"}


def parse_report(data: Mapping[str, Any], now: float) -> dict[str, Any]:
    """`/users/{key}/overall_quotas` as the budget keeps it: per period (hour, day, month) the
    tightest `allowed` of user and group (0: none, or VT's "unlimited"), the highest `used`,
    and the start of the window (clock time) the figures belong to."""
    parsed: dict[str, Any] = {}
    for period, name in (("hour", "hourly"), ("day", "daily"), ("month", "monthly")):
        entry = data.get(f"api_requests_{name}")
        if not isinstance(entry, Mapping):
            continue
        allowed: list[int] = []
        used = 0
        for owner in ("user", "group"):
            item = entry.get(owner)
            if isinstance(item, Mapping):
                if isinstance(item.get("allowed"), int) and 0 < item["allowed"] < UNLIMITED:
                    allowed.append(item["allowed"])
                if isinstance(item.get("used"), int):
                    used = max(used, item["used"])
        parsed[period] = {
            "allowed": min(allowed) if allowed else 0,
            "used": used,
            "start": window(period, now)[0],
        }
    return parsed


def default_url(env: Mapping[str, str] | None = None, home: str | None = None) -> str:
    """Where the budget lives: VT_PIPELINE_BUDGET_URL, else the PostgreSQL of the Dagster
    instance (DAGSTER_POSTGRES_*), else an SQLite file in DAGSTER_HOME (or `home`)."""
    env = os.environ if env is None else env
    if env.get(BUDGET_URL_ENV, "").strip():
        return env[BUDGET_URL_ENV].strip()
    if env.get("DAGSTER_POSTGRES_HOSTNAME", "").strip():
        url = sa.engine.URL.create(
            "postgresql",
            username=env.get("DAGSTER_POSTGRES_USER") or None,
            password=env.get("DAGSTER_POSTGRES_PASSWORD") or None,
            host=env["DAGSTER_POSTGRES_HOSTNAME"].strip(),
            port=int(env.get("DAGSTER_POSTGRES_PORT") or 5432),
            database=env.get("DAGSTER_POSTGRES_DB") or "postgres",
        )
        return url.render_as_string(hide_password=False)
    directory = (env.get("DAGSTER_HOME") or "").strip() or home
    if not directory:
        return "sqlite://"  # this process only: nothing shared to reach
    return f"sqlite:///{Path(directory) / BUDGET_FILE}"


_meta = sa.MetaData()
KEYS = sa.Table(
    "vt_pipeline_budget_keys",
    _meta,
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("reported", sa.Text, nullable=False, default="{}"),  # overall_quotas, parsed
    sa.Column("reported_at", sa.Float, nullable=False, default=0.0),  # real time
    sa.Column("shrink_until", sa.Float, nullable=False, default=0.0),  # clock time
    sa.Column("shrink_minute", sa.BigInteger, nullable=False, default=0),
)
COUNTERS = sa.Table(
    "vt_pipeline_budget_counters",
    _meta,
    sa.Column("key_id", sa.String(64), primary_key=True),
    # "minute", "hour", "day", "month", or "day/kind/NAME", "day/job/NAME", "minute/kind/NAME"
    sa.Column("period", sa.String(255), primary_key=True),
    sa.Column("start", sa.BigInteger, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)
CLAIMS = sa.Table(
    "vt_pipeline_budget_claims",
    _meta,
    sa.Column("claim_id", sa.String(64), primary_key=True),
    sa.Column("key_id", sa.String(64), nullable=False, index=True),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),  # real time
)

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str) -> Engine:
    """One engine per URL and process, with the budget's tables created."""
    with _engines_lock:
        if url in _engines:
            return _engines[url]
        if url.startswith("sqlite"):
            engine = _sqlite_engine(url)
        else:
            engine = sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)
        for attempt in range(3):
            try:
                _meta.create_all(engine, checkfirst=True)
                break
            except sa.exc.DBAPIError:  # another process created them at the same moment
                if attempt == 2:
                    raise
                time.sleep(0.2)
        _engines[url] = engine
        return engine


def _sqlite_engine(url: str) -> Engine:
    """Transactions that take the write lock at BEGIN (no lock upgrade deadlocks), WAL."""
    if url in ("sqlite://", "sqlite:///:memory:"):
        engine = sa.create_engine(
            "sqlite://", poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 60000")
        if engine.url.database:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@dataclass
class Limits:
    """Configured limits (0 = take what VT reports) and per-kind shares (of day and month)."""

    per_minute: int = 0
    per_day: int = 0
    per_month: int = 0
    max_share: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Throttle:
    """What `shrink` made of a 429: the quota VT refused for and how long calls are held back."""

    period: str  # "minute" (the rate), "hour", "day" or "month": the quota VT refused for
    until: float  # clock time: the end of that window, when calls go on
    wait: float  # real seconds from the 429 to `until`
    limit: int  # calls per minute for the next SHRINK_SECONDS ("minute"), else VT's quota
    gives_up: bool = False  # day or month: the reset is too far to wait for (BudgetExhausted)


@dataclass
class _Attempt:
    granted: int  # units granted (0: none)
    valid_until: float = 0.0  # clock time: the end of the minute the units were counted in
    wait: float = 0.0  # clock seconds
    exhausted: str = ""  # the message when waiting is not worth it
    resets_at: float = 0.0
    claimed: bool = False
    why: str = ""  # what the caller waits for, in words (no grant)


class Budget:
    """The budget of one key in one store; `acquire` before every counted VirusTotal call."""

    def __init__(
        self,
        url: str,
        api_key: str,
        limits: Limits,
        clock: BudgetClock | None = None,
        max_reset_wait: float = 300.0,
        boundary_margin: float = 1.0,
    ) -> None:
        self.engine = engine_for(url)
        self.key = key_id(api_key)
        self.limits = limits
        self.clock = clock or BudgetClock()
        self.max_reset_wait = max_reset_wait  # clock seconds
        self.boundary_margin = boundary_margin  # real seconds
        self._claim = uuid.uuid4().hex  # this Budget's waiting callers, as one claim
        self._claimed = False
        self._waiting = 0
        # Units granted in one transaction for the callers queued behind the one that asked,
        # usable until `_credit_expiry` (clock time: the end of the minute they were counted in).
        self._credits = 0
        self._credit_expiry = 0.0
        self._turn: asyncio.Lock | None = None
        self._turn_loop: asyncio.AbstractEventLoop | None = None
        # What the polling caller waits for: (why, real seconds, real time it was learnt)
        self._why: tuple[str, float, float] | None = None
        self._ensure_key()

    # -- overall_quotas ------------------------------------------------------------------------

    def report_is_fresh(self) -> bool:
        with self.engine.connect() as conn:
            at = conn.execute(
                sa.select(KEYS.c.reported_at).where(KEYS.c.key_id == self.key)
            ).scalar()
        return bool(at) and time.time() - float(at) < REPORT_TTL_SECONDS

    def record_report(self, data: Mapping[str, Any]) -> None:
        """Keep what `/users/{key}/overall_quotas` says: limits, and usage as a floor."""
        parsed = parse_report(data, self.clock.now())
        with self.engine.begin() as conn:
            conn.execute(
                KEYS.update()
                .where(KEYS.c.key_id == self.key)
                .values(reported=json.dumps(parsed), reported_at=time.time())
            )

    # -- acquiring -------------------------------------------------------------------------------

    async def acquire(self, kind: str, job: str = "") -> float:
        """Wait for a unit of budget and take it; the real seconds waited.

        The callers of one Budget (one run's session) queue here, so that one of them at a
        time polls the store; their claim stays while any of them waits, so that a lower
        priority cannot slip in between two of their calls. The one polling asks for a unit
        for every caller queued (at most `MAX_UNITS_PER_GRANT`), and the store grants as many
        as the limits allow in one transaction: a locking transaction per call serialized
        451 calls of a Livehunt run into a second of its 2.5. A unit whose caller is cancelled
        before using it stays counted (never more than VT's quota, at most the callers queued)
        and expires with the minute it was counted in.
        Raises BudgetExhausted when the day or month is spent and resets too late to wait.
        """
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        if self._turn is None or self._turn_loop is not loop:
            self._turn, self._turn_loop = asyncio.Lock(), loop
        self._waiting += 1
        try:
            async with self._turn:
                if self._credits and self.clock.now() < self._credit_expiry:
                    self._credits -= 1
                    return time.monotonic() - started
                self._credits = 0
                while True:
                    want = min(self._waiting, MAX_UNITS_PER_GRANT)
                    attempt = await asyncio.to_thread(
                        self._try, kind, job, self._claim, self._waiting > 1, want
                    )
                    self._claimed = self._claimed or attempt.claimed
                    if attempt.granted:
                        self._why = None
                        self._credits = attempt.granted - 1
                        self._credit_expiry = attempt.valid_until
                        return time.monotonic() - started
                    if attempt.exhausted:
                        self._why = None
                        raise BudgetExhausted(
                            attempt.exhausted, datetime.fromtimestamp(attempt.resets_at, UTC)
                        )
                    self._why = (attempt.why, self.clock.real(attempt.wait), time.time())
                    pause = self.clock.real(attempt.wait) + random.uniform(0.0, 0.02)
                    await asyncio.sleep(max(0.005, min(pause, HEARTBEAT_SECONDS)))
        finally:
            self._waiting -= 1
            if not self._waiting and self._claimed:
                self._claimed = False
                await asyncio.to_thread(self._release, self._claim)

    def waiting(self) -> tuple[str, float] | None:
        """What this Budget's callers wait for now, in words, and the real seconds left of the
        wait the store announced; None when nobody waits (or the wait is not known yet)."""
        why = self._why
        if why is None:
            return None
        text, seconds, since = why
        return text, max(0.0, seconds - (time.time() - since))

    def shrink(self, report: Mapping[str, Any] | None = None) -> Throttle:
        """VT said 429 despite the budget: another client spends the key. Hold calls back for
        the quota VT refused for, and no longer; what was decided is returned.

        VT answers 429 (QuotaExceededError, or TooManyRequestsError for a burst) for any of
        its quotas - per minute, hour, day, month - and does not say which. `report`, the
        `/users/{key}/overall_quotas` read just after the 429, does (used >= allowed):
        - month, day or hour spent: the key's usage VT reported is already recorded as the
          floor of that window's count, so the budget holds calls until the window resets
          (a day or month further than `max_reset_wait` away fails them with BudgetExhausted,
          saying when it resets). The per-minute limit is left alone.
        - none spent (or VT did not say): it is the per-minute rate. Other clients' calls are
          invisible to the budget, so the rest of this minute counts as spent, and for the
          next `SHRINK_SECONDS` (2 minutes) the per-minute limit is half the configured or
          derived one, never below `SHRINK_FLOOR`, then recovers on its own. It is never
          derived from what this minute spent: one 429 at idle, after 1 call, once lowered a
          key of 4 a minute to 1 a minute for 10 minutes (5 files took 360 s instead of 13).
          A 429 while lowered does not lower it further: the rate left is half or more.
        """
        now = self.clock.now()
        parsed = parse_report(report, now) if report else {}
        for period in ("month", "day", "hour"):
            entry = parsed.get(period) or {}
            if entry.get("allowed") and entry.get("used", 0) >= entry["allowed"]:
                end = window(period, now)[1]
                far = period in ("day", "month") and end - now > self.max_reset_wait
                return Throttle(
                    period, end, self.clock.real(end - now), int(entry["allowed"]), gives_up=far
                )
        start, end = window("minute", now)
        with self.engine.begin() as conn:
            row = self._lock(conn)
            configured = self._effective(row, now, shrunk=False)["minute"]
            spent = self._count(conn, "minute", start)
            lowered = max(SHRINK_FLOOR, (configured or spent) // 2)
            if configured:
                lowered = min(lowered, configured)  # a 429 never raises a limit
            conn.execute(
                KEYS.update()
                .where(KEYS.c.key_id == self.key)
                .values(shrink_until=now + SHRINK_SECONDS, shrink_minute=lowered)
            )
            self._add(conn, "minute", start, max(0, lowered - spent))
        return Throttle("minute", end, self.clock.real(end - now), lowered)

    def usage(self) -> dict[str, Any]:
        """The deployment's own counts now: per period, and per kind and job today."""
        now = self.clock.now()
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(KEYS).where(KEYS.c.key_id == self.key)).mappings().one()
            limits = self._effective(row, now)
            out: dict[str, Any] = {
                "limits": limits,
                "used": {p: self._count(conn, p, window(p, now)[0]) for p in PERIODS},
                "last_minute": self._count(conn, "minute", window("minute", now)[0] - 60),
                "reported": json.loads(row["reported"] or "{}"),
            }
            month = conn.execute(
                sa.select(COUNTERS.c.period, COUNTERS.c.count).where(
                    COUNTERS.c.key_id == self.key,
                    COUNTERS.c.start == window("month", now)[0],
                    COUNTERS.c.period.like("month/kind/%"),
                )
            ).all()
            out["by_kind_month"] = {p.split("/", 2)[2]: c for p, c in month}
            day = window("day", now)[0]
            rows = conn.execute(
                sa.select(COUNTERS.c.period, COUNTERS.c.count).where(
                    COUNTERS.c.key_id == self.key,
                    COUNTERS.c.start == day,
                    COUNTERS.c.period.like("day/%"),
                )
            ).all()
        out["by_kind"] = {p.split("/", 2)[2]: c for p, c in rows if p.startswith("day/kind/")}
        out["by_job"] = {p.split("/", 2)[2]: c for p, c in rows if p.startswith("day/job/")}
        return out

    # -- transactions ----------------------------------------------------------------------------

    def _ensure_key(self) -> None:
        with self.engine.connect() as conn:
            exists = conn.execute(sa.select(KEYS.c.key_id).where(KEYS.c.key_id == self.key)).first()
        if exists:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(KEYS.insert().values(key_id=self.key))
        except sa.exc.IntegrityError:
            pass  # another process inserted it first

    def _lock(self, conn: Connection) -> Mapping[str, Any]:
        """The key's row, locked until the transaction ends (SQLite: BEGIN IMMEDIATE did it)."""
        query = sa.select(KEYS).where(KEYS.c.key_id == self.key)
        if conn.dialect.name != "sqlite":
            query = query.with_for_update()
        return conn.execute(query).mappings().one()

    def _effective(self, row: Mapping[str, Any], now: float, shrunk: bool = True) -> dict[str, int]:
        """The limit of each period (0 = none): configured ones only lower what VT reports;
        `shrunk`: with the per-minute limit a recent 429 lowered."""
        reported = json.loads(row["reported"] or "{}")

        def lowest(*values: int) -> int:
            return min((v for v in values if v), default=0)

        hour = int((reported.get("hour") or {}).get("allowed") or 0)
        limits = {
            "minute": lowest(self.limits.per_minute, hour // 60 if hour else 0),
            "hour": hour,
            "day": lowest(self.limits.per_day, int((reported.get("day") or {}).get("allowed", 0))),
            "month": lowest(
                self.limits.per_month, int((reported.get("month") or {}).get("allowed", 0))
            ),
        }
        if shrunk and float(row["shrink_until"] or 0) > now and row["shrink_minute"]:
            limits["minute"] = lowest(limits["minute"], int(row["shrink_minute"]))
        return limits

    def _floor(self, row: Mapping[str, Any], period: str, start: int) -> int:
        """The usage VT reported for this very window (other tools on the key count too)."""
        reported = (json.loads(row["reported"] or "{}")).get(period) or {}
        return int(reported.get("used", 0)) if reported.get("start") == start else 0

    def _count(self, conn: Connection, period: str, start: int) -> int:
        value = conn.execute(
            sa.select(COUNTERS.c.count).where(
                COUNTERS.c.key_id == self.key,
                COUNTERS.c.period == period,
                COUNTERS.c.start == start,
            )
        ).scalar()
        return int(value or 0)

    def _add(self, conn: Connection, period: str, start: int, amount: int = 1) -> None:
        if amount <= 0:
            return
        done = conn.execute(
            COUNTERS.update()
            .where(
                COUNTERS.c.key_id == self.key,
                COUNTERS.c.period == period,
                COUNTERS.c.start == start,
            )
            .values(count=COUNTERS.c.count + amount)
        )
        if not done.rowcount:
            conn.execute(
                COUNTERS.insert().values(key_id=self.key, period=period, start=start, count=amount)
            )

    def _try(self, kind: str, job: str, claim: str, more: bool = False, want: int = 1) -> _Attempt:
        """One look at the budget for up to `want` units; `more`: other callers of this Budget
        wait after this one."""
        priority = PRIORITIES.get(kind, PRIORITIES["livehunt"])
        with self.engine.begin() as conn:
            row = self._lock(conn)
            now, real_now = self.clock.now(), time.time()
            limits = self._effective(row, now)
            blocked: list[tuple[str, float]] = []  # (period, its end)
            units = max(1, want)
            for period in PERIODS:
                start, end = window(period, now)
                used = max(self._count(conn, period, start), self._floor(row, period, start))
                if limits[period] and used >= limits[period]:
                    blocked.append((period, end))
                elif limits[period]:
                    units = min(units, limits[period] - used)
            share = self.limits.max_share.get(kind, 1.0)
            share_blocked: list[tuple[str, float]] = []
            if share < 1.0:
                for period in ("day", "month"):
                    start, end = window(period, now)
                    cap = int(limits[period] * share) if limits[period] else 0
                    used = self._count(conn, f"{period}/kind/{kind}", start) if cap else 0
                    if cap and used >= cap:
                        share_blocked.append((period, end))
                    elif cap:
                        units = min(units, cap - used)
            higher = conn.execute(
                sa.select(sa.func.count())
                .select_from(CLAIMS)
                .where(
                    CLAIMS.c.key_id == self.key,
                    CLAIMS.c.priority < priority,
                    CLAIMS.c.heartbeat > real_now - CLAIM_TTL_SECONDS,
                    CLAIMS.c.claim_id != claim,
                )
            ).scalar()
            if not blocked and not share_blocked and not higher:
                self._grant(conn, now, kind, job, units)
                if more:  # the claim goes on for the callers behind this one
                    self._heartbeat(conn, claim, priority, kind, real_now)
                else:
                    conn.execute(CLAIMS.delete().where(CLAIMS.c.claim_id == claim))
                if random.random() < 0.01:
                    self._sweep(conn, now, real_now)
                return _Attempt(units, valid_until=window("minute", now)[1], claimed=more)
            waits = [end for _, end in blocked + share_blocked]
            wait = max(waits) - now if waits else HEARTBEAT_SECONDS * self.clock.scale
            long = [(p, end) for p, end in blocked + share_blocked if p in ("day", "month")]
            if long and max(end for _, end in long) - now > self.max_reset_wait:
                period, end = max(long, key=lambda item: item[1])
                if (period, end) in blocked:
                    what = f"the key's {limits[period]} calls"
                else:
                    what = f"the {share:.0%} share of {kind} work"
                adjective = {"day": "daily", "month": "monthly"}[period]
                return _Attempt(
                    0,
                    exhausted=f"VirusTotal {adjective} quota spent ({what}); it resets at "
                    f"{utc_text(end)}: retry after {utc_text(end)[11:]}",
                    resets_at=end,
                )
            if blocked:
                period, _ = max(blocked, key=lambda item: item[1])
                why = f"the {ADJECTIVES[period]} quota of {limits[period]} calls is spent"
            elif share_blocked:
                period, _ = max(share_blocked, key=lambda item: item[1])
                why = f"{kind} work spent its {share:.0%} share of the {ADJECTIVES[period]} quota"
            else:
                why = "work of a higher priority (interactive enrichment first) goes first"
            if share_blocked and not blocked and not higher:
                # Only this kind's share is spent: no claim, other kinds must not wait for it.
                return _Attempt(0, wait=wait, why=why)
            self._heartbeat(conn, claim, priority, kind, real_now)
            return _Attempt(0, wait=wait, claimed=True, why=why)

    def _grant(self, conn: Connection, now: float, kind: str, job: str, units: int = 1) -> None:
        margin = self.boundary_margin * self.clock.scale
        for period in PERIODS:
            start, end = window(period, now)
            self._add(conn, period, start, units)
            if end - now <= margin:  # may reach VT after the turn: count it there too
                self._add(conn, period, end, units)
        self._add(conn, f"minute/kind/{kind}", window("minute", now)[0], units)
        for period in ("day", "month"):
            self._add(conn, f"{period}/kind/{kind}", window(period, now)[0], units)
        if job:
            self._add(conn, f"day/job/{job[:200]}", window("day", now)[0], units)

    def _heartbeat(
        self, conn: Connection, claim: str, priority: int, kind: str, real_now: float
    ) -> None:
        done = conn.execute(
            CLAIMS.update().where(CLAIMS.c.claim_id == claim).values(heartbeat=real_now)
        )
        if not done.rowcount:
            conn.execute(
                CLAIMS.insert().values(
                    claim_id=claim,
                    key_id=self.key,
                    priority=priority,
                    kind=kind,
                    heartbeat=real_now,
                )
            )

    def _release(self, claim: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(CLAIMS.delete().where(CLAIMS.c.claim_id == claim))

    def _sweep(self, conn: Connection, now: float, real_now: float) -> None:
        """Forget windows nobody reads any more, and claims long dead."""
        keep = {"minute": 7200, "hour": 3 * 86400, "day": 62 * 86400}
        for prefix, age in keep.items():
            conn.execute(
                COUNTERS.delete().where(
                    COUNTERS.c.key_id == self.key,
                    COUNTERS.c.period.like(f"{prefix}%"),
                    COUNTERS.c.start < now - age,
                )
            )
        conn.execute(CLAIMS.delete().where(CLAIMS.c.heartbeat < real_now - 60 * CLAIM_TTL_SECONDS))
