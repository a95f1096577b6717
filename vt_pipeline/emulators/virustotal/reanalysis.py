"""`POST /files/{id}/analyse` and `POST /urls/{id}/analyse`: ask VT to analyse a known object
again (shared/reference/virustotal-expansions.md section 5).

No body; the answer is the analysis descriptor `{"data": {"type": "analysis", "id"}}`: a file's
analysis id is base64 of `<md5>:<unix time>`, a URL's `u-<url id>-<unix time>` (SPEC
filesAnalyse, `/urls/{id}/analyse`). `GET /analyses/{id}` then reports it queued, in progress
and completed as for an upload (`VirusTotalAPI.set_analysis_time`); once completed, the object's
lookups serve the new report: analysed and last submitted at the request's time, one more
submission, its first submission kept. Unknown object: 404 NotFoundError.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from aiohttp import web

from vt_pipeline.emulators.virustotal.api import Handler, _Analysis, api_error
from vt_pipeline.emulators.virustotal.comments import find_object
from vt_pipeline.emulators.virustotal.objects import analysed_at

if TYPE_CHECKING:
    from vt_pipeline.emulators.virustotal.api import VirusTotalAPI


def reanalyse(api: VirusTotalAPI, collection: str) -> Handler:
    """The handler of `POST /{collection}/{id}/analyse` (files or urls)."""

    async def handle(request: web.Request) -> web.Response:
        key = request.match_info["id"]
        known = find_object(api, collection, key)
        if known is None:
            what = "File" if collection == "files" else "URL"
            return api_error(404, "NotFoundError", f'{what} "{key}" not found')
        now = int(api._clock())
        target = analysed_at(known, now, known)
        attrs = target["attributes"]
        if collection == "files":
            analysis_id = base64.urlsafe_b64encode(f"{attrs['md5']}:{now}".encode()).decode()
            info = {k: attrs[k] for k in ("sha256", "sha1", "md5", "size") if k in attrs}
            analysis = _Analysis("file", target, {"file_info": info}, now, api._clock())
        else:
            analysis_id = f"u-{known['id']}-{now}"
            meta = {"url_info": {"id": known["id"], "url": attrs.get("url")}}
            analysis = _Analysis("url", target, meta, now, api._clock())
        api._analyses[analysis_id] = analysis
        return api._analysis_created(analysis_id)

    return handle
