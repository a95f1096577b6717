"""A looked-up object's relations (`contacted_ips`, `resolutions`...), at the fewest VT calls.

Quota rule (issue 19): VT returns a relation's descriptors (`{type, id}`, with a URL's
`context_attributes.url`) inside the object lookup when it is asked `?relationships=a,b`, so
the lookup itself carries every configured relation at no extra call. A relation costs one call
of its own (`GET /{collection}/{id}/{relation}?limit=N`, full objects, never one call per related
object) only when the lookup did not carry enough of it:
- the lookup came from the response cache, stored before the relation was configured;
- VT embeds a page of descriptors (20 in real payloads, UNCONFIRMED as a guarantee) and said
  there are more (`meta.cursor`) while the cap asks for more than it gave;
- a URL descriptor without its URL (VT names URLs by hash).
A relation's own call answers full objects, whose analysis stats give the related object VT's
score; embedded descriptors carry none (the observable is then sent without a score).

A relation that fails (404, 403 for a relation the key's licence does not cover, a malformed
answer) is a `Relation` with its `error`: the enrichment goes on without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vt_pipeline.config import invalid
from vt_pipeline.virustotal.objects import safe_text
from vt_pipeline.virustotal.reports import Relation, ReportKind, read_relation
from vt_pipeline.virustotal.resource import VirusTotalError, VirusTotalSession

# The relations each object kind may be expanded with (VIRUSTOTAL_{KIND}_RELATIONSHIPS).
RELATIONSHIPS: dict[ReportKind, tuple[str, ...]] = {
    "file": (
        "contacted_domains",
        "contacted_ips",
        "contacted_urls",
        "dropped_files",
        "execution_parents",
        "bundled_files",
        "itw_urls",
    ),
    "domain": (
        "resolutions",
        "communicating_files",
        "downloaded_files",
        "referrer_files",
        "subdomains",
    ),
    "ip_address": ("resolutions", "communicating_files", "downloaded_files"),
    "url": (
        "last_serving_ip_address",
        "downloaded_files",
        "redirects_to",
        "contacted_domains",
        "contacted_ips",
    ),
}
COLLECTIONS: dict[ReportKind, str] = {
    "file": "files",
    "ip_address": "ip_addresses",
    "domain": "domains",
    "url": "urls",
}
MAX_LIMIT = 40  # the largest page VT serves on a relationship endpoint


# The response cache: (stored response type, object id) -> a stored page or None; its writer.
Recent = Callable[[str, str], dict[str, Any] | None]
Store = Callable[[str, str, dict[str, Any]], None]


def relationship_names(variable: str, names: Any, kind: ReportKind) -> list[str]:
    """Relation names for a kind, lower-cased and deduplicated; a name VT has not for the kind
    fails (`ConfigError`) naming the variable, the value and what is accepted."""
    accepted = RELATIONSHIPS[kind]
    values = [str(name).strip().lower() for name in names or () if str(name).strip()]
    if any(name not in accepted for name in values):
        listed = ",".join(str(name) for name in names)
        raise invalid(variable, listed, "a comma-separated list of " + ", ".join(accepted))
    return list(dict.fromkeys(values))


def endpoint_name(kind: ReportKind, relation: str) -> str:
    """The relation's endpoint in the call accounting (`file_contacted_ips`...)."""
    return f"{kind}_{relation}"


def lookup_relationships(kind: ReportKind, wanted: Sequence[str]) -> list[str]:
    """The `relationships=` of an object lookup: the wanted relations VT knows for the kind."""
    return [name for name in wanted if name in RELATIONSHIPS.get(kind, ())]


async def fetch_relations(
    session: VirusTotalSession,
    kind: ReportKind,
    object_id: str,
    lookup: Mapping[str, Any],
    wanted: Sequence[str],
    limit: int,
    *,
    recent: Recent | None = None,
    store: Store | None = None,
) -> tuple[Relation, ...]:
    """Every wanted relation of the object (`object_id`: the id of its lookup path), at most
    `limit` objects each: from the lookup's embedded descriptors when they are enough, else one
    call per relation (module docstring). `recent`/`store`: the response cache, keyed by the
    relation's endpoint name and the object id. Never raises for VT's answers: a relation that
    cannot be had carries its `error`."""
    limit = max(1, min(limit, MAX_LIMIT))
    data = lookup.get("data") if isinstance(lookup, Mapping) else None
    embedded = data.get("relationships") if isinstance(data, dict) else None
    subject = _subject(kind, object_id, data)
    relations: list[Relation] = []
    for name in lookup_relationships(kind, wanted):
        part = embedded.get(name) if isinstance(embedded, dict) else None
        if _enough(part, limit):
            relations.append(read_relation(name, kind, subject, part["data"], limit=limit))
            continue
        relations.append(
            await _own_call(session, kind, object_id, subject, name, limit, recent, store)
        )
    return tuple(relations)


def _subject(kind: ReportKind, object_id: str, data: Any) -> str:
    """The subject's value as resolutions name it (a domain or an IP; VT's own id wins)."""
    own = data.get("id") if isinstance(data, dict) else None
    return str(own if isinstance(own, str) and own else object_id).lower()


