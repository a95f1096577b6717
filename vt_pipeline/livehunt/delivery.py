"""Delivery of each window's bundle to OpenCTI, then (only then) cleanup on VirusTotal.

Per window, in this order, so that nothing can be lost:
1. an OpenCTI work is created and the bundle sent through pycti (split as pycti splits it,
   over RabbitMQ or the GraphQL API), the work closed and awaited until OpenCTI reports it
   complete without errors - that is "accepted";
2. the window's samples are uploaded as Artifacts, unless OpenCTI already holds them (by
   SHA-256, with their file); each upload merges into the Artifact the bundle created, which is
   already linked to its File (`content_ref`) and Incident (`related-to`);
3. with `delete_notification` on, the window's notifications - kept and dropped alike: both were
   processed, the drop reasons are stored - are deleted on VirusTotal by notification id.
A failure at any step fails the asset with a clear message; nothing after it happens, so no
notification is deleted for a window OpenCTI did not accept. Re-materializing re-delivers:
ids are deterministic, so OpenCTI upserts and nothing is duplicated.

No OpenCTI work is left in progress: a failed delivery closes its work in error with the reason;
a work that could not be closed then (OpenCTI down, run killed) is closed in error by the next
delivery of the same window, once it is older than the work timeout (so that a delivery still
running elsewhere is left alone).

Links out, as metadata of each delivered window, with the URLs of OpenCTI's frontend (the
OpenCTI emulator serves the same paths): `opencti_work`, the page of the Livehunt connector
(`/dashboard/data/ingestion/connectors/{id}`), which lists its works (this window's is named
"VirusTotal Livehunt <window> (vt_pipeline)"; OpenCTI has no page for one work), and
`opencti_incidents`, a table of the window's Incidents, each linked to its OpenCTI page through
`/dashboard/id/{id}` (OpenCTI resolves any id there, a STIX id included) and to the VirusTotal
report of its subject.

Metadata plotted per window: `objects_sent`, and with their options on `artifacts_uploaded`
and `notifications_deleted` (with the VT calls the deletes cost); what is usually zero (stale
works closed, samples OpenCTI already held, bundles beyond the first) only when it happened.
"""

import asyncio
import re
from typing import Any
from urllib.parse import quote

import dagster as dg

from vt_pipeline.livehunt.assets import (
    AVAILABLE,
    LIVEHUNT_ASSET,
    Partitioned,
    for_each_partition,
    run_vt,
    vt_calls_metadata,
)
from vt_pipeline.livehunt.settings import LivehuntSettings
from vt_pipeline.opencti.resource import (
    OpenCTIConnector,
    OpenCTIError,
    OpenCTIResource,
    display_name,
)
from vt_pipeline.storage.store import StorageResource
from vt_pipeline.virustotal import objects as n
from vt_pipeline.virustotal.resource import VirusTotalResource, VirusTotalSession

ARTIFACT_DESCRIPTION = "Sample downloaded from VirusTotal Livehunt by vt_pipeline."
# Incidents listed in a window's `opencti_incidents` table; the rest are counted.
INCIDENT_ROWS = 50
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~-])")


