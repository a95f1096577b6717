"""VirusTotal's object relationships, served from the corpus (issue 19 section 1).

Shapes (reference doc section 1, from VT's API reference and public payloads):
- `GET /{collection}/{id}/{relationship}?limit=&cursor=`: full related objects,
  `{"data": [...], "meta": {"count", "cursor"?}, "links": {"self", "next"?}}`; a one-to-one
  relation (`last_serving_ip_address`) answers one object or null.
- `GET /{collection}/{id}/relationships/{relationship}`: the same with descriptors only
  (`{type, id}`; a `contacted_urls` descriptor has `context_attributes.url`, as vt-py reads it).
- `GET /{collection}/{id}?relationships=a,b`: the object with `relationships.{name} = {"data":
  [descriptors], "links": {"self", "related", "next"?}, "meta": {"cursor"}?}`, a page of 20
  descriptors (real payloads' `limit=20`).
- A resolution is `{ip}{domain}` with attributes `ip_address`, `host_name`, their stats.

Decisions (UNCONFIRMED in public sources, written down here and in the README):
- `downloaded_files` (of a domain, IP or URL) needs a premium key: 403 for the others, the
  "VT Enterprise" relations of VT's reference; a lookup leaves it out of `relationships` for
  them (so a client asks for it and learns why).
- Only `contacted_urls` descriptors carry the URL: for `itw_urls` and `redirects_to` a
  client needs the relation's own call (full URL objects) to know the URLs.

What is related is drawn from the corpus, deterministically per (object, relation): enough
objects that the cap (default 10) and the embedded page (20) both show.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from vt_pipeline.emulators.virustotal.api import Access, Handler, _url_keys, api_error, json_ok
from vt_pipeline.emulators.virustotal.ioc_stream import StreamQueryError, parse_limit
from vt_pipeline.emulators.virustotal.objects import (
    API_ROOT,
    DAY,
    resolution_object,
)

if TYPE_CHECKING:
    from vt_pipeline.emulators.virustotal.api import VirusTotalAPI

Route = tuple[str, str, str, Access, Handler]
EMBEDDED_PAGE = 20
# collection -> (object kind, {relation: kind of the related objects})
RELATIONS: dict[str, tuple[str, dict[str, str]]] = {
    "files": (
        "file",
        {
            "contacted_domains": "domain",
            "contacted_ips": "ip_address",
            "contacted_urls": "url",
            "dropped_files": "file",
            "execution_parents": "file",
            "bundled_files": "file",
            "itw_urls": "url",
        },
    ),
    "domains": (
        "domain",
        {
            "resolutions": "resolution",
            "communicating_files": "file",
            "downloaded_files": "file",
            "referrer_files": "file",
            "subdomains": "domain",
        },
    ),
    "ip_addresses": (
        "ip_address",
        {
            "resolutions": "resolution",
            "communicating_files": "file",
            "downloaded_files": "file",
        },
    ),
    "urls": (
        "url",
        {
            "last_serving_ip_address": "ip_address",
            "downloaded_files": "file",
            "redirects_to": "url",
            "contacted_domains": "domain",
            "contacted_ips": "ip_address",
        },
    ),
}
ONE_TO_ONE = frozenset({"last_serving_ip_address"})
PREMIUM = frozenset({"downloaded_files"})
URL_CONTEXT = frozenset({"contacted_urls"})  # descriptors that name their URL
LOOKUP_ENDPOINTS = {
    "file": "files",
    "ip_address": "ip_addresses",
    "domain": "domains",
    "url": "urls",
}
# Served by the API's own handler (`/domains/{id}/resolutions`), with the same shape.
_ALREADY_SERVED = {("domains", "resolutions")}


class Relationships:
    """The related objects of corpus objects, drawn once per (object, relation)."""

    def __init__(self, api: VirusTotalAPI) -> None:
        self.api = api
        self._pools: dict[str, list[str]] = {}
        self._resolved_by: dict[str, list[dict]] | None = None

    # -- what is related -------------------------------------------------------------------

    def subject(self, collection: str, raw_id: str) -> dict | None:
        corpus = self.api.corpus
        if collection == "files":
            return self.api._find_file(raw_id)
        if collection == "urls":
            for key in _url_keys(raw_id):
                found = self.api._submitted_urls.get(key) or corpus.urls.get(key)
                if found is not None:
                    return found
            return None
        if collection == "domains":
            return corpus.domains.get(raw_id)
        return corpus.ip_addresses.get(raw_id)

    def related(self, collection: str, obj: Mapping[str, Any], relation: str) -> list[dict]:
        """The related objects, newest first as VT orders them (full objects)."""
        kind = RELATIONS[collection][1][relation]
        subject_id = str(obj["id"])
        if kind == "resolution":
            return self._resolutions(collection, subject_id)
        rng = random.Random(f"vt-relation:{collection}:{subject_id}:{relation}")
        if relation == "subdomains":
            pool = [d for d in self._pool("domain") if d.endswith("." + subject_id)]
        else:
            pool = [key for key in self._pool(kind) if key != subject_id]
        if not pool:
            return []
        count = 1 if relation in ONE_TO_ONE else rng.randint(3, 26)
        chosen = rng.sample(pool, min(count, len(pool)))
        objects = self._objects(kind)
        return [objects[key] for key in chosen if key in objects]

    def _pool(self, kind: str) -> list[str]:
        if kind not in self._pools:
            self._pools[kind] = sorted(self._objects(kind))
        return self._pools[kind]

    def _objects(self, kind: str) -> Mapping[str, dict]:
        corpus = self.api.corpus
        return {
            "file": corpus.files,
            "domain": corpus.domains,
            "ip_address": corpus.ip_addresses,
            "url": corpus.urls,
        }[kind]

    def _resolutions(self, collection: str, subject_id: str) -> list[dict]:
        corpus = self.api.corpus
        if collection == "domains":
            found = list(corpus.resolutions.get(subject_id) or [])
        else:
            if self._resolved_by is None:
                index: dict[str, list[dict]] = {}
                for domain in self._pool("domain"):
                    for resolution in corpus.resolutions.get(domain) or []:
                        address = (resolution.get("attributes") or {}).get("ip_address")
                        index.setdefault(str(address), []).append(resolution)
                self._resolved_by = index
            found = list(self._resolved_by.get(subject_id, [])) or self._drawn(subject_id)
        return sorted(found, key=lambda r: -int((r.get("attributes") or {}).get("date") or 0))

    def _drawn(self, address: str) -> list[dict]:
        """Resolutions of an IP no corpus domain resolves to: corpus domains drawn for it, in
        the shape of the corpus's own resolutions."""
        rng = random.Random(f"vt-relation:ip_addresses:{address}:resolutions")
        domains = self._pool("domain")
        subject = self.api.corpus.ip_addresses.get(address) or {}
        seen = int((subject.get("attributes") or {}).get("last_modification_date") or 0)
        found = []
        for domain in rng.sample(domains, min(len(domains), rng.randint(2, 14))):
            date = seen - rng.randint(0, 400 * DAY)
            found.append(resolution_object(rng, domain, address, date))
        return found

    # -- shapes ----------------------------------------------------------------------------

    def served(self, obj: dict, request: web.Request) -> dict:
        if obj.get("type") == "resolution":
            return obj
        return self.api._served(obj, request)

    @staticmethod
    def descriptor(obj: Mapping[str, Any], relation: str) -> dict[str, Any]:
        found: dict[str, Any] = {"type": obj["type"], "id": obj["id"]}
        if obj["type"] == "url" and relation in URL_CONTEXT:
            found["context_attributes"] = {"url": (obj.get("attributes") or {}).get("url")}
        return found

    def embedded(self, collection: str, obj: dict, names: list[str]) -> dict[str, Any]:
        """`relationships` of a lookup asked `?relationships=` (unknown names are left out)."""
        out: dict[str, Any] = {}
        relations = RELATIONS[collection][1]
        for name in names:
            if name not in relations:
                continue
            base = f"{API_ROOT}/{collection}/{obj['id']}"
            links = {
                "self": f"{base}/relationships/{name}?limit={EMBEDDED_PAGE}",
                "related": f"{base}/{name}",
            }
            related = self.related(collection, obj, name)
            if name in ONE_TO_ONE:
                first = self.descriptor(related[0], name) if related else None
                out[name] = {"data": first, "links": links}
                continue
            part: dict[str, Any] = {
                "data": [self.descriptor(o, name) for o in related[:EMBEDDED_PAGE]],
                "links": links,
            }
            if len(related) > EMBEDDED_PAGE:
                cursor = _cursor(EMBEDDED_PAGE)
                part["meta"] = {"cursor": cursor}
                links["next"] = f"{links['self']}&cursor={cursor}"
            out[name] = part
        return out

    # -- handlers --------------------------------------------------------------------------

    def handler(self, collection: str, relation: str, descriptors: bool) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            raw_id = request.match_info["id"]
            obj = self.subject(collection, raw_id)
            if obj is None:
                kind = RELATIONS[collection][0].replace("_", " ")
                return api_error(404, "NotFoundError", f'{kind.capitalize()} "{raw_id}" not found')
            related = self.related(collection, obj, relation)
            shape: Callable[[dict], dict] = (
                (lambda o: self.descriptor(o, relation))
                if descriptors
                else (lambda o: self.served(o, request))
            )
            if relation in ONE_TO_ONE:
                first = shape(related[0]) if related else None
                return json_ok(
                    {"data": first, "meta": {"count": len(related)}, "links": _self(request)}
                )
            try:
                limit = parse_limit(request.query.get("limit"))
                offset = _offset(request.query.get("cursor"))
            except (StreamQueryError, ValueError, binascii.Error):
                return api_error(400, "InvalidArgumentError", "invalid limit or cursor")
            body: dict[str, Any] = {
                "data": [shape(o) for o in related[offset : offset + limit]],
                "meta": {"count": len(related)},
                "links": _self(request),
            }
            if offset + limit < len(related):
                cursor = _cursor(offset + limit)
                body["meta"]["cursor"] = cursor
                body["links"]["next"] = str(request.url.update_query(cursor=cursor))
            return json_ok(body)

        return handle

    def with_relationships(self, endpoint: str, handler: Handler) -> Handler:
        """An object lookup that embeds `?relationships=` descriptors (other handlers as is)."""
        collection = LOOKUP_ENDPOINTS.get(endpoint)
        if collection is None:
            return handler

        async def handle(request: web.Request) -> web.StreamResponse:
            response = await handler(request)
            names = [n.strip() for n in request.query.get("relationships", "").split(",")]
            body = getattr(response, "body", None)
            if response.status != 200 or not any(names) or not isinstance(body, bytes):
                return response
            payload = json.loads(body)
            obj = payload.get("data")
            stored = self.subject(collection, str(obj.get("id"))) if isinstance(obj, dict) else None
            key = self.api._keys.get(request.headers.get("x-apikey", ""))
            premium = key is not None and key.premium
            wanted = [n for n in names if n and (premium or n not in PREMIUM)]
            if stored is not None:
                obj["relationships"] = self.embedded(collection, stored, wanted)
            return json_ok(payload)

        return handle


