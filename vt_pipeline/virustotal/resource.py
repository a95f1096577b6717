"""VirusTotal, through vt-py: retries, concurrency and call accounting in one place.

`VirusTotalResource` is the Dagster resource (configuration only). Inside a run, an asset opens
`async with resource.session() as vt:` and gets a `VirusTotalSession`, which owns one vt-py client
created inside the running event loop (vt-py's sync API cannot be used there) and which:
- retries 429 (quota), 5xx, timeouts, dropped connections, truncated bodies and malformed JSON
  with exponential backoff and full jitter, then fails with a clear `VirusTotalError`; it never
  gives up silently and never returns partial data. A call stops retrying after
  `max_attempts`, or once it has been failing for `retry_deadline_seconds` (waits for quota
  budget excluded: they are pacing, not failure), so that a VT answer that keeps failing ends
  its request in error within a bounded time instead of holding it for many minutes;
- tells the caller why a call waits (a 429, a retry after a failure, a long wait for budget)
  through the session's `on_wait` callback, with the call's `call_scope`, so that the work it
  belongs to can say so while it waits;
- fails at once, with a message that says what to do, on errors that retrying cannot fix
  (403 Livehunt without a premium key, 401 bad key, 404);
- bounds concurrent requests with a semaphore;
- counts every HTTP attempt per endpoint (quota is money: the counts become asset metadata);
- takes a unit of the deployment's quota budget (`budget.py`) before every attempt VT counts,
  waiting for it in the priority of the run's kind of work, and reports the time waited.

Errors and logs never contain the API key: it only ever travels in the `x-apikey` header.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import random
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import dagster as dg
import sqlalchemy as sa
import vt
from pydantic import Field, PrivateAttr, field_validator

from vt_pipeline.config import http_url, invalid, is_env_reference
from vt_pipeline.storage.store import ArtifactHashMismatch, ArtifactStore, ArtifactTooLarge
from vt_pipeline.virustotal import objects as n
from vt_pipeline.virustotal.budget import (
    ADJECTIVES,
    BUDGET_URL_ENV,
    HEARTBEAT_SECONDS,
    KINDS,
    Budget,
    BudgetClock,
    BudgetExhausted,
    Limits,
    Throttle,
    default_url,
    kind_from_tags,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://www.virustotal.com"
IOC_STREAM_PAGE_SIZE = 40  # the API's maximum
MAX_DIRECT_UPLOAD = 32 * 1024 * 1024  # POST /files; larger files go to /files/upload_url
MAX_UPLOAD = 650 * 1024 * 1024  # VirusTotal's limit through the upload URL
# VT returns the Google Threat Intelligence assessment (gti_assessment) only to requests that name
# their tool in this header, as upstream's connector does.
TOOL_HEADER = {"x-tool": "vt_pipeline"}
# The VT object type of each lookup, and its endpoint
LOOKUP_PATHS = {
    "file": "/files/{}",
    "ip_address": "/ip_addresses/{}",
    "domain": "/domains/{}",
    "url": "/urls/{}",
}
DEFAULT_CONCURRENCY = 32
API_URL_ENV = "VIRUSTOTAL_API_URL"
RETRYABLE_CODES = frozenset(
    {
        "QuotaExceededError",
        "TooManyRequestsError",
        "TransientError",
        "ServerError",
        "DeadlineExceededError",
    }
)
QUOTA_CODES = frozenset({"QuotaExceededError", "TooManyRequestsError"})
RETRY_DEADLINE_ENV = "VIRUSTOTAL_RETRY_DEADLINE_SECONDS"
# A wait for quota budget longer than this (real seconds) is announced through `on_wait`
WAIT_NOTICE_SECONDS = 5.0
NOTICE_DRAIN_SECONDS = 5.0  # how long a closing session lets async `on_wait` notices finish
# A retry's timeout is what is left of the retry deadline, but at least this (or the request
# timeout): a retry cut to a few milliseconds would fail for want of time, not for VT.
MIN_RETRY_TIMEOUT_SECONDS = 10.0

# `on_wait(scope, reason, seconds)`: see `VirusTotalSession`.
OnWait = Callable[[str, str, float], Awaitable[None] | None]
_PREMIUM_HINT = (
    "VirusTotal refused the request (403 ForbiddenError): {what} needs a premium (private) "
    "VirusTotal API key with Livehunt access. Set VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_API_KEY "
    "to such a key."
)


# The partition (or any label) a call is made for; set per asyncio task with `call_scope`.
_SCOPE: contextvars.ContextVar[str] = contextvars.ContextVar("vt_call_scope", default="")


def call_scope(scope: str) -> None:
    """Count the current task's calls under `scope` too (tasks inherit it from their creator)."""
    _SCOPE.set(scope)


