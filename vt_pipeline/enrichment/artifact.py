"""Samples on request: a StixFile enrichment that also brings the file itself into OpenCTI.

What upstream's `internal-enrichment/virustotal-downloader` does (download `/files/{hash}/download`,
upload the bytes as an Artifact, link the StixFile to it with `related-to`), as an option of the
enrichment (`VIRUSTOTAL_FILE_DOWNLOAD_ARTIFACT`, off by default; downloads need a premium key),
with Livehunt's sample handling:
- the sample goes into the same content-addressed store as Livehunt's (`artifacts/sha256/..`
  under the storage directory), streamed, SHA-256 verified and size-capped while it is
  written (`VIRUSTOTAL_FILE_DOWNLOAD_MAX_BYTES`, Livehunt's cap by default), never executed,
  its file name the hash (never a VT-supplied name); a sample already stored costs no call;
- it is uploaded only when OpenCTI does not already hold it (an Artifact with that SHA-256
  and its file), otherwise the held Artifact is linked;
- a download VirusTotal cannot serve, a truncated or mismatched body (after the session's
  retries), a sample above the cap, a refused key or an upload OpenCTI refuses: the sample is
  left out with the reason (in the work's message and the run's log), and the enrichment itself
  goes on as without the option - the base enrichment is never lost to its sample.
One VT call per sample not already stored (`file_download`), none when OpenCTI holds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from vt_pipeline.opencti.resource import OpenCTIConnector, OpenCTIError
from vt_pipeline.stix import common
from vt_pipeline.stix.enrichment import EnrichmentResult
from vt_pipeline.storage.responses import ResponseStore
from vt_pipeline.storage.store import ArtifactStore, sniff_mime_type
from vt_pipeline.virustotal import objects as n
from vt_pipeline.virustotal.resource import VirusTotalError, VirusTotalSession

log = logging.getLogger(__name__)

AVAILABLE = frozenset({"downloaded", "already_stored"})
DESCRIPTION = "Downloaded from VirusTotal by vt_pipeline (enrichment) using hash {sha256}"


async def attach_sample(
    vt: VirusTotalSession,
    cti: OpenCTIConnector,
    responses: ResponseStore,
    result: EnrichmentResult,
    stix_entity: dict[str, Any],
    requested_at: datetime,
    max_bytes: int,
    notes: list[str],
) -> EnrichmentResult:
    """`result` with the File's sample as an Artifact in OpenCTI and a `related-to` from the
    File to it; or `result` unchanged (one counter more) and the reason in `notes`."""
    sha256 = _sha256(result.objects, stix_entity)
    if sha256 is None:
        return _left_out(result, notes, "no SHA-256 for the file, neither in OpenCTI nor on VT")
    # Livehunt's store: the storage directory the raw responses live in (`responses/` beside).
    store = ArtifactStore(responses.root.parent)
    try:
        held = await asyncio.to_thread(cti.held_artifact, sha256)
        if held is not None:
            artifact_id, status = str(held.get("standard_id") or held["id"]), "sample_in_opencti"
        else:
            artifact_id = await _download_and_upload(vt, cti, store, sha256, max_bytes, stix_entity)
            status = "sample_uploaded"
    except _Refused as exc:
        return _left_out(result, notes, str(exc))
    except (VirusTotalError, OpenCTIError) as exc:
        return _left_out(result, notes, str(exc))
    author = next((o["id"] for o in result.objects if o.get("type") == "identity"), None)
    link = common.relationship(
        "related-to",
        stix_entity["id"],
        artifact_id,
        created=common.moment_timestamp(requested_at),
        created_by_ref=author or stix_entity.get("created_by_ref") or "",
        object_marking_refs=_markings(stix_entity),
        description="The file's sample, downloaded from VirusTotal.",
    )
    if not link["created_by_ref"]:
        del link["created_by_ref"]
    stats = {**result.stats, status: result.stats.get(status, 0) + 1}
    return replace(result, objects=[*result.objects, link], stats=stats)


class _Refused(Exception):
    """The sample cannot be had; the message says why."""


async def _download_and_upload(
    vt: VirusTotalSession,
    cti: OpenCTIConnector,
    store: ArtifactStore,
    sha256: str,
    max_bytes: int,
    stix_entity: dict[str, Any],
) -> str:
    """The sample into the store (verified, capped), then into OpenCTI; the Artifact's id."""
    downloaded = await vt.download_sample(sha256, store, max_bytes)
    if downloaded.status not in AVAILABLE:
        reason = downloaded.reason or downloaded.status
        raise _Refused(f"the sample of {sha256} was not downloaded ({downloaded.status}): {reason}")
    data = await asyncio.to_thread(store.path_for(sha256).read_bytes)
    created = await asyncio.to_thread(
        cti.upload_artifact,
        data,
        sha256,
        sniff_mime_type(data[:16]),
        DESCRIPTION.format(sha256=sha256),
        stix_entity.get("created_by_ref"),
        _markings(stix_entity),
    )
    artifact = await asyncio.to_thread(cti.read_entity, created)
    return str((artifact or {}).get("standard_id") or created)


def _sha256(objects: Sequence[dict[str, Any]], stix_entity: dict[str, Any]) -> str | None:
    """The File's SHA-256: from the enrichment's version of it (VT's hashes), else OpenCTI's."""
    for obj in [*(o for o in objects if o.get("id") == stix_entity.get("id")), stix_entity]:
        hashes = obj.get("hashes") if isinstance(obj.get("hashes"), dict) else {}
        found = n.valid_hash(hashes.get("SHA-256"))
        if found:
            return found
    return None


def _markings(stix_entity: dict[str, Any]) -> list[str]:
    refs = stix_entity.get("object_marking_refs")
    return [str(r) for r in refs] if isinstance(refs, list) else []


def _left_out(result: EnrichmentResult, notes: list[str], reason: str) -> EnrichmentResult:
    text = f"sample not attached: {reason}"
    notes.append(text)
    log.warning(text)
    stats = {**result.stats, "sample_refused": result.stats.get("sample_refused", 0) + 1}
    return replace(result, stats=stats)
