"""Google Threat Intelligence threat objects: `GET /{files|urls|domains|ip_addresses}/{id}/
associations?limit=` and `GET /collections/{id}`.

Threat objects are `collection` objects whose `collection_type` is `threat-actor`,
`malware-family`, `campaign` or `report`, with ids such as `threat-actor--<uuid>`,
`malware--<uuid>`, `campaign--<uuid>`, `report--24-10072685` (shared/reference/
virustotal-expansions.md section 7, SPEC threat-landscape `/collections`). Attributes served:
name, collection_type, description, creation_date, last_modification_date, alt_names (for
actors and families) and origin ("Google Threat Intelligence").

DECIDED (UNCONFIRMED in public sources): an object's threat objects come from its `associations`
relationship, full collection objects in VT's relationship envelope (`data`, `meta.count`,
`meta.cursor`, `links`), limit default 10. It needs a key licensed for Google Threat
Intelligence Enterprise (`keys.ApiKey.gti_enterprise`): any other key gets 403 ForbiddenError,
as VT answers a privilege a key lacks.

A synthetic corpus associates threat objects with 40 % of the detected objects that carry a
scored GTI assessment (`gti.has_associations`, which their assessment's contributing factors
say: `mandiant_association_actor`/`_malware`), from a small fixed catalogue: the malware
family is the object's own popular threat name when it has one, so GTI's family and VT's
classification merge into one Malware in OpenCTI. A captured corpus has no associations.
"""

from __future__ import annotations

import random
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from vt_pipeline.emulators.virustotal.api import Handler, api_error, json_ok
from vt_pipeline.emulators.virustotal.comments import object_listing
from vt_pipeline.emulators.virustotal.gti import has_associations
from vt_pipeline.emulators.virustotal.objects import API_ROOT, FAMILIES

if TYPE_CHECKING:
    from vt_pipeline.emulators.virustotal.api import VirusTotalAPI

_NAMESPACE = uuid.UUID("5b0f7a3e-2c1d-4a52-9d0b-6f1e8c4a7d21")
_CREATED = 1_600_000_000  # the catalogue's own dates (fixed: objects GTI curated long ago)
_ACTORS = ("APT28", "FIN7", "UNC2452", "TA505", "Lazarus Group")
_CAMPAIGNS = ("Invoice Lures Wave 24", "Fake Updates Drive-by", "Cloud Login Phish")
_REPORTS = (
    ("24-10072685", "Threat Activity Alert: Loader Infrastructure Rotation"),
    ("24-10081122", "Malware Profile: Commodity Stealers in 2024"),
    ("25-10002310", "Campaign Tracking: Invoice-Themed Phishing"),
)


def _collection(kind: str, key: str, name: str, index: int) -> dict[str, Any]:
    prefix = {"threat-actor": "threat-actor", "malware-family": "malware", "campaign": "campaign"}
    collection_id = (
        f"report--{key}"
        if kind == "report"
        else f"{prefix[kind]}--{uuid.uuid5(_NAMESPACE, f'{kind}:{key}')}"
    )
    attrs: dict[str, Any] = {
        "name": name,
        "collection_type": kind,
        "description": f"{name}: {kind.replace('-', ' ')} tracked by Google Threat Intelligence.",
        "creation_date": _CREATED + index * 86400,
        "last_modification_date": _CREATED + (index + 30) * 86400,
        "origin": "Google Threat Intelligence",
    }
    if kind in ("threat-actor", "malware-family"):
        attrs["alt_names"] = [f"{name} (alias)"]
    return {
        "type": "collection",
        "id": collection_id,
        "attributes": attrs,
        "links": {"self": f"{API_ROOT}/collections/{collection_id}"},
    }


def _catalogue() -> dict[str, dict[str, Any]]:
    entries = [_collection("threat-actor", n, n, i) for i, n in enumerate(_ACTORS)]
    families = sorted({f for names in FAMILIES.values() for f in names})
    entries += [_collection("malware-family", f, f.upper(), i) for i, f in enumerate(families)]
    entries += [_collection("campaign", n, n, i) for i, n in enumerate(_CAMPAIGNS)]
    entries += [_collection("report", k, n, i) for i, (k, n) in enumerate(_REPORTS)]
    return {entry["id"]: entry for entry in entries}


COLLECTIONS = _catalogue()
_BY_KIND: dict[str, list[dict[str, Any]]] = {}
for _entry in COLLECTIONS.values():
    _BY_KIND.setdefault(_entry["attributes"]["collection_type"], []).append(_entry)


def associations(collection: str, obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The threat objects GTI associates with a synthetic object (none for most:
    `gti.has_associations`)."""
    attrs = obj.get("attributes") or {}
    if not has_associations(obj):
        return []
    rng = random.Random(f"vt-association-objects:{collection}:{obj.get('id')}")
    found = [rng.choice(_BY_KIND["threat-actor"])]
    names = (attrs.get("popular_threat_classification") or {}).get("popular_threat_name") or []
    family = str(names[0].get("value") or "").upper() if names else ""
    family_entries = [e for e in _BY_KIND["malware-family"] if e["attributes"]["name"] == family]
    found.append(family_entries[0] if family_entries else rng.choice(_BY_KIND["malware-family"]))
    if rng.random() < 0.6:
        found.append(rng.choice(_BY_KIND["campaign"]))
    if rng.random() < 0.7:
        found.append(rng.choice(_BY_KIND["report"]))
    return found


def _licensed(api: VirusTotalAPI, request: web.Request) -> bool:
    key = api._keys.get(request.headers.get("x-apikey", ""))
    return key is not None and key.gti and key.gti_enterprise


_UNLICENSED = (
    "You are not allowed to perform the requested operation: it requires a Google Threat "
    "Intelligence licence"
)


def object_associations(api: VirusTotalAPI, collection: str) -> Handler:
    """The handler of `/{collection}/{id}/associations` (GTI Enterprise keys only)."""

    def refuse(request: web.Request) -> web.Response | None:
        return None if _licensed(api, request) else api_error(403, "ForbiddenError", _UNLICENSED)

    return object_listing(api, collection, associations, refuse)


def collection(api: VirusTotalAPI) -> Handler:
    """The handler of `/collections/{id}`."""

    async def handle(request: web.Request) -> web.Response:
        if not _licensed(api, request):
            return api_error(403, "ForbiddenError", _UNLICENSED)
        found = COLLECTIONS.get(request.match_info["id"])
        if found is None:
            return api_error(404, "NotFoundError", f'Collection "{request.match_info["id"]}"')
        return json_ok({"data": found})

    return handle