class VirusTotalError(Exception):
    """A VirusTotal call that failed for good; `code` is VT's error code when there was one."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class _Retryable(Exception):
    """An attempt that failed in a way another attempt may fix."""


@dataclass
class CallLog:
    """HTTP attempts per endpoint (retries included: VT counts them against the quota)."""

    calls: Counter[str]
    retries: Counter[str]
    budget_wait_seconds: float = 0.0  # real seconds spent waiting for quota budget

    @classmethod
    def empty(cls) -> CallLog:
        return cls(Counter(), Counter())

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def as_metadata(self) -> dict[str, Any]:
        """What an operator reads in the UI: the calls (plotted), a table of them per endpoint,
        and retries and budget waits only when they happened (constant zeros hide the data)."""
        out: dict[str, Any] = {"vt_calls": dg.MetadataValue.int(self.total)}
        if self.calls:
            out["vt_calls_by_endpoint"] = dg.MetadataValue.table(
                [
                    dg.TableRecord({"endpoint": endpoint, "calls": int(count)})
                    for endpoint, count in sorted(self.calls.items())
                ],
                schema=dg.TableSchema(
                    columns=[dg.TableColumn("endpoint", "string"), dg.TableColumn("calls", "int")]
                ),
            )
        if retries := sum(self.retries.values()):
            out["vt_retries"] = dg.MetadataValue.int(retries)
        if self.budget_wait_seconds >= 1:
            out["vt_budget_wait_seconds"] = dg.MetadataValue.float(
                round(self.budget_wait_seconds, 3)
            )
        return out


@dataclass(frozen=True)
class DownloadResult:
    sha256: str
    status: str  # "downloaded" | "already_stored" | "too_large" | "not_available"
    size: int | None
    reason: str | None = None


class VirusTotalResource(dg.ConfigurableResource):
    """VirusTotal API v3 access. Point `api_url` at the emulator for tests and the demo."""

    api_key: str = Field(
        description="VirusTotal API key (VIRUSTOTAL_TOKEN or "
        "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_API_KEY). A secret: set it with EnvVar."
    )
    api_url: str = Field(
        default=DEFAULT_API_URL,
        description="VIRUSTOTAL_API_URL: base URL (http or https); a trailing /api/v3 is dropped.",
    )
    timeout_seconds: float = Field(default=120.0, gt=0, description="Per request, body included.")
    max_concurrency: int = Field(
        default=DEFAULT_CONCURRENCY,
        ge=1,
        le=1000,
        description="VIRUSTOTAL_MAX_CONCURRENCY: requests in flight at once per run. VT limits "
        "premium keys by quota, not by concurrency; each download is two round trips (API, then "
        "a redirect to storage), so latency, not bandwidth, bounds a window's downloads.",
    )
    max_attempts: int = Field(default=8, ge=1, description="Attempts per call before failing.")
    retry_deadline_seconds: float = Field(
        default=120.0,
        gt=0,
        description=f"{RETRY_DEADLINE_ENV}: a call whose VT answer keeps failing (5xx, malformed "
        "JSON, timeouts, 429s without the budget) stops retrying once it has been failing this "
        "long, and fails saying what kept failing. Waiting for quota budget does not count "
        "(a spent day is bounded by VIRUSTOTAL_QUOTA_RESET_WAIT_SECONDS).",
    )
    backoff_base_seconds: float = Field(
        default=1.0, ge=0, description="First retry delay (doubles)."
    )
    backoff_max_seconds: float = Field(default=60.0, ge=0, description="Longest retry delay.")

    analysis_poll_seconds: float = Field(
        default=5.0, description="First wait before polling an upload's analysis (doubles)."
    )
    analysis_poll_max_seconds: float = Field(
        default=60.0, description="Longest wait between two polls of an analysis."
    )
    analysis_timeout_seconds: float = Field(
        default=900.0,
        description="Give up on an analysis not completed after this long (upstream: ~25 min, "
        "blocking its only worker; here other requests go on meanwhile).",
    )
    max_upload_bytes: int = Field(
        default=MAX_UPLOAD, description="Refuse uploads above this size (VirusTotal: 650 MB)."
    )

    # -- the deployment's quota budget (budget.py) -------------------------------------------
    quota_budget: bool = Field(
        default=True,
        description="VIRUSTOTAL_QUOTA_BUDGET: take every call from the deployment's shared "
        "budget (false: each run only backs off on 429, as the upstream connectors).",
    )
    quota_per_minute: int = Field(
        default=0, ge=0, description="VIRUSTOTAL_QUOTA_PER_MINUTE (0: VT's hourly quota / 60)."
    )
    quota_per_day: int = Field(
        default=0, ge=0, description="VIRUSTOTAL_QUOTA_PER_DAY (0: what VT reports)."
    )
    quota_per_month: int = Field(
        default=0, ge=0, description="VIRUSTOTAL_QUOTA_PER_MONTH (0: what VT reports)."
    )
    quota_auto_max_share: float = Field(
        default=1.0, gt=0, le=1, description="VIRUSTOTAL_QUOTA_AUTO_MAX_SHARE of day and month."
    )
    quota_livehunt_max_share: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="VIRUSTOTAL_QUOTA_LIVEHUNT_MAX_SHARE of day and month (schedule runs).",
    )
    quota_backfill_max_share: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="VIRUSTOTAL_QUOTA_BACKFILL_MAX_SHARE of day and month, e.g. 0.5.",
    )
    quota_reset_wait_seconds: float = Field(
        default=300.0,
        ge=0,
        description="VIRUSTOTAL_QUOTA_RESET_WAIT_SECONDS: a spent day (or month) is waited for "
        "when it resets within this many seconds; later, the call fails saying when it resets.",
    )
    budget_url: str = Field(
        default="",
        description="VT_PIPELINE_BUDGET_URL: SQLAlchemy URL of the budget's tables (default: "
        "the instance's PostgreSQL from DAGSTER_POSTGRES_*, else SQLite in DAGSTER_HOME).",
    )
    budget_boundary_margin_seconds: float = Field(
        default=1.0,
        ge=0,
        description="A call granted this close to a window's end counts in the next one too.",
    )
    _run_tags: dict[str, str] = PrivateAttr(default_factory=dict)
    _job_name: str = PrivateAttr(default="")
    _home: str = PrivateAttr(default="")

    @field_validator("api_url")
    @classmethod
    def _usable_api_url(cls, value: str) -> str:
        """An http(s) URL with a host, normalized: no trailing `/`, no trailing `/api/v3`.

        vt-py appends `/api/v3` itself, and VT's documentation shows the base with it, so a
        pasted `https://www.virustotal.com/api/v3` is taken as meant rather than refused. A URL
        without a scheme is refused here: vt-py could not send it, and retrying would only wait.
        """
        if is_env_reference(value):
            return value
        return http_url(
            API_URL_ENV, value, "https://www.virustotal.com", strip_suffixes=("/api/v3",)
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Remember the run's tags and job: they decide the budget priority of its calls."""
        run = context.run
        if run is not None:
            self._run_tags = dict(run.tags)
            self._job_name = run.job_name or ""
        if context.instance is not None:
            try:
                self._home = context.instance.root_directory
            except Exception:  # an instance without a local directory (e.g. all PostgreSQL)
                self._home = ""

    @property
    def kind(self) -> str:
        """The kind of work of the current run (interactive, playbook, auto, livehunt,
        backfill), from its tags."""
        return kind_from_tags(self._run_tags)

    def clock(self) -> BudgetClock:
        """Real time. Tests and benchmarks use `ScaledClockVirusTotalResource` (beside the
        emulators), which runs the budget on a faster, shifted clock."""
        return BudgetClock()

    def budget(self) -> Budget | None:
        """The deployment's budget for this key, or None when it is switched off."""
        if not self.quota_budget:
            return None
        shares = {
            "auto": self.quota_auto_max_share,
            "livehunt": self.quota_livehunt_max_share,
            "backfill": self.quota_backfill_max_share,
        }
        return Budget(
            self.budget_url or default_url(home=self._home or None),
            self.api_key,
            Limits(
                self.quota_per_minute,
                self.quota_per_day,
                self.quota_per_month,
                {kind: share for kind, share in shares.items() if kind in KINDS and share < 1},
            ),
            clock=self.clock(),
            max_reset_wait=self.quota_reset_wait_seconds * self.clock().scale,
            boundary_margin=self.budget_boundary_margin_seconds,
        )

    @field_validator("retry_deadline_seconds", mode="before")
    @classmethod
    def _usable_retry_deadline(cls, value: Any) -> Any:
        """Seconds above 0 (a float): refused at load naming the variable, not mid-run."""
        if is_env_reference(value):
            return value
        try:
            seconds = float(str(value).strip())
        except ValueError:
            seconds = float("nan")
        if not seconds > 0 or seconds == float("inf"):
            raise invalid(RETRY_DEADLINE_ENV, value, "a number of seconds above 0, e.g. 120")
        return seconds

    @field_validator("budget_url")
    @classmethod
    def _usable_budget_url(cls, value: str) -> str:
        """An SQLAlchemy URL (e.g. postgresql://user:pw@host/db, sqlite:////path/file.db)."""
        if is_env_reference(value) or not value.strip():
            return value
        try:
            sa.engine.make_url(value.strip())
        except sa.exc.ArgumentError:
            raise invalid(
                BUDGET_URL_ENV,
                "(not shown: it may hold a password)",
                "an SQLAlchemy URL such as postgresql://user:password@host:5432/db or "
                "sqlite:////var/lib/dagster/vt_pipeline_budget.db",
            ) from None
        return value.strip()

    @asynccontextmanager
    async def session(
        self, on_wait: OnWait | None = None, kind: str | None = None
    ) -> AsyncIterator[VirusTotalSession]:
        """A session in the running event loop; `on_wait`: see `VirusTotalSession`; `kind`:
        the budget priority of its calls (default: the run's, from its tags)."""
        client = vt.Client(
            self.api_key,
            agent="vt_pipeline",
            host=self.api_url.rstrip("/"),
            timeout=int(max(1, self.timeout_seconds)),
            headers=dict(TOOL_HEADER),
        )
        session: VirusTotalSession | None = None
        try:
            budget = await asyncio.to_thread(self.budget)
            session = VirusTotalSession(
                client, self, budget, kind or self.kind, self._job_name, on_wait=on_wait
            )
            if budget is not None and not await asyncio.to_thread(budget.report_is_fresh):
                await session.read_overall_quotas()
            yield session
        finally:
            if session is not None:
                await session.drain_notices()
            await client.close_async()


