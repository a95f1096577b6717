"""VirusTotal, through vt-py: retries, concurrency and call accounting in one place.

`VirusTotalResource` is the Dagster resource (configuration only). Inside a run, an asset opens
`async with resource.session() as vt:` and gets a `VirusTotalSession`, which owns one vt-py client
created inside the running event loop (vt-py's sync API cannot be used there) and which:
- retries 429 (quota), 5xx, timeouts, dropped connections, truncated bodies and malformed JSON
  with exponential backoff and full jitter, then fails with a clear `VirusTotalError`; it never
  gives up silently and never returns partial data;
- fails at once, with a message that says what to do, on errors that retrying cannot fix
  (403 Livehunt without a premium key, 401 bad key, 404);
- bounds concurrent requests with a semaphore;
- counts every HTTP attempt per endpoint (quota is money: the counts become asset metadata).

Errors and logs never contain the API key: it only ever travels in the `x-apikey` header.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import random
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import dagster as dg
import vt
from pydantic import Field

from vt_pipeline.storage.store import ArtifactHashMismatch, ArtifactStore, ArtifactTooLarge
from vt_pipeline.virustotal import objects as n

T = TypeVar("T")

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
RETRYABLE_CODES = frozenset(
    {
        "QuotaExceededError",
        "TooManyRequestsError",
        "TransientError",
        "ServerError",
        "DeadlineExceededError",
    }
)
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

    @classmethod
    def empty(cls) -> CallLog:
        return cls(Counter(), Counter())

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def as_metadata(self) -> dict[str, Any]:
        return {
            "vt_calls": dg.MetadataValue.int(self.total),
            "vt_calls_by_endpoint": dg.MetadataValue.json(dict(sorted(self.calls.items()))),
            "vt_retries": dg.MetadataValue.int(sum(self.retries.values())),
        }


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
    api_url: str = Field(default=DEFAULT_API_URL, description="Base URL, without /api/v3.")
    timeout_seconds: float = Field(default=120.0, description="Per request, body included.")
    max_concurrency: int = Field(
        default=DEFAULT_CONCURRENCY,
        description="Requests in flight at once per run. VT limits premium keys by quota, not "
        "by concurrency; each download is two round trips (API, then a redirect to storage), "
        "so latency, not bandwidth, bounds a window's downloads.",
    )
    max_attempts: int = Field(default=8, description="Attempts per call before failing.")
    backoff_base_seconds: float = Field(default=1.0, description="First retry delay (doubles).")
    backoff_max_seconds: float = Field(default=60.0, description="Longest retry delay.")
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

    @asynccontextmanager
    async def session(self) -> AsyncIterator[VirusTotalSession]:
        client = vt.Client(
            self.api_key,
            agent="vt_pipeline",
            host=self.api_url.rstrip("/"),
            timeout=int(max(1, self.timeout_seconds)),
            headers=dict(TOOL_HEADER),
        )
        try:
            yield VirusTotalSession(client, self)
        finally:
            await client.close_async()


class VirusTotalSession:
    """One run's connection to VirusTotal; create it with `VirusTotalResource.session()`."""

    def __init__(self, client: vt.Client, config: VirusTotalResource) -> None:
        self._client = client
        self._config = config
        self._slots = asyncio.Semaphore(max(1, config.max_concurrency))
        self.log = CallLog.empty()
        self._scoped: dict[str, CallLog] = {}

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
        """Every notification dated in [start, end), deduplicated by notification id.

        Pages `/ioc_stream` by cursor itself (vt-py's iterator mishandles empty pages and
        rejects `limit`). VT's `date:X-` bound is inclusive, so items are also filtered here on
        the half-open window: adjacent windows never share a notification.
        Returns the items and whether `limit` (upstream's per-run cap, 0 = none) cut the list.
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
        items: list[dict[str, Any]] = []
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
                items.append(item)
                if limit and len(items) >= limit:
                    return items, True
            cursor = (page.get("meta") or {}).get("cursor")
            if not cursor or cursor in cursors:
                return items, False
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

        Truncated or corrupt bodies are retried; 404 means VT cannot serve the sample and is
        reported as `not_available` rather than failing the whole partition.
        """
        if store.has(sha256):
            return DownloadResult(sha256, "already_stored", store.size(sha256))

        async def attempt() -> DownloadResult:
            response = await self._client.get_async("/files/{}/download", sha256)
            try:
                error = await self._client.get_error_async(response)
                if error:
                    raise error
                try:
                    with store.writer(sha256, max_bytes) as sink:
                        while chunk := await response.content.read_async(1 << 20):
                            sink.write(chunk)
                except ArtifactHashMismatch as exc:
                    raise _Retryable(str(exc)) from exc
                return DownloadResult(sha256, "downloaded", store.size(sha256))
            finally:
                response.release()

        try:
            return await self._call("file_download", attempt, what="Sample downloads")
        except ArtifactTooLarge as exc:
            return DownloadResult(sha256, "too_large", None, str(exc))
        except VirusTotalError as exc:
            if exc.code == "NotFoundError":
                return DownloadResult(sha256, "not_available", None, str(exc))
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

    async def lookup(self, object_type: str, object_id: str) -> dict[str, Any] | None:
        """The raw response for a file (by any hash), IP, domain or URL (VT's URL id).

        None when VirusTotal has no record of it (404); any other failure raises.
        """
        path = LOOKUP_PATHS.get(object_type)
        if path is None:
            raise ValueError(f"no VirusTotal lookup for object type {object_type!r}")
        try:
            body = await self.get_json(
                object_type, path, object_id, what=f"VirusTotal {object_type} lookups"
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

    async def delete(self, endpoint: str, path: str, *path_args: str) -> None:
        async def attempt() -> None:
            response = await self._client.delete_async(path, *path_args)
            try:
                error = await self._client.get_error_async(response)
                if error:
                    raise error
            finally:
                response.release()

        await self._call(endpoint, attempt, what="Deleting Livehunt notifications")

    # -- retries ---------------------------------------------------------------------------------

    async def _call(self, endpoint: str, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        config = self._config
        last: str = ""
        for number in range(1, max(1, config.max_attempts) + 1):
            logs = [self.log] + ([self.log_for(_SCOPE.get())] if _SCOPE.get() else [])
            if number > 1:
                for log in logs:
                    log.retries[endpoint] += 1
                ceiling = min(
                    config.backoff_max_seconds, config.backoff_base_seconds * 2 ** (number - 2)
                )
                await asyncio.sleep(random.uniform(ceiling / 2, ceiling))
            async with self._slots:
                for log in logs:
                    log.calls[endpoint] += 1
                try:
                    return await asyncio.wait_for(attempt(), timeout=config.timeout_seconds)
                except vt.APIError as exc:
                    if exc.code not in RETRYABLE_CODES:
                        raise _permanent(exc, what) from None
                    last = f"{exc.code}: {_clip(exc.message)}"
                except (_Retryable, json.JSONDecodeError, aiohttp.ContentTypeError) as exc:
                    last = f"{type(exc).__name__}: {_clip(str(exc))}"
                except (TimeoutError, aiohttp.ClientError) as exc:
                    last = f"{type(exc).__name__}: {_clip(str(exc)) or 'no detail'}"
        raise VirusTotalError(
            f"VirusTotal {endpoint} failed after {config.max_attempts} attempts; last error {last}",
            code="RetriesExhausted",
        )


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
