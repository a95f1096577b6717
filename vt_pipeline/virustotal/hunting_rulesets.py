"""Livehunt ruleset management: list every page, create, edit in place, delete, share.

The endpoints of `/intelligence/hunting_rulesets` (reference section 8), through a
`VirusTotalSession`, so every call is counted, retried and taken from the deployment's one
quota budget. Upstream's stream connector lists only the first page, and deletes then re-creates
a ruleset on every change (a new id each time); here a ruleset is edited in place (PATCH) and
found among all pages.

VT calls: `list_rulesets` one per 40 rulesets the key holds; the others one each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vt_pipeline.virustotal import objects as n
from vt_pipeline.virustotal.resource import VirusTotalError, VirusTotalSession

PATH = "/intelligence/hunting_rulesets"
PAGE_SIZE = 40  # the largest page VT serves on its collection endpoints
WHAT = "Livehunt ruleset management"


def _checked_id(ruleset_id: str) -> str:
    if not n.is_valid_ruleset_id(ruleset_id):
        raise VirusTotalError(f"refusing ruleset id {ruleset_id[:80]!r}: not a plain token")
    return ruleset_id


def _ruleset(body: dict[str, Any]) -> dict[str, Any]:
    data = body.get("data")
    if (
        not isinstance(data, dict)
        or not data.get("id")
        or not isinstance(data.get("attributes"), dict)
    ):
        raise VirusTotalError("VirusTotal answered a ruleset call without data.id/attributes")
    return data


async def list_rulesets(session: VirusTotalSession, filter_: str = "") -> list[dict[str, Any]]:
    """Every ruleset of the key (raw `data` objects), all pages, deduplicated by id."""
    params: dict[str, Any] = {"limit": PAGE_SIZE}
    if filter_:
        params["filter"] = filter_
    found: dict[str, dict[str, Any]] = {}
    cursors: set[str] = set()
    while True:
        page = await session.get_json("hunting_rulesets", PATH, params=params, what=WHAT)
        for item in page.get("data") or []:
            if isinstance(item, dict) and item.get("id"):
                found.setdefault(str(item["id"]), item)
        cursor = (page.get("meta") or {}).get("cursor")
        if not cursor or cursor in cursors:
            return list(found.values())
        cursors.add(cursor)
        params = {**params, "cursor": cursor}


async def create_ruleset(
    session: VirusTotalSession,
    *,
    name: str,
    rules: str,
    enabled: bool = True,
    limit: int = 100,
    notification_emails: Sequence[str] = (),
) -> dict[str, Any]:
    """Create a ruleset; its raw `data`. Not idempotent: find it by name before calling."""
    attributes: dict[str, Any] = {"name": name, "rules": rules, "enabled": enabled, "limit": limit}
    if notification_emails:
        attributes["notification_emails"] = list(notification_emails)
    body = {"data": {"type": "hunting_ruleset", "attributes": attributes}}
    return _ruleset(await session.post_json("hunting_ruleset_create", PATH, body=body, what=WHAT))


async def update_ruleset(
    session: VirusTotalSession, ruleset_id: str, attributes: dict[str, Any]
) -> dict[str, Any]:
    """Edit a ruleset in place (same id, its notifications kept); its raw `data`."""
    body = {"data": {"type": "hunting_ruleset", "id": ruleset_id, "attributes": attributes}}
    answer = await session.patch_json(
        "ruleset_update", PATH + "/{}", _checked_id(ruleset_id), body=body, what=WHAT
    )
    return _ruleset(answer)


async def delete_ruleset(session: VirusTotalSession, ruleset_id: str) -> bool:
    """Delete a ruleset; False when VT no longer has it (already deleted)."""
    try:
        await session.delete("ruleset_delete", PATH + "/{}", _checked_id(ruleset_id), what=WHAT)
    except VirusTotalError as exc:
        if exc.code == "NotFoundError":
            return False
        raise
    return True


async def add_editors(session: VirusTotalSession, ruleset_id: str, users: Sequence[str]) -> None:
    """Share a ruleset with VT users (upstream's VIRUSTOTAL_LIVEHUNT_SHARED_OWNERS)."""
    if not users:
        return
    body = {"data": [{"type": "user", "id": user} for user in users]}
    await session.post_json(
        "ruleset_editors",
        PATH + "/{}/relationships/editors",
        _checked_id(ruleset_id),
        body=body,
        what=WHAT,
    )