@dg.asset(kinds={"opencti"}, pool="opencti", **LIVEHUNT_ASSET)
def livehunt_opencti_delivery(
    context: dg.AssetExecutionContext,
    livehunt_notifications: Partitioned[list[dict[str, Any]]],
    livehunt_artifacts: Partitioned[list[dict[str, Any]]],
    livehunt_stix_bundles: Partitioned[dict[str, Any]],
    opencti: OpenCTIResource,
    virustotal: VirusTotalResource,
    livehunt_settings: LivehuntSettings,
    storage: StorageResource,
) -> Partitioned[dict[str, Any]]:
    """Each window's bundle and samples in OpenCTI; its notifications then deleted if asked."""
    records: dict[str, dict[str, Any]] = {}
    with opencti.connector() as cti:
        for key, bundle in livehunt_stix_bundles.items():
            names = _file_names(livehunt_notifications[key])
            records[key] = _deliver(
                context,
                cti,
                key,
                bundle,
                livehunt_artifacts[key],
                names,
                storage,
                opencti.work_timeout_seconds,
            )
    deleted = {key: 0 for key in records}
    session: VirusTotalSession | None = None
    if livehunt_settings.delete_notification:
        deleted, session = _delete_notifications(virustotal, livehunt_notifications)
    for key, record in records.items():
        record["notifications_deleted"] = deleted[key]
        context.add_asset_metadata(
            {
                **delivery_metadata(record, livehunt_settings),
                **opencti_links(opencti, record, livehunt_stix_bundles[key]),
                **(vt_calls_metadata(session, [key]) if session is not None else {}),
            },
            partition_key=key,
        )
    return records


def delivery_metadata(record: dict[str, Any], settings: LivehuntSettings) -> dict[str, Any]:
    """What a window's delivery did: the counts an operator watches always (those of options
    that are off left out), the usually-zero ones only when they happened."""
    out: dict[str, Any] = {"objects_sent": int(record["objects_sent"])}
    if record.get("work_id"):
        out["work_id"] = dg.MetadataValue.text(str(record["work_id"]))
    else:
        out["work_id"] = dg.MetadataValue.text("none: nothing kept in this window, no work")
    if settings.upload_artifact:
        out["artifacts_uploaded"] = int(record["artifacts_uploaded"])
    if settings.delete_notification:
        out["notifications_deleted"] = int(record["notifications_deleted"])
    for name in ("artifacts_already_in_opencti", "stale_works_closed"):
        if record.get(name):
            out[name] = int(record[name])
    if int(record.get("bundles_sent") or 0) > 1:
        out["bundles_sent"] = int(record["bundles_sent"])
    return out


def opencti_links(
    opencti: OpenCTIResource, record: dict[str, Any], bundle: dict[str, Any]
) -> dict[str, Any]:
    """URL metadata into OpenCTI for a delivered window: its work's connector page and its
    Incidents (with their VirusTotal reports). Nothing for a window that sent nothing."""
    if not record.get("work_id"):
        return {}
    base = opencti.url.rstrip("/")
    links: dict[str, Any] = {
        "opencti_work": dg.MetadataValue.url(
            f"{base}/dashboard/data/ingestion/connectors/{quote(opencti.connector_id, safe='')}"
        )
    }
    incidents = sorted(
        (o for o in bundle.get("objects") or [] if o.get("type") == "incident"),
        key=lambda o: (str(o.get("created")), str(o.get("id"))),
    )
    if incidents:
        links["opencti_incidents"] = dg.MetadataValue.md(incident_table(base, incidents))
    return links


def incident_table(base: str, incidents: list[dict[str, Any]]) -> str:
    """Markdown table: each Incident's name, its OpenCTI page and its subject's VT report."""
    rows = ["| Incident | OpenCTI | VirusTotal |", "| --- | --- | --- |"]
    for incident in incidents[:INCIDENT_ROWS]:
        opencti_url = f"{base}/dashboard/id/{quote(str(incident['id']), safe='')}"
        vt_urls = [
            str(ref["url"])
            for ref in incident.get("external_references") or []
            if ref.get("source_name") == "VirusTotal" and ref.get("url")
        ]
        vt_link = f"[report](<{_url_text(vt_urls[0])}>)" if vt_urls else ""
        name = _MARKDOWN_SPECIAL.sub(r"\\\1", str(incident.get("name") or incident["id"]))
        rows.append(f"| {name} | [open](<{_url_text(opencti_url)}>) | {vt_link} |")
    if len(incidents) > INCIDENT_ROWS:
        rows.append(f"\n{len(incidents) - INCIDENT_ROWS} more Incidents in this window.")
    return "\n".join(rows)