_INSTANCES: weakref.WeakKeyDictionary[VirusTotalAPI, Relationships] = weakref.WeakKeyDictionary()


def relationships_of(api: VirusTotalAPI) -> Relationships:
    """The API's relationships (one per API: its pools are drawn once)."""
    if api not in _INSTANCES:
        _INSTANCES[api] = Relationships(api)
    return _INSTANCES[api]


def with_relationships(api: VirusTotalAPI, endpoint: str, handler: Handler) -> Handler:
    """`handler`, embedding `?relationships=` descriptors when it is an object lookup."""
    return relationships_of(api).with_relationships(endpoint, handler)


def relationship_routes(api: VirusTotalAPI) -> list[Route]:
    """The routes of every relation (full objects and descriptors), for `application()`."""
    relationships = relationships_of(api)
    routes: list[Route] = []
    for collection, (kind, relations) in RELATIONS.items():
        for relation in relations:
            access: Access = "premium" if relation in PREMIUM else "key"
            endpoint = f"{kind}_{relation}"
            if (collection, relation) not in _ALREADY_SERVED:
                routes.append(
                    (
                        "GET",
                        f"/{collection}/{{id}}/{relation}",
                        endpoint,
                        access,
                        relationships.handler(collection, relation, descriptors=False),
                    )
                )
            routes.append(
                (
                    "GET",
                    f"/{collection}/{{id}}/relationships/{relation}",
                    f"{endpoint}_descriptors",
                    access,
                    relationships.handler(collection, relation, descriptors=True),
                )
            )
    return routes


def _self(request: web.Request) -> dict[str, str]:
    return {"self": str(request.url)}


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode()


def _offset(cursor: str | None) -> int:
    return int(base64.urlsafe_b64decode(cursor.encode())) if cursor else 0