def _enough(part: Any, limit: int) -> bool:
    """Whether an embedded relation answers the cap: VT gave it, gave all there is or at least
    `limit` items, and every URL descriptor names its URL."""
    if not isinstance(part, dict) or "data" not in part:
        return False
    items = part["data"]
    if items is None or isinstance(items, dict):  # one-to-one: the object or nothing
        return items is None or _named(items)
    if not isinstance(items, list):
        return False
    meta = part.get("meta")
    more = isinstance(meta, dict) and bool(meta.get("cursor"))
    if more and len(items) < limit:
        return False
    return all(_named(item) for item in items[:limit])


def _named(item: Any) -> bool:
    """A URL descriptor must carry its URL (its id is a hash); other descriptors name their
    object by id."""
    if not isinstance(item, dict) or item.get("type") != "url":
        return True
    attrs = item.get("attributes")
    context = item.get("context_attributes")
    return bool(
        (isinstance(attrs, dict) and attrs.get("url"))
        or (isinstance(context, dict) and context.get("url"))
    )


async def _own_call(
    session: VirusTotalSession,
    kind: ReportKind,
    object_id: str,
    subject: str,
    name: str,
    limit: int,
    recent: Recent | None,
    store: Store | None,
) -> Relation:
    """One call for one relation: `GET /{collection}/{id}/{relation}?limit=N` (full objects)."""
    endpoint = endpoint_name(kind, name)
    body = recent(endpoint, object_id) if recent is not None else None
    if body is not None and not _covers(body, limit):
        body = None  # stored with a smaller cap than asked now
    calls = 0
    if body is None:
        calls = 1
        path = f"/{COLLECTIONS[kind]}/{{}}/{name}"
        try:
            body = await session.get_json(
                endpoint, path, object_id, params={"limit": limit}, what=f"VirusTotal {name}"
            )
        except VirusTotalError as exc:
            return Relation(name, error=safe_text(exc, 300), calls=calls)
        if store is not None:
            store(endpoint, object_id, body)
    return _from_page(name, kind, subject, body, limit, calls=calls, cached=calls == 0)


def _from_page(
    name: str,
    kind: ReportKind,
    subject: str,
    body: Any,
    limit: int,
    *,
    calls: int,
    cached: bool,
) -> Relation:
    """A relation from the answer of its own call (checked: VT's shape or a reason)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # a failure stored as VT's error envelope
        reason = safe_text(error.get("message") or error.get("code"), 300)
        return Relation(name, error=reason, calls=calls, cached=cached)
    if not isinstance(body, dict) or "data" not in body:
        return Relation(name, error="VirusTotal answered without data", calls=calls, cached=cached)
    items = body["data"]
    if items is not None and not isinstance(items, list | dict):
        error = f"data is a {type(items).__name__}"
        return Relation(name, error=error, calls=calls, cached=cached)
    return read_relation(name, kind, subject, items, limit=limit, calls=calls, cached=cached)


def stored_relations(
    kind: ReportKind,
    object_id: str,
    lookup: Mapping[str, Any],
    pages: Mapping[str, Any],
    wanted: Sequence[str],
    limit: int,
) -> tuple[Relation, ...]:
    """The relations `fetch_relations` gave, read again from what it stored (the lookup and
    `pages`, its own calls' answers by endpoint name), without a call: a relation neither
    holds is one with the reason."""
    limit = max(1, min(limit, MAX_LIMIT))
    data = lookup.get("data") if isinstance(lookup, Mapping) else None
    embedded = data.get("relationships") if isinstance(data, dict) else None
    subject = _subject(kind, object_id, data)
    relations = []
    for name in lookup_relationships(kind, wanted):
        part = embedded.get(name) if isinstance(embedded, dict) else None
        page = pages.get(endpoint_name(kind, name))
        if _enough(part, limit):
            relations.append(read_relation(name, kind, subject, part["data"], limit=limit))
        elif page is not None:
            relations.append(_from_page(name, kind, subject, page, limit, calls=1, cached=False))
        else:
            relations.append(Relation(name, error="not fetched from VirusTotal"))
    return tuple(relations)


def _covers(body: Any, limit: int) -> bool:
    """A stored page answers `limit` when it holds that many items or all there were."""
    if not isinstance(body, dict):
        return False
    items = body.get("data")
    if not isinstance(items, list):
        return True
    meta = body.get("meta")
    return len(items) >= limit or not (isinstance(meta, dict) and meta.get("cursor"))


def describe(relations: Sequence[Relation]) -> str:
    """One line for a request's message: per relation, what came and what it cost."""
    parts = []
    for relation in relations:
        cost = f"{relation.calls} call"
        if relation.calls == 0:
            cost = "cached" if relation.cached else "in the lookup"
        if relation.error is not None:
            parts.append(f"{relation.name} failed ({cost}): {relation.error}")
        else:
            parts.append(f"{relation.name} {len(relation.objects)} ({cost})")
    return "; ".join(parts)
