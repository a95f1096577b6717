"""Retrohunt on VirusTotal: jobs, a job's matching files, starting a job; a match read as a
Livehunt notification, so that the Livehunt filters and mapping take it as they are.

Endpoints (VirusTotal API v3, premium): `GET /intelligence/retrohunt_jobs` (paged by cursor,
`filter=status:finished`), `GET /intelligence/retrohunt_jobs/{id}`,
`GET /intelligence/retrohunt_jobs/{id}/matching_files` (full File objects, paged by cursor),
`POST /intelligence/retrohunt_jobs`. Every call goes through the session: retries, the
deployment's quota budget and the call accounting (endpoints `retrohunt_jobs`,
`retrohunt_job`, `retrohunt_matching_files`, `retrohunt_job_create`).

A match as a notification (`match_as_notification`): VirusTotal documents no context
attributes for a Retrohunt match (XSOAR's and vt2m's importers read plain File objects), so the
file gets the ones a Livehunt notification has, from its job: `notification_id`
`<job id>:<sha256>` (stable: a re-read of the job gives the same ids), `notification_date`
the job's `finish_date` (when VirusTotal reported the match; else its creation date), the job
as its one source (`sources: [{id: <job id>}]`, so the job plays the ruleset: its `rules` are
the YARA source), and the rule: the match's own `rule_name` when VirusTotal gives one, else
the job's only rule; a job of several rules gives no rule (the bundle then counts the YARA
rule as missing rather than guessing which rule matched).
"""

from __future__ import annotations

import re
from typing import Any

from vt_pipeline.virustotal import objects as n
from vt_pipeline.virustotal.resource import VirusTotalError, VirusTotalSession

PAGE_SIZE = 40  # what XSOAR's Retrohunt feed asks per page
CORPORA = ("main", "goodware")
FINISHED = "finished"
# A rule's declaration (`private`/`global` modifiers allowed); comments are stripped first.
_RULE = re.compile(r"^\s*(?:(?:private|global)\s+)*rule\s+([A-Za-z_]\w{0,127})\b", re.MULTILINE)
_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)


async def retrohunt_jobs(session: VirusTotalSession, status: str = "") -> list[dict[str, Any]]:
    """Every Retrohunt job of the key (all pages), optionally of one status; raw objects."""
    params: dict[str, Any] = {"limit": PAGE_SIZE}
    if status:
        params["filter"] = f"status:{status}"
    return await _all_pages(session, "retrohunt_jobs", "/intelligence/retrohunt_jobs", params)


async def retrohunt_job(session: VirusTotalSession, job_id: str) -> dict[str, Any]:
    """One job's raw object."""
    _check_id(job_id)
    body = await session.get_json(
        "retrohunt_job",
        "/intelligence/retrohunt_jobs/{}",
        job_id,
        what="Retrohunt jobs",
    )
    data = body.get("data")
    if not isinstance(data, dict) or data.get("type") != "retrohunt_job":
        raise VirusTotalError(f"VirusTotal answered no retrohunt_job for {job_id}")
    return data


async def matching_files(session: VirusTotalSession, job_id: str) -> list[dict[str, Any]]:
    """Every file a job matched (all pages), raw File objects, each once."""
    _check_id(job_id)
    path = f"/intelligence/retrohunt_jobs/{job_id}/matching_files"
    return await _all_pages(session, "retrohunt_matching_files", path, {"limit": PAGE_SIZE})


async def start_retrohunt_job(
    session: VirusTotalSession,
    rules: str,
    corpus: str = "main",
    time_range: tuple[int, int] | None = None,
    notification_email: str = "",
) -> dict[str, Any]:
    """Start a job; its raw object. Not idempotent on VirusTotal's side: a caller that may have
    started it already finds it first (by its rules, `find_job_by_rules`)."""
    attributes: dict[str, Any] = {"rules": rules, "corpus": corpus}
    if time_range is not None:
        attributes["time_range"] = {"start": int(time_range[0]), "end": int(time_range[1])}
    if notification_email:
        attributes["notification_email"] = notification_email
    body = await session.post_json(
        "retrohunt_job_create",
        "/intelligence/retrohunt_jobs",
        body={"data": {"type": "retrohunt_job", "attributes": attributes}},
        what="Starting Retrohunt jobs",
    )
    data = body.get("data")
    if not isinstance(data, dict) or not data.get("id"):
        raise VirusTotalError("VirusTotal started a Retrohunt job but answered no job id")
    return data


def find_job_by_rules(jobs: list[dict[str, Any]], rules: str) -> dict[str, Any] | None:
    """The newest job running exactly these rules (whitespace at the ends aside), if any."""
    wanted = rules.strip()
    found = [j for j in jobs if str(n.attributes(j).get("rules") or "").strip() == wanted]
    return max(
        found,
        key=lambda j: n.parse_timestamp(n.attributes(j).get("creation_date")) or 0,
        default=None,
    )


def job_status(job: dict[str, Any]) -> str:
    return str(n.attributes(job).get("status") or "")


def rule_names(rules: Any) -> list[str]:
    """The names of the rules a YARA source declares, in order (a light read, no compile)."""
    if not isinstance(rules, str):
        return []
    return list(dict.fromkeys(_RULE.findall(_COMMENTS.sub("", rules))))


def match_as_notification(job: dict[str, Any], item: Any) -> Any:
    """A matching file with the context attributes of a Livehunt notification (module
    docstring). Anything that is not a JSON object is returned as it is: the filters drop it
    as malformed, with the reason."""
    if not isinstance(item, dict):
        return item
    attrs = n.attributes(job)
    job_id = str(job.get("id") or "")
    own = n.context(item)
    date = n.parse_timestamp(attrs.get("finish_date")) or n.parse_timestamp(
        attrs.get("creation_date")
    )
    names = rule_names(attrs.get("rules"))
    rule = own.get("rule_name") or (names[0] if len(names) == 1 else None)
    sha256 = n.valid_hash(n.attributes(item).get("sha256")) or n.valid_hash(item.get("id"))
    context: dict[str, Any] = {
        **own,
        "notification_id": f"{job_id}:{sha256 or item.get('id')}",
        "notification_date": date,
        "origin": "retrohunt",
        "sources": [{"id": job_id, "label": ""}],
    }
    if rule:
        context["hunting_info"] = {"rule_name": str(rule)}
    return {**item, "context_attributes": context}


async def _all_pages(
    session: VirusTotalSession, endpoint: str, path: str, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every object of a cursor-paged collection, each id once; stops on a repeated cursor."""
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    cursors: set[str] = set()
    while True:
        page = await session.get_json(endpoint, path, params=params, what="Retrohunt")
        for item in page.get("data") or []:
            key = str(item.get("id")) if isinstance(item, dict) else repr(item)
            if key not in seen:
                seen.add(key)
                items.append(item)
        cursor = (page.get("meta") or {}).get("cursor")
        if not cursor or cursor in cursors:
            return items
        cursors.add(cursor)
        params = {**params, "cursor": cursor}


def _check_id(job_id: str) -> None:
    """Job ids go into a request path: plain tokens only (as ruleset ids)."""
    if not n.is_valid_ruleset_id(job_id):
        raise VirusTotalError(f"refusing a Retrohunt job with unsafe id {job_id[:80]!r}")
