"""The endpoints of the enrichment expansions, registered by `VirusTotalAPI.application()`.

One module per endpoint family: `behaviour` (ATT&CK trees), `comments`, `reanalysis`,
`gti_collections` (GTI threat objects) and `detections` (Sigma rules; the Sigma and IDS
attributes themselves are on the file objects). Each route is (method, path under /api/v3,
endpoint name in the statistics, access, handler).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from vt_pipeline.emulators.virustotal.api import Access, Handler, api_error, json_ok
from vt_pipeline.emulators.virustotal.behaviour import behaviour_mitre_trees
from vt_pipeline.emulators.virustotal.comments import object_comments
from vt_pipeline.emulators.virustotal.detections import SIGMA_RULES
from vt_pipeline.emulators.virustotal.gti_collections import collection, object_associations
from vt_pipeline.emulators.virustotal.reanalysis import reanalyse

if TYPE_CHECKING:
    from vt_pipeline.emulators.virustotal.api import VirusTotalAPI

Route = tuple[str, str, str, Access, Handler]
_COMMENTED = {"files": "file", "urls": "url", "domains": "domain", "ip_addresses": "ip_address"}


async def sigma_rule(request: web.Request) -> web.Response:
    """`GET /sigma_rules/{id}`."""
    rule = SIGMA_RULES.get(request.match_info["id"])
    if rule is None:
        return api_error(404, "NotFoundError", f'Sigma rule "{request.match_info["id"]}" not found')
    return json_ok({"data": rule})


def expansion_routes(api: VirusTotalAPI) -> list[Route]:
    routes: list[Route] = [
        (
            "GET",
            "/files/{id}/behaviour_mitre_trees",
            "file_behaviour_mitre_trees",
            "key",
            behaviour_mitre_trees(api),
        ),
        ("GET", "/sigma_rules/{id}", "sigma_rule", "key", sigma_rule),
        ("POST", "/files/{id}/analyse", "file_analyse", "key", reanalyse(api, "files")),
        ("POST", "/urls/{id}/analyse", "url_analyse", "key", reanalyse(api, "urls")),
        ("GET", "/collections/{id}", "collection", "key", collection(api)),
    ]
    for path, kind in _COMMENTED.items():
        routes.append(
            (
                "GET",
                f"/{path}/{{id}}/comments",
                f"{kind}_comments",
                "key",
                object_comments(api, path),
            )
        )
        routes.append(
            (
                "GET",
                f"/{path}/{{id}}/associations",
                f"{kind}_associations",
                "key",
                object_associations(api, path),
            )
        )
    return routes
