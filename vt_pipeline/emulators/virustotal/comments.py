"""`GET /{files|urls|domains|ip_addresses}/{id}/comments?limit=&cursor=`: community comments.

Shape (shared/reference/virustotal-expansions.md section 4): a collection of `comment` objects,
newest first, `{"type": "comment", "id": "<f|u|d|i>-<object id>-<hex>", "attributes": {date,
text, html, tags, votes {positive, negative, abuse}}, "links": {"self"}}`, `limit` default 10
(at most 40), `meta.count`, and `meta.cursor` + `links.next` while more remain (the envelope of
VT's relationship endpoints). Words starting with `#` are the comment's `tags`. Unknown object:
404 NotFoundError.

A synthetic corpus gives half of its detected objects 1 to 15 comments (some hostile: table
pipes, line breaks, markup) from an RNG of their own; a captured corpus has none.
"""

from __future__ import annotations

import base64
import binascii
import html
import random
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from vt_pipeline.emulators.virustotal.api import Handler, _url_keys, api_error, json_ok
from vt_pipeline.emulators.virustotal.ioc_stream import StreamQueryError, parse_limit
from vt_pipeline.emulators.virustotal.objects import API_ROOT, DAY, HOUR

if TYPE_CHECKING:
    from vt_pipeline.emulators.virustotal.api import VirusTotalAPI

COMMENTED_SHARE = 0.5
_PREFIX = {"files": "f", "urls": "u", "domains": "d", "ip_addresses": "i"}
_TEXTS = (
    "#malware seen in a phishing campaign this week",
    "C2 traffic to this one, blocked at the proxy. #c2 #ioc",
    "Sandbox run: drops a scheduled task, then beacons every 60 s",
    "False positive? Our build server produced it | checked twice",
    "Looks like #{family} to me",
    "line one\nline two: still malicious",
    "<script>alert('comment')</script> nice try",
    "**bold** and [a link](javascript:alert(1)) in markdown",
    "Reported to the hosting provider. #takedown",
)


def comment_objects(collection: str, obj: dict[str, Any]) -> list[dict[str, Any]]:
    """A synthetic object's comments, newest first (none for most)."""
    attrs = obj.get("attributes") or {}
    malicious = int((attrs.get("last_analysis_stats") or {}).get("malicious") or 0)
    rng = random.Random(f"vt-comments:{collection}:{obj.get('id')}")
    if malicious <= 0 or rng.random() >= COMMENTED_SHARE:
        return []
    latest = int(attrs.get("last_modification_date") or attrs.get("last_analysis_date") or 0)
    family = ""
    threat = attrs.get("popular_threat_classification") or {}
    names = threat.get("popular_threat_name") or []
    if names:
        family = str(names[0].get("value") or "")
    date = latest
    comments = []
    for _ in range(rng.randint(1, 15)):
        date -= rng.randint(HOUR, 20 * DAY)
        text = rng.choice(_TEXTS).replace("{family}", family or "unknown")
        comment_id = f"{_PREFIX[collection]}-{obj['id']}-{rng.getrandbits(32):08x}"
        comments.append(
            {
                "type": "comment",
                "id": comment_id,
                "attributes": {
                    "date": date,
                    "text": text,
                    "html": html.escape(text).replace("\n", "<br />"),
                    "tags": sorted({w[1:].lower() for w in re.findall(r"#\w+", text)}),
                    "votes": {
                        "positive": rng.randint(0, 9),
                        "negative": rng.randint(0, 2),
                        "abuse": 0,
                    },
                },
                "links": {"self": f"{API_ROOT}/comments/{comment_id}"},
            }
        )
    return comments


def paged(request: web.Request, items: Sequence[dict[str, Any]]) -> web.Response:
    """One page of a VT collection: `limit` (default 10, at most 40) and an offset cursor."""
    try:
        limit = parse_limit(request.query.get("limit"))
        raw = request.query.get("cursor")
        offset = int(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))) if raw else 0
    except (StreamQueryError, ValueError, binascii.Error):
        return api_error(400, "InvalidArgumentError", "invalid limit or cursor")
    body: dict[str, Any] = {
        "data": list(items[offset : offset + limit]),
        "meta": {"count": len(items)},
        "links": {"self": str(request.url)},
    }
    if offset + limit < len(items):
        cursor = base64.urlsafe_b64encode(str(offset + limit).encode()).decode().rstrip("=")
        body["meta"]["cursor"] = cursor
        body["links"]["next"] = str(request.url.update_query(cursor=cursor))
    return json_ok(body)


def find_object(api: VirusTotalAPI, collection: str, key: str) -> dict[str, Any] | None:
    """The object `GET /{collection}/{key}` would serve (files by any hash, URLs by id or
    base64), uploads and submissions included."""
    if collection == "files":
        return api._find_file(key)
    if collection == "urls":
        for url_key in _url_keys(key):
            found = api._submitted_urls.get(url_key) or api.corpus.urls.get(url_key)
            if found is not None:
                return found
        return None
    return api.corpus.objects("domain" if collection == "domains" else "ip_address").get(key)


def object_listing(
    api: VirusTotalAPI,
    collection: str,
    items: Callable[[str, dict[str, Any]], list[dict[str, Any]]],
    refuse: Callable[[web.Request], web.Response | None] = lambda _: None,
) -> Handler:
    """The handler of a relationship listing `/{collection}/{id}/...`: `items(collection, obj)`
    for a synthetic corpus (none for a captured one), paged; 404 for an unknown object."""

    async def handle(request: web.Request) -> web.Response:
        refusal = refuse(request)
        if refusal is not None:
            return refusal
        key = request.match_info["id"]
        obj = find_object(api, collection, key)
        if obj is None:
            return api_error(404, "NotFoundError", f'"{key}" not found')
        synthetic = api.corpus.assess_gti is not None
        return paged(request, items(collection, obj) if synthetic else [])

    return handle


def object_comments(api: VirusTotalAPI, collection: str) -> Handler:
    """The handler of `/{collection}/{id}/comments`."""
    return object_listing(api, collection, comment_objects)