class VirusTotalSession:
    """One run's connection to VirusTotal; create it with `VirusTotalResource.session()`.

    `on_wait(scope, reason, seconds)`, optional (`resource.session(on_wait=...)`, or set the
    attribute), is told each time a call is about to wait, so that the work waiting can say
    why: `scope` is the call's `call_scope` ("" when none was set), `reason` one sentence for
    an analyst that ends with the retry time in UTC ("VirusTotal asked us to slow down
    (QuotaExceededError: the key's per-minute rate); retrying at 12:01:00 UTC"), `seconds` the
    real seconds until that retry (an estimate). It is called
    - after a 429, once the budget decided what VT refused for (per-minute rate, or the hour,
      day or month spent; not when the call fails at once because the day resets too late);
    - before each retry after a 5xx, a timeout, a dropped connection or a malformed answer;
    - when a call has waited `wait_notice_seconds` (5 s) for quota budget.
    A plain function is called in the event loop and must be quick; an `async def` (or any
    function returning an awaitable) is run as a task of its own, so that a slow notice (a
    message posted to OpenCTI) never delays the call; the session waits up to 5 s for the
    ones still running when it closes. Whatever the callback raises is logged and dropped:
    a notice never fails a call. Notices are not deduplicated: a caller that posts them
    somewhere may want to skip one that repeats the last of its scope.
    """

    def __init__(
        self,
        client: vt.Client,
        config: VirusTotalResource,
        budget: Budget | None = None,
        kind: str = "livehunt",
        job: str = "",
        on_wait: OnWait | None = None,
    ) -> None:
        self._client = client
        self._config = config
        self._slots = asyncio.Semaphore(max(1, config.max_concurrency))
        self.log = CallLog.empty()
        self._scoped: dict[str, CallLog] = {}
        self.budget = budget
        self.kind = kind
        self.job = job
        self.on_wait = on_wait
        self.wait_notice_seconds = WAIT_NOTICE_SECONDS
        self._notices: set[asyncio.Task[Any]] = set()
        # The last 429's decision and when it was made (loop time), shared by the calls that
        # were refused at the same moment: one overall_quotas read, one shrink.
        self._quota_lock = asyncio.Lock()
        self._throttle: tuple[float, Throttle] | None = None

    async def read_overall_quotas(self) -> dict[str, Any] | None:
        """The key's quotas and usage as VT reports them (not counted by VT), kept in the
        budget; None when VT does not say (the calls themselves then report what is wrong)."""
        try:
            body = await asyncio.wait_for(
                self._client.get_json_async("/users/{}/overall_quotas", self._config.api_key),
                timeout=min(10.0, self._config.timeout_seconds),
            )
        except Exception:  # its message could name the key (in the path): not kept
            return None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            return None
        if self.budget is not None:
            await asyncio.to_thread(self.budget.record_report, data)
        return data

    @property
    def max_upload_bytes(self) -> int:
        return self._config.max_upload_bytes

    def log_for(self, scope: str) -> CallLog:
        """The calls made under `call_scope(scope)`."""
        return self._scoped.setdefault(scope, CallLog.empty())

    # -- the endpoints this project uses -------------------------------------------------------

    async def livehunt_notifications(
        self, start: datetime, end: datetime, tag: str = "", limit: int = 0
    ) -> tuple[list[dict[str, Any]], bool]:
        """Every notification dated in [start, end), deduplicated by notification id, and
        whether `limit` cut the list (see `stream_livehunt_notifications`)."""
        items: list[dict[str, Any]] = []
        truncated = await self.stream_livehunt_notifications(start, end, items.append, tag, limit)
        return items, truncated

    async def stream_livehunt_notifications(
        self,
        start: datetime,
        end: datetime,
        sink: Callable[[dict[str, Any]], object],
        tag: str = "",
        limit: int = 0,
    ) -> bool:
        """Hand every notification dated in [start, end) to `sink` as its page arrives,
        deduplicated by notification id, so a caller can spool a busy window instead of
        holding it; whether `limit` (upstream's per-run cap, 0 = none) cut the stream.

        Pages `/ioc_stream` by cursor itself (vt-py's iterator mishandles empty pages and
        rejects `limit`). VT's `date:X-` bound is inclusive, so items are also filtered here on
        the half-open window: adjacent windows never share a notification.
        """
        terms = [
            f"date:{_vt_date(start)}+",
            f"date:{_vt_date(end)}-",
            "source_type:hunting_ruleset",
        ]
        if tag:
            terms.append(f"notification_tag:{tag}")
        params: dict[str, Any] = {
            "filter": " ".join(terms),
            "limit": IOC_STREAM_PAGE_SIZE,
            "descriptors_only": "false",
        }
        lo, hi = int(start.timestamp()), int(end.timestamp())
        seen: set[str] = set()
        cursors: set[str] = set()
        while True:
            page = await self.get_json(
                "ioc_stream",
                "/ioc_stream",
                params=params,
                what="Livehunt notifications (/ioc_stream)",
            )
            for item in page.get("data") or []:
                if not isinstance(item, dict):
                    continue
                try:
                    key = n.notification_id(item)
                    when = n.notification_timestamp(item)
                except n.InvalidNotification:
                    key, when = json.dumps(item, sort_keys=True), lo  # kept, dropped by the filters
                if key in seen or not lo <= when < hi:
                    continue
                seen.add(key)
                sink(item)
                if limit and len(seen) >= limit:
                    return True
            cursor = (page.get("meta") or {}).get("cursor")
            if not cursor or cursor in cursors:
                return False
            cursors.add(cursor)
            params = {**params, "cursor": cursor}

    async def hunting_ruleset(self, ruleset_id: str) -> dict[str, Any]:
        """The raw `data` object of a Livehunt ruleset (its `rules` are the YARA source)."""
        if not n.is_valid_ruleset_id(ruleset_id):
            raise VirusTotalError(f"refusing to fetch ruleset with unsafe id {ruleset_id[:80]!r}")
        body = await self.get_json(
            "hunting_ruleset",
            "/intelligence/hunting_rulesets/{}",
            ruleset_id,
            what="Livehunt rulesets",
        )
        return _data(body, "hunting_ruleset")

    async def download_sample(
        self, sha256: str, store: ArtifactStore, max_bytes: int = 0
    ) -> DownloadResult:
        """Stream a sample into the content-addressed store, SHA-256 verified, size capped.

        Truncated or corrupt bodies are retried; 404 means VT cannot serve the sample, and bytes
        that still do not hash to `sha256` after every attempt mean VT serves a wrong sample:
        both are reported as `not_available` (with the reason) rather than failing the window.
        Other failures that survive the retries (outage, quota) still fail: a later run can fix
        them, and a sample skipped for them would be lost silently.
        """
        if store.has(sha256):
            return DownloadResult(sha256, "already_stored", store.size(sha256))
        mismatch: list[str] = []  # the last attempt's hash mismatch, if it was one
        tried = 0

        async def attempt() -> DownloadResult:
            nonlocal tried
            tried += 1
            mismatch.clear()
            response = await self._client.get_async("/files/{}/download", sha256)
            try:
                error = await self._client.get_error_async(response)
                if error:
                    raise error
                sink = store.sample_writer(sha256, max_bytes)
                try:
                    while chunk := await response.content.read_async(1 << 20):
                        sink.write(chunk)
                    # fsync and rename in a worker thread: the other downloads go on meanwhile
                    size = await asyncio.to_thread(sink.commit)
                except ArtifactHashMismatch as exc:
                    mismatch.append(str(exc))
                    raise _Retryable(str(exc)) from exc
                finally:
                    sink.discard()
                return DownloadResult(sha256, "downloaded", size)
            finally:
                response.release()

        try:
            return await self._call("file_download", attempt, what="Sample downloads")
        except ArtifactTooLarge as exc:
            return DownloadResult(sha256, "too_large", None, str(exc))
        except VirusTotalError as exc:
            if exc.code == "NotFoundError":
                return DownloadResult(sha256, "not_available", None, str(exc))
            if exc.code == "RetriesExhausted" and mismatch:
                return DownloadResult(
                    sha256,
                    "not_available",
                    None,
                    f"bytes never matched the SHA-256 in {tried} attempts: {mismatch[-1]}",
                )
            raise

    async def delete_notification(self, notification_id: str) -> bool:
        """Delete a Livehunt notification by its id; False when VT no longer has it (404)."""
        try:
            await self.delete(
                "ioc_stream_delete", "/ioc_stream_notifications/{}", quote(notification_id, safe="")
            )
        except VirusTotalError as exc:
            if exc.code == "NotFoundError":
                return False
            raise
        return True

    # -- enrichment lookups ------------------------------------------------------------------

    async def lookup(
        self, object_type: str, object_id: str, relationships: Sequence[str] = ()
    ) -> dict[str, Any] | None:
        """The raw response for a file (by any hash), IP, domain or URL (VT's URL id), with the
        descriptors of `relationships` embedded (`?relationships=`, no extra call).

        None when VirusTotal has no record of it (404); any other failure raises.
        """
        path = LOOKUP_PATHS.get(object_type)
        if path is None:
            raise ValueError(f"no VirusTotal lookup for object type {object_type!r}")
        params = {"relationships": ",".join(relationships)} if relationships else None
        try:
            body = await self.get_json(
                object_type,
                path,
                object_id,
                params=params,
                what=f"VirusTotal {object_type} lookups",
            )
        except VirusTotalError as exc:
            if exc.code == "NotFoundError":
                return None
            raise
        _data(body, object_type)
        return body

    async def yara_ruleset(self, ruleset_id: str) -> dict[str, Any]:
        """The raw response for a crowdsourced YARA ruleset (`/yara_rulesets/{id}`)."""
        if not n.is_valid_ruleset_id(ruleset_id):
            raise VirusTotalError(f"refusing to fetch ruleset with unsafe id {ruleset_id[:80]!r}")
        body = await self.get_json(
            "yara_ruleset", "/yara_rulesets/{}", ruleset_id, what="Crowdsourced YARA rulesets"
        )
        _data(body, "yara_ruleset")
        return body

    async def upload_file(self, data: bytes, file_name: str) -> str:
        """Submit a file for analysis; returns the analysis id.

        Up to 32 MiB through `POST /files`, above through a single-use `/files/upload_url`
        (fetched again on each attempt); above `max_upload_bytes` (650 MB) it is refused.
        """
        size = len(data)
        if size > self._config.max_upload_bytes:
            raise VirusTotalError(
                f"the file is {size} bytes, above VirusTotal's upload limit of "
                f"{self._config.max_upload_bytes} bytes: not uploaded",
                code="FileTooLarge",
            )
        safe_name = re.sub(r'["\\\r\n]', "_", file_name)[:200] or "sample"

        async def attempt() -> str:
            target = "/files"
            if size > MAX_DIRECT_UPLOAD:
                target = str(await self._client.get_data_async("/files/upload_url"))
            form = aiohttp.MultipartWriter("form-data")
            part = form.append(data, {"Content-Type": "application/octet-stream"})
            part.headers["Content-Disposition"] = f'form-data; name="file"; filename="{safe_name}"'
            return await self._analysis_id(await self._client.post_async(target, data=form))

        return await self._call("file_upload", attempt, what="File uploads")

    async def submit_url(self, url: str) -> str:
        """Submit a URL for analysis (`POST /urls`); returns the analysis id."""

        async def attempt() -> str:
            form = aiohttp.FormData()
            form.add_field("url", url)
            return await self._analysis_id(await self._client.post_async("/urls", data=form))

        return await self._call("url_submit", attempt, what="URL submissions")

    async def reanalyse(self, object_type: str, object_id: str) -> str:
        """Ask VT to analyse a known file or URL (VT's URL id) again (`POST /files/{id}/analyse`,
        `POST /urls/{id}/analyse`); returns the analysis id."""
        collection = {"file": "files", "url": "urls"}[object_type]

        async def attempt() -> str:
            response = await self._client.post_async(f"/{collection}/{{}}/analyse", object_id)
            return await self._analysis_id(response)

        return await self._call(f"{object_type}_analyse", attempt, what="VirusTotal re-analyses")

    async def wait_for_analysis(self, analysis_id: str) -> dict[str, Any]:
        """Poll `/analyses/{id}` with bounded backoff until it is completed; its raw response.

        Only an asyncio sleep between polls: other lookups of the run go on meanwhile.
        """
        config = self._config
        deadline = asyncio.get_running_loop().time() + config.analysis_timeout_seconds
        delay = max(0.0, config.analysis_poll_seconds)
        while True:
            await asyncio.sleep(delay)
            body = await self.get_json(
                "analysis", "/analyses/{}", analysis_id, what="VirusTotal analyses"
            )
            status = (_data(body, "analysis")["attributes"]).get("status")
            if status == "completed":
                return body
            if asyncio.get_running_loop().time() + delay > deadline:
                raise VirusTotalError(
                    f"VirusTotal analysis {analysis_id} not completed after "
                    f"{config.analysis_timeout_seconds:.0f} s (status {status!r})",
                    code="AnalysisTimeout",
                )
            delay = min(max(delay * 2, 0.01), max(config.analysis_poll_max_seconds, 0.01))

    async def _analysis_id(self, response: Any) -> str:
        try:
            error = await self._client.get_error_async(response)
            if error:
                raise error
            body = await response.json_async()
        finally:
            response.release()
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not data.get("id"):
            raise _Retryable("VirusTotal accepted a submission without an analysis id")
        return str(data["id"])

    async def get_json(
        self,
        endpoint: str,
        path: str,
        *path_args: str,
        params: dict[str, Any] | None = None,
        what: str = "",
    ) -> dict[str, Any]:
        """GET a JSON document with retries; `endpoint` names the call in the accounting."""

        async def attempt() -> dict[str, Any]:
            body = await self._client.get_json_async(path, *path_args, params=params)
            if not isinstance(body, dict):
                raise _Retryable(f"unexpected JSON document of type {type(body).__name__}")
            return body

        return await self._call(endpoint, attempt, what=what or endpoint)

    async def post_json(
        self, endpoint: str, path: str, *path_args: str, body: dict[str, Any], what: str = ""
    ) -> dict[str, Any]:
        """POST a JSON body and return the JSON answer, with the retries of every call (a
        caller whose POST creates something must find it again before posting twice)."""
        return await self._send_json(self._client.post_async, endpoint, path, path_args, body, what)

    async def patch_json(
        self, endpoint: str, path: str, *path_args: str, body: dict[str, Any], what: str = ""
    ) -> dict[str, Any]:
        """PATCH a JSON body (an edit in place: safe to retry) and return the JSON answer."""
        return await self._send_json(
            self._client.patch_async, endpoint, path, path_args, body, what
        )

    async def _send_json(
        self,
        send: Callable[..., Awaitable[Any]],
        endpoint: str,
        path: str,
        path_args: tuple[str, ...],
        body: dict[str, Any],
        what: str,
    ) -> dict[str, Any]:
        """One JSON request (`send`: the client's post or patch) through `_call`'s retries."""

        async def attempt() -> dict[str, Any]:
            response = await send(path, *path_args, json_data=body)
            try:
                error = await self._client.get_error_async(response)
                if error:
                    raise error
                answer = await response.json_async()
            finally:
                response.release()
            if not isinstance(answer, dict):
                raise _Retryable(f"unexpected JSON document of type {type(answer).__name__}")
            return answer

        return await self._call(endpoint, attempt, what=what or endpoint)

    async def delete(
        self,
        endpoint: str,
        path: str,
        *path_args: str,
        what: str = "Deleting Livehunt notifications",
    ) -> None:
        async def attempt() -> None:
            response = await self._client.delete_async(path, *path_args)
            try:
                error = await self._client.get_error_async(response)
                if error:
                    raise error
            finally:
                response.release()

        await self._call(endpoint, attempt, what=what)

    # -- retries ---------------------------------------------------------------------------------

    def notify(self, reason: str, seconds: float) -> None:
        """Tell `on_wait` that the current task's call waits `seconds` for `reason`; never
        raises."""
        callback = self.on_wait
        if callback is None:
            return
        try:
            result = callback(_SCOPE.get(), reason, max(0.0, seconds))
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._notices.add(task)
                task.add_done_callback(self._notice_done)
        except Exception:
            log.warning("on_wait failed for %r", reason, exc_info=True)

    def _notice_done(self, task: asyncio.Task[Any]) -> None:
        self._notices.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("on_wait failed", exc_info=task.exception())

    async def drain_notices(self, timeout: float = NOTICE_DRAIN_SECONDS) -> None:
        """Let the async notices still running finish (at most `timeout`), then cancel them."""
        pending = set(self._notices)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=1.0)

    async def _take_budget(self, logs: list[CallLog], announce: bool = True) -> None:
        """Wait for a unit of the deployment's budget; the wait goes into the call logs.

        With an `on_wait` callback and `announce`, a wait longer than `wait_notice_seconds` is
        announced with what the budget waits for; the unit is then awaited as a task of its
        own (only then: a Livehunt run's hundreds of calls need no extra task each).
        """
        if self.budget is None:
            return
        budget = self.budget
        started = asyncio.get_running_loop().time()
        try:
            if self.on_wait is None or not announce:
                await budget.acquire(self.kind, self.job)
                return
            acquiring = asyncio.ensure_future(budget.acquire(self.kind, self.job))
            try:
                done, _ = await asyncio.wait({acquiring}, timeout=self.wait_notice_seconds)
                while not done:  # until the store said what the wait is for (a slow host)
                    waiting = budget.waiting()
                    if waiting is not None:
                        why, seconds = waiting
                        at = _at(budget.clock, seconds)
                        reason = f"Waiting for the VirusTotal quota: {why}; retrying at {at}"
                        self.notify(reason, seconds)
                        break
                    done, _ = await asyncio.wait({acquiring}, timeout=HEARTBEAT_SECONDS)
                await acquiring
            finally:
                if not acquiring.done():  # this call was cancelled while it waited
                    acquiring.cancel()
        except BudgetExhausted as exc:
            raise VirusTotalError(str(exc), code="QuotaExhausted") from None
        finally:
            waited = asyncio.get_running_loop().time() - started
            for log_ in logs:
                log_.budget_wait_seconds += waited

    async def _over_quota(self, attempt_started: float) -> Throttle | None:
        """A 429 despite the budget: another client spends the key. Learn the key's usage from
        VT and let the budget decide which quota was refused (`Budget.shrink`); the next
        attempt waits for it. Calls refused at the same moment share one decision: a 429
        after the last decision was made needs a new one."""
        if self.budget is None:
            return None
        async with self._quota_lock:
            if self._throttle is not None and self._throttle[0] >= attempt_started:
                return self._throttle[1]
            report = await self.read_overall_quotas()
            throttle = await asyncio.to_thread(self.budget.shrink, report)
            self._throttle = (asyncio.get_running_loop().time(), throttle)
            return throttle

    async def _call(self, endpoint: str, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """`attempt` until it succeeds, fails for good, `max_attempts` are spent or it has been
        failing for `retry_deadline_seconds`.

        "Failing" counts the attempts' own time and the backoff between them, not the waits for
        quota budget (after a budgeted 429 the budget, not backoff, paces the retry: its wait
        is the quota's, bounded by the quota's rules) nor for a free concurrency slot (other
        calls of the run, not this one's failure). The first attempt gets the full
        `timeout_seconds`; a retry what is left of the deadline, but at least 10 s (or the full
        timeout when it is shorter): a call ends within `max(retry_deadline_seconds + 10,
        timeout_seconds)` of its first attempt, plus its waits for budget.
        """
        config = self._config
        clock = self.budget.clock if self.budget is not None else config.clock()
        loop = asyncio.get_running_loop()
        deadline = config.retry_deadline_seconds
        attempts = max(1, config.max_attempts)
        last: str = ""
        failures = tries = 0
        failing = 0.0  # real seconds this call has been failing
        delay = 0.0  # backoff before the next attempt
        announced = False  # a 429's notice already said why the next attempt waits
        while failures < attempts:
            logs = [self.log] + ([self.log_for(_SCOPE.get())] if _SCOPE.get() else [])
            if tries:
                for log_ in logs:
                    log_.retries[endpoint] += 1
            if delay:
                await asyncio.sleep(delay)
                failing += delay
            tries += 1
            failures += 1
            async with self._slots:
                await self._take_budget(logs, announce=not announced)
                for log_ in logs:
                    log_.calls[endpoint] += 1
                timeout = config.timeout_seconds
                if tries > 1:  # what is left of the deadline, but time enough to answer
                    timeout = min(timeout, max(deadline - failing, MIN_RETRY_TIMEOUT_SECONDS))
                started = loop.time()
                quota = ""
                try:
                    return await asyncio.wait_for(attempt(), timeout=timeout)
                except vt.APIError as exc:
                    if exc.code not in RETRYABLE_CODES:
                        raise _permanent(exc, what) from None
                    last = f"{exc.code}: {_clip(exc.message)}"
                    quota = exc.code if exc.code in QUOTA_CODES else ""
                except aiohttp.InvalidURL as exc:  # a ClientError, but no retry can fix it
                    raise VirusTotalError(
                        f"VirusTotal {endpoint}: the URL {_clip(str(exc))} is not valid; "
                        f"check {API_URL_ENV}",
                        code="InvalidURL",
                    ) from None
                except (_Retryable, json.JSONDecodeError, aiohttp.ContentTypeError) as exc:
                    last = f"{type(exc).__name__}: {_clip(str(exc))}"
                except (TimeoutError, aiohttp.ClientError) as exc:
                    last = f"{type(exc).__name__}: {_clip(str(exc)) or 'no detail'}"
            failing += loop.time() - started
            announced = False
            if quota and self.budget is not None:
                # Budgeted: the budget paces the retry (the window VT refused for), not backoff.
                # Its decision holds for every call of the key, also when this one gives up.
                delay = 0.0
                throttle = await self._over_quota(started)
                if failures >= attempts:
                    break
                if failing >= deadline:
                    raise _gave_up(endpoint, failing, tries, deadline, last)
                if throttle is not None and not throttle.gives_up:
                    self.notify(_throttle_reason(quota, throttle, clock), throttle.wait)
                    announced = True
                continue
            if failures >= attempts:
                break
            ceiling = min(
                config.backoff_max_seconds, config.backoff_base_seconds * 2 ** (failures - 1)
            )
            delay = random.uniform(ceiling / 2, ceiling)
            if failing + delay >= deadline:
                raise _gave_up(endpoint, failing, tries, deadline, last)
            if quota:
                reason = (
                    f"VirusTotal asked us to slow down ({quota}); retrying at {_at(clock, delay)}"
                )
            else:
                reason = (
                    f"VirusTotal {endpoint} failed ({_clip(last, 160)}); retrying at "
                    f"{_at(clock, delay)}, giving up at {_at(clock, deadline - failing)} if it "
                    "keeps failing"
                )
            self.notify(reason, delay)
        raise VirusTotalError(
            f"VirusTotal {endpoint} failed after {config.max_attempts} attempts; last error {last}",
            code="RetriesExhausted",
        )


def _gave_up(
    endpoint: str, failing: float, tries: int, deadline: float, last: str
) -> VirusTotalError:
    """A call that kept failing for `retry_deadline_seconds`: what failed, and for how long."""
    return VirusTotalError(
        f"VirusTotal {endpoint} kept failing for {_seconds(failing)} s over {tries} attempts, "
        f"giving up (the limit is {_seconds(deadline)} s: {RETRY_DEADLINE_ENV}); "
        f"last error {last}",
        code="RetriesExhausted",
    )


def _throttle_reason(code: str, throttle: Throttle, clock: BudgetClock) -> str:
    """What a budgeted 429 means for the work that waits, in one sentence."""
    at = _at(clock, throttle.wait)
    if throttle.period == "minute":
        return (
            f"VirusTotal asked us to slow down ({code}: the key's per-minute rate); "
            f"retrying at {at}"
        )
    adjective = ADJECTIVES[throttle.period]
    return (
        f"VirusTotal asked us to slow down ({code}): the key's {adjective} quota of "
        f"{throttle.limit} calls is spent; retrying at {at}, when it resets"
    )


def _at(clock: BudgetClock, seconds: float) -> str:
    """The time `seconds` (real) from now on the budget's clock (UTC wall-clock time but in
    tests and benchmarks, where the budget's own messages use it too), as HH:MM:SS UTC."""
    moment = clock.now() + max(0.0, min(seconds, 10**8)) * clock.scale
    return datetime.fromtimestamp(moment, UTC).strftime("%H:%M:%S UTC")


def _seconds(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _permanent(exc: vt.APIError, what: str) -> VirusTotalError:
    if exc.code == "ForbiddenError":
        return VirusTotalError(_PREMIUM_HINT.format(what=what), code=exc.code)
    if exc.code in {"WrongCredentialsError", "AuthenticationRequiredError"}:
        return VirusTotalError(
            f"VirusTotal rejected the API key ({exc.code}); check the key's environment variable",
            code=exc.code,
        )
    return VirusTotalError(f"VirusTotal answered {exc.code}: {_clip(exc.message)}", code=exc.code)


def _clip(text: Any, limit: int = 300) -> str:
    return re.sub(r"\s+", " ", str(text))[:limit]


def _data(body: dict[str, Any], expected_type: str) -> dict[str, Any]:
    data = body.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("attributes"), dict):
        raise VirusTotalError(f"VirusTotal returned a {expected_type} without data.attributes")
    return data


def _vt_date(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