def _url_text(url: str) -> str:
    """A URL safe inside a Markdown `<...>` link target (no spaces, brackets or line breaks)."""
    return quote(url, safe=":/?&=#%@+,;~!$'*")


def _deliver(
    context: dg.AssetExecutionContext,
    cti: OpenCTIConnector,
    key: str,
    bundle: dict[str, Any],
    artifacts: list[dict[str, Any]],
    names: dict[str, str],
    storage: StorageResource,
    stale_after_seconds: float,
    work_name: str = "",
) -> dict[str, Any]:
    """Deliver one partition's bundle and samples; `work_name` names its OpenCTI work (default:
    the Livehunt window's; a Retrohunt job's delivery names its own)."""
    objects = bundle.get("objects") or []
    record: dict[str, Any] = {
        "work_id": None,
        "objects_sent": 0,
        "bundles_sent": 0,
        "artifacts_uploaded": 0,
        "artifacts_already_in_opencti": 0,
        "stale_works_closed": 0,
    }
    work_name = work_name or f"VirusTotal Livehunt {key} (vt_pipeline)"
    try:
        stale = cti.close_stale_works(work_name, stale_after_seconds)
    except OpenCTIError as exc:  # housekeeping: never the reason a delivery fails
        context.log.warning(f"{key}: could not look for works left in progress: {exc}")
        stale = []
    if stale:
        context.log.warning(
            f"{key}: closed in error {len(stale)} OpenCTI work(s) an earlier delivery of this "
            f"window left in progress: {', '.join(stale)}"
        )
    record["stale_works_closed"] = len(stale)
    if not objects:
        return record  # nothing kept in this window: no empty work in OpenCTI
    try:
        work_id, record["bundles_sent"] = cti.deliver_bundle(
            bundle, work_name, f"{len(objects)} STIX objects of window {key}"
        )
    except Exception as exc:
        context.log.error(f"{key}: delivery failed, nothing deleted on VirusTotal: {exc}")
        raise
    record["work_id"] = work_id
    record["objects_sent"] = len(objects)

    author = next((o["id"] for o in objects if o["type"] == "identity"), None)
    markings = [o["id"] for o in objects if o["type"] == "marking-definition"]
    store = storage.artifact_store()
    for artifact in artifacts:
        sha256 = artifact["sha256"]
        if artifact["status"] not in AVAILABLE:
            continue
        if artifact["status"] == "in_opencti" or cti.held_artifact(sha256):
            record["artifacts_already_in_opencti"] += 1
            continue
        cti.upload_artifact(
            store.path_for(sha256).read_bytes(),
            names.get(sha256, sha256),
            artifact.get("mime_type") or "application/octet-stream",
            ARTIFACT_DESCRIPTION,
            author,
            markings,
        )
        record["artifacts_uploaded"] += 1
    return record


def _file_names(items: list[dict[str, Any]]) -> dict[str, str]:
    """Display names of the window's files (sanitized: VT-supplied), by SHA-256."""
    names: dict[str, str] = {}
    for item in items:
        sha256 = n.file_hashes(item).get("SHA-256")
        if item.get("type") == "file" and sha256:
            attrs = n.attributes(item)
            names[sha256] = display_name(attrs.get("meaningful_name"), sha256)
    return names


def _delete_notifications(
    virustotal: VirusTotalResource, notifications: Partitioned[list[dict[str, Any]]]
) -> tuple[dict[str, int], VirusTotalSession]:
    """Delete every notification of the accepted windows; counts per window."""
    ids = {
        key: [str(i) for item in items if (i := n.context(item).get("notification_id"))]
        for key, items in notifications.items()
    }

    async def delete(session: VirusTotalSession, key: str) -> int:
        done = await asyncio.gather(*(session.delete_notification(i) for i in ids[key]))
        return sum(done)

    return run_vt(virustotal, for_each_partition(list(ids), delete))
