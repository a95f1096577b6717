"""The VirusTotal API v3 as an aiohttp application over a ``Corpus``.

Every API request goes through the same gate, in this order: latency, API key (401), premium
privilege (403), injected status fault (429/500/503/timeout), quota (429, a refused request does
not count), the handler, then an injected body fault (truncated/malformed) on a 200. The
emulator's own state (deleted notifications, uploads, analyses, statistics) lives here; the
corpus is never modified.

For enrichment: file, URL, domain and IP lookups carry `gti_assessment` only when the request
has VirusTotal's `x-tool` header and its key is licensed for GTI (see `gti`, `keys`); a captured
corpus is served as captured. An unknown file or URL is a 404 until it is uploaded
(`POST /files` <= 32 MiB, else `GET /files/upload_url`, single use, <= 650 MB) or submitted
(`POST /urls`) and its analysis has completed (`set_analysis_time`: polls and seconds, default
the third poll); `GET /_emulator/targets` gives another process `Corpus.targets()`.

Every request under `/api/` is counted in `stats()`, to the endpoints the emulator does not
implement too (`not_implemented`: a 404 after the key and quota checks VirusTotal would make),
so a client calling them does not look cheaper than it is. Every gated request is also logged
(`requests()`, `GET /_emulator/requests`): endpoint, status, start and end on the monotonic
clock, and what it was about (a stream page's filter, cursor, the files it served and the
rulesets its notifications name; a download's sha256; a ruleset's id; an unimplemented path),
so a benchmark can rebuild the round trips a corpus needs and their order (its latency floor).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import ipaddress
import json
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import BodyPartReader, web

from vt_pipeline.emulators.virustotal.corpus import Corpus, StreamEntry
from vt_pipeline.emulators.virustotal.faults import BODY_FAULTS, STATUS_FAULTS, FaultInjector
from vt_pipeline.emulators.virustotal.filetypes import sniff
from vt_pipeline.emulators.virustotal.gti import as_served, asks_for_gti
from vt_pipeline.emulators.virustotal.hunting_rulesets import HuntingRulesets, RulesetError
from vt_pipeline.emulators.virustotal.ioc_stream import (
    StreamIndex,
    StreamQueryError,
    decode_cursor,
    encode_cursor,
    parse_filter,
    parse_limit,
)
from vt_pipeline.emulators.virustotal.keys import ApiKey
from vt_pipeline.emulators.virustotal.keys import api_keys as key_privileges
from vt_pipeline.emulators.virustotal.objects import (
    API_ROOT,
    analysed_at,
    is_analysed,
    submitted_file,
    url_id,
    url_object,
)
from vt_pipeline.emulators.virustotal.quotas import QuotaTracker
from vt_pipeline.emulators.virustotal.retrohunt import ROUTES as RETROHUNT_ROUTES
from vt_pipeline.emulators.virustotal.retrohunt import RetrohuntJobs
from vt_pipeline.emulators.virustotal.samples import MIB, Hashes

Access = Literal["open", "key", "premium"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

JSON = "application/json"
MAX_DIRECT_UPLOAD = 32 * MIB
MAX_URL_UPLOAD = 650 * MIB
_HASH = re.compile(r"[0-9a-f]{32}|[0-9a-f]{40}|[0-9a-f]{64}")
_STREAMING = frozenset({"file_download", "sample"})  # they apply body faults themselves
_UNMETERED = frozenset({"overall_quotas"})
REQUEST_LOG_LIMIT = 1_000_000  # entries kept (~250 bytes each); later requests are only counted
_DETAIL = "vt_emulator_request_detail"  # the request key a handler leaves its log details under
_STATUS_FAULT_ERRORS = {
    "429": (429, "QuotaExceededError", "Quota exceeded"),
    "500": (500, "InternalError", "An internal error occurred"),
    "503": (503, "TransientError", "Service temporarily unavailable, please retry"),
}
_EDITORS = "/intelligence/hunting_rulesets/{id}/relationships/editors"
# (method, path under /api/v3, endpoint name, access, handler method)
_ROUTES: tuple[tuple[str, str, str, Access, str], ...] = (
    ("GET", "/ioc_stream", "ioc_stream", "premium", "_ioc_stream"),
    ("DELETE", "/ioc_stream_notifications/{id}", "ioc_stream_delete", "premium", "_delete"),
    ("GET", "/files/upload_url", "file_upload_url", "key", "_file_upload_url"),
    ("GET", "/files/{id}", "file", "key", "_file"),
    ("GET", "/files/{id}/download", "file_download", "premium", "_file_download"),
    ("POST", "/files", "file_upload", "key", "_file_upload"),
    ("GET", "/intelligence/hunting_rulesets/{id}", "hunting_ruleset", "premium", "_hunting"),
    ("GET", "/intelligence/hunting_rulesets", "hunting_rulesets", "premium", "_hunting_list"),
    ("POST", "/intelligence/hunting_rulesets", "hunting_ruleset_create", "premium", "_hunting_add"),
    ("PATCH", "/intelligence/hunting_rulesets/{id}", "ruleset_update", "premium", "_hunting_patch"),
    ("DELETE", "/intelligence/hunting_rulesets/{id}", "ruleset_delete", "premium", "_hunting_del"),
    ("POST", _EDITORS, "ruleset_editors", "premium", "_hunting_editors"),
    ("GET", "/yara_rulesets/{id}", "yara_ruleset", "key", "_yara_ruleset"),
    ("GET", "/ip_addresses/{id}", "ip_address", "key", "_ip_address"),
    ("GET", "/domains/{id}", "domain", "key", "_domain"),
    ("GET", "/domains/{id}/resolutions", "domain_resolutions", "key", "_resolutions"),
    ("GET", "/urls/{id}", "url", "key", "_url"),
    ("POST", "/urls", "url_submit", "key", "_url_submit"),
    ("GET", "/analyses/{id}", "analysis", "key", "_analysis"),
    ("GET", "/users/{id}/overall_quotas", "overall_quotas", "key", "_overall_quotas"),
)
_PREMIUM_MESSAGE = (
    "You are not allowed to perform the requested operation: it requires a premium "
    "(privileged) API key"
)


def api_error(status: int, code: str, message: str) -> web.Response:
    """VirusTotal's error envelope."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def json_ok(payload: Any) -> web.Response:
    """A JSON body; text UTF-8 cannot carry (a lone surrogate) goes as a `\\u` escape, as VT's."""
    try:
        body = json.dumps(payload, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        body = json.dumps(payload).encode()
    return web.Response(body=body, content_type=JSON)


async def send_stream(
    request: web.Request,
    chunks: Iterable[bytes],
    size: int,
    content_type: str,
    fault: str | None,
) -> web.StreamResponse:
    """Send ``size`` bytes with their Content-Length.

    ``truncated`` stops halfway and drops the connection (the client sees a short body);
    ``malformed`` flips a byte of every chunk (right length, wrong content).
    """
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.content_length = size
    await response.prepare(request)
    cut = size // 2 if fault == "truncated" else None
    sent = 0
    for chunk in chunks:
        if cut is not None and sent + len(chunk) >= cut:
            await response.write(chunk[: cut - sent])
            if request.transport is not None:
                request.transport.close()
            return response
        if fault == "malformed" and chunk:
            chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
        await response.write(chunk)
        sent += len(chunk)
    await response.write_eof()
    return response


@dataclass(slots=True)
class _Analysis:
    """A submitted file or URL: queued, in progress, then completed once it has been polled
    `analysis_polls` times and `analysis_seconds` have passed; then its object is known."""

    kind: Literal["file", "url"]
    target: dict
    meta: dict
    date: int
    started: float = 0.0  # the emulator clock when submitted
    polls: int = 0


@dataclass(frozen=True, slots=True)
class _Upload:
    hashes: Hashes
    size: int
    head: bytes
    filename: str


async def _digest_part(part: BodyPartReader) -> _Upload:
    """Hash an uploaded file as it streams in, keeping only its first bytes."""
    states = (hashlib.md5(), hashlib.sha1(), hashlib.sha256())
    size, head = 0, b""
    while chunk := await part.read_chunk(256 * 1024):
        if len(head) < 64:
            head += chunk[: 64 - len(head)]
        size += len(chunk)
        for state in states:
            state.update(chunk)
    md5, sha1, sha256 = (state.hexdigest() for state in states)
    return _Upload(Hashes(md5, sha1, sha256), size, head, part.filename or "unknown")


def _url_keys(raw: str) -> list[str]:
    """Candidate url ids for ``/urls/{id}``: a SHA-256 as is, or base64url of the URL."""
    keys = [raw.lower()] if re.fullmatch(r"[0-9a-fA-F]{64}", raw) else []
    with contextlib.suppress(binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        keys.append(url_id(_b64(raw)))
    return keys


def _is_true(value: str | None) -> bool:
    if value in (None, "false", "False"):
        return False
    if value in ("true", "True"):
        return True
    raise StreamQueryError(f"invalid boolean: {value!r}")


class VirusTotalAPI:
    """Handlers and state of one emulated VirusTotal; ``application()`` serves them."""

    def __init__(
        self,
        corpus: Corpus,
        *,
        api_keys: Mapping[str, bool | ApiKey] | None = None,
        latency_ms: float = 0.0,
        faults: str = "",
        fault_seed: int = 0,
        fault_timeout_seconds: float = 30.0,
        quota_per_minute: int = 0,
        quota_per_day: int = 0,
        quota_per_hour: int = 0,
        quota_per_month: int = 0,
        clock: Callable[[], float] = time.time,
        analysis_polls: int = 2,
        analysis_seconds: float = 0.0,
    ) -> None:
        self.corpus = corpus
        self.set_analysis_time(analysis_polls, analysis_seconds)
        self.fault_timeout_seconds = fault_timeout_seconds
        self._keys = key_privileges(api_keys)
        self._latency = latency_ms / 1000
        self._faults = FaultInjector(faults, fault_seed)
        self._quotas = QuotaTracker(
            quota_per_minute, quota_per_day, clock, quota_per_hour, quota_per_month
        )
        self._clock = clock
        self._index = StreamIndex(corpus.stream)
        self._notified: list[StreamEntry] = []  # notifications of rulesets made through the API
        self.hunting = HuntingRulesets(corpus.hunting_rulesets, clock, self._hunting_notification)
        self._deleted: set[str] = set()
        self._downloads: dict[str, tuple[str, str | None]] = {}  # token -> (sha256, body fault)
        self._upload_tokens: set[str] = set()
        self._analyses: dict[str, _Analysis] = {}
        self._submitted_files: dict[str, dict] = {}  # by sha256, md5 and sha1
        self._submitted_urls: dict[str, dict] = {}
        self._stats: dict[str, dict[str, int]] = {}
        self._stats_lock = threading.Lock()
        self._log: list[tuple[str, int, float, float, dict[str, Any] | None]] = []
        self._log_dropped = 0
        self.retrohunt = RetrohuntJobs(corpus.files, clock)

    # -- controls (thread-safe: they swap or copy whole values) -----------------------------

    def set_faults(self, spec: str, seed: int = 0) -> None:
        """Replace the fault rules (ValueError on a bad spec); counts and draws start over."""
        self._faults = FaultInjector(spec, seed)

    @property
    def faults(self) -> str:
        return self._faults.spec

    def set_analysis_time(self, polls: int = 2, seconds: float = 0.0) -> None:
        """How long an upload or URL submission takes to analyse: it completes at the first
        `GET /analyses/{id}` after `polls` earlier polls and `seconds` on the emulator clock
        (default: queued, in-progress, completed on the third poll)."""
        if polls < 0 or seconds < 0:
            raise ValueError("analysis polls and seconds must be >= 0")
        self._analysis_polls = int(polls)
        self._analysis_seconds = float(seconds)

    def spend(self, key: str, count: int) -> int:
        """Another client spends ``count`` requests of ``key``'s quota; how many were accepted."""
        return self._quotas.spend(key, count)

    def set_latency(self, ms: float) -> None:
        if ms < 0:
            raise ValueError("latency must be >= 0")
        self._latency = ms / 1000

    def stats(self) -> dict[str, dict[str, int]]:
        """Requests served: ``{endpoint: {status code as string: count}}``."""
        with self._stats_lock:
            return {endpoint: dict(codes) for endpoint, codes in self._stats.items()}

    def reset_stats(self) -> None:
        """Forget the counts and the request log."""
        with self._stats_lock:
            self._stats = {}
            self._log = []
            self._log_dropped = 0

    def requests(self) -> list[dict[str, Any]]:
        """The request log, oldest first: ``{endpoint, status, start, end, ...details}``.

        ``start``/``end`` are ``time.monotonic()`` seconds (start before the injected latency,
        end once the response is written or handed to aiohttp). Details: ioc_stream ``filter``,
        ``cursor`` (the one given, or None), ``files`` (ids of the file objects served) and
        ``rulesets`` (ids the page's notifications name); file_download ``file`` (the sha256
        when known); sample ``sha256``; hunting_ruleset ``ruleset``; not_implemented ``path``.
        At most ``REQUEST_LOG_LIMIT`` entries are kept; ``requests_dropped`` counts the rest.
        """
        with self._stats_lock:
            log = list(self._log)
        return [
            {"endpoint": endpoint, "status": status, "start": start, "end": end, **(detail or {})}
            for endpoint, status, start, end, detail in log
        ]

    @property
    def requests_dropped(self) -> int:
        """Requests served but not logged, the log being full."""
        return self._log_dropped

    def count(self, endpoint: str, status: int | None = None) -> int:
        codes = self.stats().get(endpoint, {})
        return sum(codes.values()) if status is None else codes.get(str(status), 0)

    @property
    def deleted_notifications(self) -> frozenset[str]:
        return frozenset(self._deleted)

    def _record(
        self, endpoint: str, status: int, start: float, end: float, detail: dict[str, Any] | None
    ) -> None:
        with self._stats_lock:
            codes = self._stats.setdefault(endpoint, {})
            codes[str(status)] = codes.get(str(status), 0) + 1
            if len(self._log) < REQUEST_LOG_LIMIT:
                self._log.append((endpoint, status, start, end, detail))
            else:
                self._log_dropped += 1

    # -- application -------------------------------------------------------------------------

    def application(self) -> web.Application:
        from vt_pipeline.emulators.virustotal import relationships  # imports us

        app = web.Application(client_max_size=MAX_URL_UPLOAD + MIB)
        for method, path, endpoint, access, handler in _ROUTES:
            served = relationships.with_relationships(self, endpoint, getattr(self, handler))
            gated = self._gate(endpoint, access, served)
            app.router.add_route(method, "/api/v3" + path, gated)
        for method, path, endpoint, access, handler in RETROHUNT_ROUTES:
            gated = self._gate(endpoint, access, getattr(self.retrohunt, handler))
            app.router.add_route(method, "/api/v3" + path, gated)
        from vt_pipeline.emulators.virustotal.expansions import expansion_routes  # imports us

        for method, path, endpoint, access, route in expansion_routes(self):
            app.router.add_route(method, "/api/v3" + path, self._gate(endpoint, access, route))
        for method, path, endpoint, access, route in relationships.relationship_routes(self):
            app.router.add_route(method, "/api/v3" + path, self._gate(endpoint, access, route))
        unknown = self._gate("not_implemented", "key", self._unknown)
        app.router.add_route("*", "/api/{tail:.*}", unknown)
        app.router.add_get("/_emulator/samples/{id}", self._gate("sample", "open", self._sample))
        app.router.add_post(
            "/_emulator/uploads/{id}", self._gate("file_upload", "open", self._upload)
        )
        app.router.add_get("/_emulator/stats", self._get_stats)
        app.router.add_delete("/_emulator/stats", self._delete_stats)
        app.router.add_get("/_emulator/requests", self._get_requests)
        app.router.add_post("/_emulator/faults", self._post_faults)
        app.router.add_post("/_emulator/latency", self._post_latency)
        app.router.add_post("/_emulator/analysis", self._post_analysis)
        app.router.add_get("/_emulator/targets", self._get_targets)
        app.router.add_post("/_emulator/spend", self._post_spend)
        app.router.add_post("/_emulator/hunting_rulesets/{id}/notify", self._post_notify)
        return app

    def _gate(self, endpoint: str, access: Access, handler: Handler) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            start = time.monotonic()
            response = await self._guarded(endpoint, access, handler, request)
            self._record(endpoint, response.status, start, time.monotonic(), request.get(_DETAIL))
            return response

        return handle

    async def _guarded(
        self, endpoint: str, access: Access, handler: Handler, request: web.Request
    ) -> web.StreamResponse:
        if self._latency:
            await asyncio.sleep(self._latency)
        key = request.headers.get("x-apikey")
        if access != "open":
            refusal = self._authorize(key, access)
            if refusal is not None:
                return refusal
        fault = self._faults.pick(endpoint, STATUS_FAULTS)
        if fault is not None:
            return await self._status_fault(fault)
        if access != "open" and endpoint not in _UNMETERED:
            refused = self._quotas.consume(str(key))
            if refused is not None:
                return api_error(429, "QuotaExceededError", refused)
        response = await handler(request)
        if endpoint in _STREAMING or response.status != 200:
            return response
        body = getattr(response, "body", None)
        body_fault = self._faults.pick(endpoint, BODY_FAULTS)
        if body_fault is None or not isinstance(body, bytes):
            return response
        if body_fault == "malformed":
            # Valid UTF-8 (cut on a character boundary) that is not valid JSON.
            half = body[: len(body) // 2].decode("utf-8", "ignore").encode()
            return web.Response(body=half + b"\x00<malformed", content_type=JSON)
        return await send_stream(request, [body], len(body), JSON, "truncated")

    def _authorize(self, key: str | None, access: Access) -> web.Response | None:
        if not key:
            return api_error(401, "AuthenticationRequiredError", "X-Apikey header is missing")
        if key not in self._keys:
            return api_error(401, "WrongCredentialsError", "Wrong API key")
        if access == "premium" and not self._keys[key].premium:
            return api_error(403, "ForbiddenError", _PREMIUM_MESSAGE)
        return None

    async def _status_fault(self, fault: str) -> web.Response:
        if fault == "timeout":
            await asyncio.sleep(self.fault_timeout_seconds)
            return api_error(504, "DeadlineExceededError", "The operation took too long")
        return api_error(*_STATUS_FAULT_ERRORS[fault])

    async def _unknown(self, request: web.Request) -> web.Response:
        """A VirusTotal endpoint the emulator does not implement (its path is logged)."""
        request[_DETAIL] = {"path": request.path}
        message = f"Resource not found: {request.path} (not implemented by the emulator)"
        return api_error(404, "NotFoundError", message)

    def _served(self, obj: dict, request: web.Request) -> dict:
        """A looked-up object as this request gets it: with GTI only for a GTI key asking."""
        key = self._keys.get(request.headers.get("x-apikey", ""))
        licensed = key is not None and key.gti and asks_for_gti(request.headers)
        return as_served(obj, licensed, self.corpus.assess_gti)

    # -- Livehunt ----------------------------------------------------------------------------

    def _stream_item(self, entry: StreamEntry, descriptors_only: bool) -> dict:
        """The item as served; unlike ``Corpus.notification`` it shares the stored context
        (serialised at once), which keeps pages cheap."""
        context = {"context_attributes": entry.context}
        if descriptors_only:
            return {"type": entry.object_type, "id": entry.object_id, **context}
        return {**self.corpus.objects(entry.object_type)[entry.object_id], **context}

    async def _ioc_stream(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            stream_filter = parse_filter(query.get("filter", ""))
            limit = parse_limit(query.get("limit"))
            after = decode_cursor(query["cursor"]) if query.get("cursor") else None
            descriptors_only = _is_true(query.get("descriptors_only"))
        except StreamQueryError as err:
            return api_error(400, "InvalidArgumentError", str(err))
        entries, more = self._index.page(stream_filter, limit, after, self._deleted)
        request[_DETAIL] = {
            "filter": query.get("filter", ""),
            "cursor": query.get("cursor") or None,
            "files": [entry.object_id for entry in entries if entry.object_type == "file"],
            "rulesets": _ruleset_ids(entries),
        }
        body: dict[str, Any] = {
            "data": [self._stream_item(entry, descriptors_only) for entry in entries],
            "meta": {},
            "links": {"self": str(request.url)},
        }
        if more:
            cursor = encode_cursor(entries[-1])
            body["meta"]["cursor"] = cursor
            body["links"]["next"] = str(request.url.update_query(cursor=cursor))
        return json_ok(body)

    async def _delete(self, request: web.Request) -> web.Response:
        notification_id = request.match_info["id"]
        if notification_id not in self._index or notification_id in self._deleted:
            return api_error(404, "NotFoundError", f"Notification {notification_id} not found")
        self._deleted.add(notification_id)
        return json_ok({})

    async def _hunting(self, request: web.Request) -> web.Response:
        ruleset_id = request.match_info["id"]
        request[_DETAIL] = {"ruleset": ruleset_id}
        found = self.hunting.get(ruleset_id)
        if found is None:
            return api_error(404, "NotFoundError", f'Ruleset "{ruleset_id}" not found')
        return json_ok({"data": found})

    async def _hunting_list(self, request: web.Request) -> web.Response:
        try:
            page, cursor = self.hunting.page(request.query)
        except RulesetError as err:
            return api_error(err.status, err.code, str(err))
        body: dict[str, Any] = {"data": page, "meta": {}, "links": {"self": str(request.url)}}
        if cursor:
            body["meta"]["cursor"] = cursor
            body["links"]["next"] = str(request.url.update_query(cursor=cursor))
        return json_ok(body)

    async def _hunting_call(self, request: web.Request, call: Callable[[Any], Any]) -> web.Response:
        """A ruleset write: the JSON body to `call`, its answer as `data` (or an error)."""
        request[_DETAIL] = {"ruleset": request.match_info.get("id")}
        try:
            body = await request.json() if request.can_read_body else None
            answer = call(body)
        except RulesetError as err:
            return api_error(err.status, err.code, str(err))
        except ValueError:
            return api_error(400, "InvalidArgumentError", "the body is not JSON")
        return json_ok({"data": answer} if answer is not None else {})

    async def _hunting_add(self, request: web.Request) -> web.Response:
        return await self._hunting_call(request, self.hunting.create)

    async def _hunting_patch(self, request: web.Request) -> web.Response:
        ruleset_id = request.match_info["id"]
        return await self._hunting_call(request, lambda body: self.hunting.patch(ruleset_id, body))

    async def _hunting_del(self, request: web.Request) -> web.Response:
        ruleset_id = request.match_info["id"]
        return await self._hunting_call(request, lambda _: self.hunting.delete(ruleset_id))

    async def _hunting_editors(self, request: web.Request) -> web.Response:
        ruleset_id = request.match_info["id"]
        return await self._hunting_call(
            request, lambda body: self.hunting.add_editors(ruleset_id, body)
        )

    def _hunting_notification(
        self, ruleset_id: str, ruleset_name: str, rule: str, file_id: str, date: int
    ) -> dict:
        """A Livehunt notification of a ruleset for a corpus file, added to `/ioc_stream`."""
        found = self._find_file(file_id)
        if found is None:
            raise RulesetError(404, "NotFoundError", f'File "{file_id}" not found')
        notification_id = str(8 * 10**18 + len(self._notified))
        context = {
            "notification_id": notification_id,
            "notification_date": date,
            "origin": "hunting",
            "sources": [{"type": "hunting_ruleset", "id": ruleset_id, "label": ruleset_name}],
            "tags": [rule.lower()],
            "hunting_info": {
                "rule_name": rule,
                "snippet": "",
                "source_country": "",
                "source_key": secrets.token_hex(4),
            },
        }
        self._notified.append(StreamEntry("file", found["id"], context))
        entries = sorted(
            [*self.corpus.stream, *self._notified],
            key=lambda entry: (-entry.date, entry.notification_id),
        )
        self._index = StreamIndex(entries)
        return {"type": "file", "id": found["id"], "context_attributes": context}

    async def _post_notify(self, request: web.Request) -> web.Response:
        """`{"file": sha256, "date": epoch}`: the ruleset matches that corpus file (Livehunt)."""
        try:
            payload = await request.json()
            date = payload.get("date")
            item = self.hunting.notify(
                request.match_info["id"], str(payload["file"]), None if date is None else int(date)
            )
        except RulesetError as err:
            return api_error(err.status, err.code, str(err))
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            return api_error(400, "InvalidArgumentError", f"invalid notification: {err}")
        return json_ok({"data": item})

    async def _yara_ruleset(self, request: web.Request) -> web.Response:
        return self._lookup(self.corpus.yara_rulesets, request.match_info["id"], "YARA ruleset")

    @staticmethod
    def _lookup(objects: Mapping[str, dict], key: str, what: str) -> web.Response:
        obj = objects.get(key)
        if obj is None:
            return api_error(404, "NotFoundError", f'{what} "{key}" not found')
        return json_ok({"data": obj})

    # -- files -------------------------------------------------------------------------------

    def _find_file(self, file_hash: str) -> dict | None:
        """What this emulator analysed wins over the corpus (a file the corpus holds
        unanalysed is analysed once uploaded)."""
        return self._submitted_files.get(file_hash.lower()) or self.corpus.find_file(file_hash)

    def _file_or_error(self, file_hash: str) -> dict | web.Response:
        if not _HASH.fullmatch(file_hash.lower()):
            return api_error(400, "InvalidArgumentError", f'"{file_hash}" is not a valid file hash')
        obj = self._find_file(file_hash)
        if obj is None:
            return api_error(404, "NotFoundError", f'File "{file_hash}" not found')
        return obj

    async def _file(self, request: web.Request) -> web.Response:
        found = self._file_or_error(request.match_info["id"])
        if isinstance(found, web.Response):
            return found
        return json_ok({"data": self._served(found, request)})

    async def _file_download(self, request: web.Request) -> web.Response:
        """Redirect to a key-less, unguessable storage URL, as VirusTotal does."""
        request[_DETAIL] = {"file": request.match_info["id"].lower()}
        found = self._file_or_error(request.match_info["id"])
        if isinstance(found, web.Response):
            return found
        request[_DETAIL] = {"file": found["id"]}
        if self.corpus.sample_size(found["id"]) is None:
            return api_error(404, "NotFoundError", f'File "{found["id"]}" content not found')
        token = secrets.token_urlsafe(18)
        self._downloads[token] = (found["id"], self._faults.pick("file_download", BODY_FAULTS))
        location = f"{request.url.origin()}/_emulator/samples/{token}"
        return web.Response(status=302, headers={"Location": location})

    async def _sample(self, request: web.Request) -> web.StreamResponse:
        download = self._downloads.get(request.match_info["id"])
        if download is None:
            return api_error(404, "NotFoundError", "Unknown or expired download URL")
        sha256, fault = download
        request[_DETAIL] = {"sha256": sha256}
        fault = fault or self._faults.pick("sample", BODY_FAULTS)
        size = self.corpus.sample_size(sha256) or 0
        chunks = self.corpus.sample_chunks(sha256)
        return await send_stream(request, chunks, size, "application/octet-stream", fault)

    async def _file_upload_url(self, request: web.Request) -> web.Response:
        token = secrets.token_urlsafe(18)
        self._upload_tokens.add(token)
        return json_ok({"data": f"{request.url.origin()}/_emulator/uploads/{token}"})

    async def _file_upload(self, request: web.Request) -> web.Response:
        return await self._receive(request, MAX_DIRECT_UPLOAD)

    async def _upload(self, request: web.Request) -> web.Response:
        """POST to a single-use upload URL (larger files)."""
        token = request.match_info["id"]
        if token not in self._upload_tokens:
            return api_error(404, "NotFoundError", "Unknown or already used upload URL")
        self._upload_tokens.discard(token)
        return await self._receive(request, MAX_URL_UPLOAD)

    async def _receive(self, request: web.Request, limit: int) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            return api_error(400, "BadRequestError", "Expected a multipart/form-data body")
        upload = None
        async for part in await request.multipart():
            if isinstance(part, BodyPartReader) and part.name == "file" and upload is None:
                upload = await _digest_part(part)
            else:
                await part.release()
        if upload is None:
            return api_error(400, "BadRequestError", 'Missing form field "file"')
        if upload.size > limit:
            message = f"File larger than {limit // MIB} MB; use /files/upload_url"
            return api_error(413, "RequestEntityTooLargeError", message)
        now = int(self._clock())
        known = self._find_file(upload.hashes.sha256)
        target = known
        if known is None or not is_analysed(known):
            file_type = sniff(upload.head)
            new = submitted_file(upload.hashes, upload.size, upload.filename, file_type, now)
            target = analysed_at(new, now, known)
        info = {**upload.hashes.as_dict(), "size": upload.size}
        analysis_id = base64.urlsafe_b64encode(f"{upload.hashes.md5}:{now}".encode()).decode()
        self._analyses[analysis_id] = _Analysis(
            "file", target, {"file_info": info}, now, self._clock()
        )
        return self._analysis_created(analysis_id)

    # -- URLs, domains, IPs ------------------------------------------------------------------

    async def _url_submit(self, request: web.Request) -> web.Response:
        form = await request.post()
        url = form.get("url")
        if not isinstance(url, str) or not url.strip():
            return api_error(400, "BadRequestError", 'Missing form field "url"')
        key, now = url_id(url), int(self._clock())
        known = self._submitted_urls.get(key) or self.corpus.urls.get(key)
        target = known
        if known is None or not is_analysed(known):
            target = analysed_at(url_object(url, 0, now), now, known)
        analysis_id = f"u-{key}-{now}"
        meta = {"url_info": {"id": key, "url": url}}
        self._analyses[analysis_id] = _Analysis("url", target, meta, now, self._clock())
        return self._analysis_created(analysis_id)

    async def _url(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        for key in _url_keys(raw):
            obj = self._submitted_urls.get(key) or self.corpus.urls.get(key)
            if obj is not None:
                return json_ok({"data": self._served(obj, request)})
        return api_error(404, "NotFoundError", f'URL "{raw}" not found')

    async def _domain(self, request: web.Request) -> web.Response:
        domain = request.match_info["id"]
        obj = self.corpus.domains.get(domain)
        if obj is None:
            return api_error(404, "NotFoundError", f'Domain "{domain}" not found')
        return json_ok({"data": self._served(obj, request)})

    async def _resolutions(self, request: web.Request) -> web.Response:
        domain = request.match_info["id"]
        resolutions = self.corpus.resolutions.get(domain)
        if resolutions is None:
            return api_error(404, "NotFoundError", f'Domain "{domain}" not found')
        try:
            limit = parse_limit(request.query.get("limit"))
            offset = int(_b64(request.query["cursor"])) if request.query.get("cursor") else 0
        except (StreamQueryError, ValueError, binascii.Error):
            return api_error(400, "InvalidArgumentError", "invalid limit or cursor")
        body: dict[str, Any] = {
            "data": resolutions[offset : offset + limit],
            "meta": {"count": len(resolutions)},
            "links": {"self": str(request.url)},
        }
        if offset + limit < len(resolutions):
            cursor = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
            body["meta"]["cursor"] = cursor
            body["links"]["next"] = str(request.url.update_query(cursor=cursor))
        return json_ok(body)

    async def _ip_address(self, request: web.Request) -> web.Response:
        address = request.match_info["id"]
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return api_error(400, "InvalidArgumentError", f'"{address}" is not a valid IP address')
        obj = self.corpus.ip_addresses.get(address)
        if obj is None:
            return api_error(404, "NotFoundError", f'IP address "{address}" not found')
        return json_ok({"data": self._served(obj, request)})

    # -- analyses and quotas -----------------------------------------------------------------

    @staticmethod
    def _analysis_created(analysis_id: str) -> web.Response:
        link = f"{API_ROOT}/analyses/{analysis_id}"
        return json_ok({"data": {"type": "analysis", "id": analysis_id, "links": {"self": link}}})

    async def _analysis(self, request: web.Request) -> web.Response:
        analysis_id = request.match_info["id"]
        analysis = self._analyses.get(analysis_id)
        if analysis is None:
            return api_error(404, "NotFoundError", f'Analysis "{analysis_id}" not found')
        elapsed = self._clock() - analysis.started
        if analysis.polls >= self._analysis_polls and elapsed >= self._analysis_seconds:
            status = "completed"
        else:
            status = "queued" if analysis.polls == 0 else "in-progress"
        analysis.polls += 1
        target = analysis.target["attributes"]
        stats = dict.fromkeys(target["last_analysis_stats"], 0)
        attrs: dict[str, Any] = {
            "date": analysis.date,
            "status": status,
            "stats": stats,
            "results": {},
        }
        if status == "completed":
            self._register(analysis)
            attrs.update(
                stats=target["last_analysis_stats"], results=target["last_analysis_results"]
            )
        data = {
            "type": "analysis",
            "id": analysis_id,
            "links": {"self": f"{API_ROOT}/analyses/{analysis_id}"},
            "attributes": attrs,
        }
        return json_ok({"data": data, "meta": analysis.meta})

    def _register(self, analysis: _Analysis) -> None:
        """A completed analysis makes its file or URL known to the lookups; a later analysis
        (a re-analysis, `reanalysis.py`) replaces an earlier one, never the other way."""
        target = analysis.target
        if analysis.kind == "url":
            keys, known = [target["id"]], self._submitted_urls
        else:
            attrs = target["attributes"]
            keys, known = [attrs["sha256"], attrs["md5"], attrs["sha1"]], self._submitted_files
        for key in keys:
            held = known.get(key)
            if held is None or analysed_date(held) < analysed_date(target):
                known[key] = target

    async def _overall_quotas(self, request: web.Request) -> web.Response:
        user = request.match_info["id"]
        if user == request.headers.get("x-apikey"):
            return json_ok({"data": self._quotas.report(user)})
        if user in self._keys:
            return api_error(403, "ForbiddenError", "You are not allowed to see this user's quotas")
        return api_error(404, "NotFoundError", "User not found")

    # -- emulator controls -------------------------------------------------------------------

    async def _get_stats(self, request: web.Request) -> web.Response:
        return json_ok({"requests": self.stats()})

    async def _delete_stats(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return json_ok({})

    async def _get_requests(self, request: web.Request) -> web.Response:
        """The request log (see `requests`); the header says how many were not logged."""
        response = json_ok(self.requests())
        response.headers["X-Emulator-Requests-Dropped"] = str(self.requests_dropped)
        return response

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
            self.set_faults(str(payload.get("spec", "")), int(payload.get("seed", 0)))
        except (ValueError, AttributeError) as err:
            return api_error(400, "InvalidArgumentError", str(err))
        return json_ok({"spec": self.faults})

    async def _post_analysis(self, request: web.Request) -> web.Response:
        """`{"polls": 2, "seconds": 0}`: how long uploads and URL submissions take."""
        try:
            payload = await request.json()
            self.set_analysis_time(int(payload.get("polls", 2)), float(payload.get("seconds", 0)))
        except (ValueError, TypeError, AttributeError) as err:
            return api_error(400, "InvalidArgumentError", f"invalid analysis time: {err}")
        return json_ok({"polls": self._analysis_polls, "seconds": self._analysis_seconds})

    async def _get_targets(self, request: web.Request) -> web.Response:
        """The corpus's enrichment targets (`Corpus.targets()`), for another process."""
        try:
            targets = self.corpus.targets().as_dict()
        except LookupError as err:
            return api_error(404, "NotFoundError", str(err))
        targets["unknown_file_content"] = base64.b64encode(targets["unknown_file_content"]).decode()
        return json_ok(targets)

    async def _post_spend(self, request: web.Request) -> web.Response:
        """`{"key": "...", "count": 10}`: another client spends that key's quota."""
        try:
            payload = await request.json()
            accepted = self.spend(str(payload["key"]), int(payload.get("count", 1)))
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            return api_error(400, "InvalidArgumentError", f"invalid spend: {err}")
        return json_ok({"accepted": accepted})

    async def _post_latency(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
            self.set_latency(float(payload["ms"]))
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            return api_error(400, "InvalidArgumentError", f"invalid latency: {err}")
        return json_ok({"ms": self._latency * 1000})


def _ruleset_ids(entries: Iterable[StreamEntry]) -> list[str]:
    """The distinct hunting rulesets a page's notifications name, in order: their
    `sources` (as the corpus builds the context), else the older `ruleset_id`."""
    found: dict[str, None] = {}
    for entry in entries:
        sources = entry.context.get("sources") or []
        for source in sources:
            if (
                isinstance(source, dict)
                and source.get("type", "hunting_ruleset") == "hunting_ruleset"
                and source.get("id")
            ):
                found.setdefault(str(source["id"]), None)
        if not sources and entry.context.get("ruleset_id"):
            found.setdefault(str(entry.context["ruleset_id"]), None)
    return list(found)


def analysed_date(obj: dict) -> int:
    return int((obj.get("attributes") or {}).get("last_analysis_date") or 0)


def _b64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
