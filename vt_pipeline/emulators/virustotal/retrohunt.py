"""Retrohunt jobs of the emulated VirusTotal: started by `POST /intelligence/retrohunt_jobs`
(or by a test with `RetrohuntJobs.add`), running for a while, then finished with their matches.

Shapes from VirusTotal's reference (retrohunt job object and list example: `id` like
`spellman-1598966772`, attributes `corpus`, `creation_date`, `eta_seconds`,
`notification_email`, `num_matches`, `num_matches_outside_time_range`, `progress`, `rules`,
`scanned_bytes`, `start_date`, `status`, `time_range`; list paged by `meta.cursor` and
`links.next`; `POST` body `{"data": {"type": "retrohunt_job", "attributes": {"rules", "corpus",
"notification_email", "time_range": {"start", "end"}}}}`). Matching files are full File objects
as XSOAR's and vt2m's importers read them, with no context attributes (VirusTotal documents none
for them). `finish_date` is set once a job is finished (the job object schema names it).

A job a test adds names its matches (corpus sha256s); one started through the API matches a
deterministic share of the corpus's files, chosen from its rules' text, so the same rules
always match the same files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from vt_pipeline.emulators.virustotal.objects import API_ROOT

CORPORA = ("main", "goodware")
STATUSES = ("starting", "running", "aborting", "aborted", "finished")
DEFAULT_LIMIT = 10  # the reference's default page size
MAX_LIMIT = 40
DEFAULT_RUN_SECONDS = 1.0  # how long a job started through the API runs (emulator clock)
MAX_MATCHES = 20  # at most this many corpus files match a job started through the API
MATCH_SHARE = 1 / 16  # the share of the corpus's files its rules match
LOOKBACK_SECONDS = 90 * 86_400  # the default time range of a job: the last 90 days
SCANNED_BYTES_PER_SECOND = 4_000_000_000
USER = "emulator"
_STATUS_FILTER = re.compile(r"^\s*status:(\w+)\s*$")
_RULE = re.compile(r"^\s*(?:(?:private|global)\s+)*rule\s+[A-Za-z_]\w*", re.MULTILINE)


class RetrohuntRequestError(ValueError):
    """A request VirusTotal would refuse with 400 InvalidArgumentError."""


@dataclass
class Job:
    id: str
    rules: str
    corpus: str
    created: int
    run_seconds: float
    matches: list[str]
    time_range: dict[str, int]
    notification_email: str | None = None
    aborted_at: float | None = None
    began: float = 0.0  # the emulator clock when it started (created is whole seconds)

    def status(self, now: float) -> str:
        elapsed = now - self.began
        if self.aborted_at is not None:
            return "aborted"
        if elapsed >= self.run_seconds:
            return "finished"
        return "starting" if elapsed < self.run_seconds / 10 else "running"

    def finish_date(self) -> int:
        return int(self.created + self.run_seconds + 0.999)

    def as_object(self, now: float) -> dict[str, Any]:
        status = self.status(now)
        elapsed = max(0.0, now - self.began)
        progress = 100.0 if status == "finished" else round(100 * elapsed / self.run_seconds, 5)
        found = len(self.matches)
        if status != "finished":
            found = int(found * progress / 100)
        attributes: dict[str, Any] = {
            "corpus": self.corpus,
            "creation_date": self.created,
            "eta_seconds": max(0, int(self.run_seconds - elapsed)) if status != "finished" else 0,
            "num_matches": found,
            "num_matches_outside_time_range": 0,
            "progress": progress,
            "rules": self.rules,
            "scanned_bytes": int(SCANNED_BYTES_PER_SECOND * min(elapsed, self.run_seconds)),
            "start_date": self.created + (1 if self.run_seconds >= 2 else 0),
            "status": status,
            "time_range": dict(self.time_range),
        }
        if self.notification_email:
            attributes["notification_email"] = self.notification_email
        if status == "finished":
            attributes["finish_date"] = self.finish_date()
        return {
            "attributes": attributes,
            "id": self.id,
            "links": {"self": f"{API_ROOT}/intelligence/retrohunt_jobs/{self.id}"},
            "type": "retrohunt_job",
        }


class RetrohuntJobs:
    """Every Retrohunt job of the emulated VirusTotal (thread-safe), newest first."""

    def __init__(self, files: Mapping[str, dict], clock: Callable[[], float]) -> None:
        self._files = files
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.run_seconds = DEFAULT_RUN_SECONDS

    def add(
        self,
        rules: str,
        matches: list[str] | None = None,
        *,
        corpus: str = "main",
        created: int | None = None,
        run_seconds: float | None = None,
        time_range: dict[str, int] | None = None,
        notification_email: str | None = None,
    ) -> str:
        """A job (finished at once unless `run_seconds`); its id. `matches` are corpus sha256s
        (default: what its rules match in the corpus)."""
        if not _RULE.search(rules or ""):
            raise RetrohuntRequestError("rules: no YARA rule found")
        if corpus not in CORPORA:
            raise RetrohuntRequestError(f"corpus must be one of {', '.join(CORPORA)}")
        now = self._clock()
        with self._lock:
            stamp = int(now if created is None else created)
            while f"{USER}-{stamp}" in self._jobs:
                stamp += 1
            job_id = f"{USER}-{stamp}"
            end = int(now)
            self._jobs[job_id] = Job(
                id=job_id,
                rules=rules,
                corpus=corpus,
                created=stamp,
                run_seconds=max(0.001, self.run_seconds if run_seconds is None else run_seconds),
                matches=list(self._matches_of(rules) if matches is None else matches),
                time_range=dict(time_range or {"start": end - LOOKBACK_SECONDS, "end": end}),
                notification_email=notification_email,
                began=now if created is None else float(created),
            )
        return job_id

    def _matches_of(self, rules: str) -> list[str]:
        """A deterministic share of the corpus's files (by rules text), at most MAX_MATCHES."""
        threshold = int(MATCH_SHARE * 2**32)
        chosen = [
            sha256
            for sha256 in sorted(self._files)
            if int.from_bytes(hashlib.sha256(f"{rules}\0{sha256}".encode()).digest()[:4], "big")
            < threshold
        ]
        return chosen[:MAX_MATCHES]

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.as_object(self._clock()) if job else None

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    # -- handlers (the gate in api.py has checked key, faults and quota) -----------------------

    async def list_jobs(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            limit = _limit(query.get("limit"))
            offset = _offset(query.get("cursor"))
            wanted = _status(query.get("filter", ""))
        except RetrohuntRequestError as err:
            return _error(400, "InvalidArgumentError", str(err))
        now = self._clock()
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: (-j.created, j.id))
            objects = [j.as_object(now) for j in jobs if not wanted or j.status(now) == wanted]
        return _page(request, objects, offset, limit)

    async def get_job(self, request: web.Request) -> web.Response:
        found = self.get(request.match_info["id"])
        if found is None:
            return _not_found(request.match_info["id"])
        return web.json_response({"data": found})

    async def matching_files(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        try:
            limit = _limit(request.query.get("limit"))
            offset = _offset(request.query.get("cursor"))
        except RetrohuntRequestError as err:
            return _error(400, "InvalidArgumentError", str(err))
        now = self._clock()
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return _not_found(job_id)
            found = job.as_object(now)["attributes"]["num_matches"]
            files = [self._files[sha] for sha in job.matches[:found] if sha in self._files]
        return _page(request, files, offset, limit)

    async def create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "InvalidArgumentError", "the request body is not JSON")
        data = body.get("data") if isinstance(body, dict) else None
        attrs = data.get("attributes") if isinstance(data, dict) else None
        if not isinstance(attrs, dict) or data.get("type") != "retrohunt_job":
            return _error(
                400, "InvalidArgumentError", 'expected {"data": {"type": "retrohunt_job", ...}}'
            )
        rules = attrs.get("rules")
        time_range = attrs.get("time_range")
        if time_range is not None and not (
            isinstance(time_range, dict)
            and all(isinstance(time_range.get(k), int) for k in ("start", "end"))
            and time_range["start"] < time_range["end"]
        ):
            return _error(400, "InvalidArgumentError", "time_range needs integer start < end")
        try:
            job_id = self.add(
                rules if isinstance(rules, str) else "",
                corpus=str(attrs.get("corpus") or "main"),
                time_range=time_range,
                notification_email=attrs.get("notification_email") or None,
            )
        except RetrohuntRequestError as err:
            return _error(400, "InvalidArgumentError", str(err))
        return web.json_response({"data": self.get(job_id)})


def _page(request: web.Request, objects: list[dict], offset: int, limit: int) -> web.Response:
    page = objects[offset : offset + limit]
    body: dict[str, Any] = {
        "data": page,
        "links": {"self": str(request.url)},
        "meta": {"count": len(objects)},
    }
    if offset + limit < len(objects):
        cursor = base64.urlsafe_b64encode(str(offset + limit).encode()).decode().rstrip("=")
        body["meta"]["cursor"] = cursor
        body["links"]["next"] = str(request.url.update_query(cursor=cursor))
    return web.json_response(body)


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    try:
        limit = int(value)
    except ValueError:
        raise RetrohuntRequestError(f"invalid limit: {value!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise RetrohuntRequestError(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        return int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except (binascii.Error, ValueError):
        raise RetrohuntRequestError("invalid cursor") from None


def _status(text: str) -> str:
    if not text.strip():
        return ""
    found = _STATUS_FILTER.match(text)
    if not found or found.group(1) not in STATUSES:
        raise RetrohuntRequestError(f"unsupported filter {text!r} (status:<{'|'.join(STATUSES)}>)")
    return found.group(1)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _not_found(job_id: str) -> web.Response:
    return _error(404, "NotFoundError", f'Retrohunt job "{job_id}" not found')


# (method, path under /api/v3, endpoint name, access, RetrohuntJobs handler): served by api.py
ROUTES: tuple[tuple[str, str, str, Literal["open", "key", "premium"], str], ...] = (
    ("GET", "/intelligence/retrohunt_jobs", "retrohunt_jobs", "premium", "list_jobs"),
    ("POST", "/intelligence/retrohunt_jobs", "retrohunt_job_create", "premium", "create"),
    ("GET", "/intelligence/retrohunt_jobs/{id}", "retrohunt_job", "premium", "get_job"),
    (
        "GET",
        "/intelligence/retrohunt_jobs/{id}/matching_files",
        "retrohunt_matching_files",
        "premium",
        "matching_files",
    ),
)
