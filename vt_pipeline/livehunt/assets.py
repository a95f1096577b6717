"""The Livehunt asset chain: fetch, filter, download, map. A thin shell around pure code.

    livehunt_notifications -> livehunt_files -> livehunt_rulesets  \\
                                             -> livehunt_artifacts  -> livehunt_stix_bundles

Every asset is partitioned by hour (`partitions.py`) and exchanges `{partition_key: value}`
dicts, so a run covers one window or, in a backfill, up to a day of windows at once (bounded
memory, one process start per day instead of per hour). VirusTotal is called only by the
first asset, the rulesets and the artifacts; every raw response is stored before use, so the
bundles can be rebuilt after a mapping change without spending quota.
"""

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import dagster as dg
import pandas as pd

from vt_pipeline.livehunt.filters import MALFORMED, filter_notifications
from vt_pipeline.livehunt.partitions import livehunt_partitions, partition_windows
from vt_pipeline.livehunt.settings import LivehuntSettings
from vt_pipeline.opencti.resource import OpenCTIError, OpenCTIResource
from vt_pipeline.stix.livehunt import build_livehunt_bundle
from vt_pipeline.storage.store import StorageResource, dumps_json, sniff_mime_type
from vt_pipeline.virustotal import objects as n
from vt_pipeline.virustotal.resource import (
    VirusTotalError,
    VirusTotalResource,
    VirusTotalSession,
    call_scope,
)

T = TypeVar("T")
# Artifact statuses whose sample exists (locally or in OpenCTI) and so appears in the bundle.
AVAILABLE = frozenset({"downloaded", "already_stored", "in_opencti"})
Partitioned = dict[str, T]

# What every Livehunt asset shares: the hourly windows, the group, a day of windows per run.
LIVEHUNT_ASSET: dict[str, Any] = {
    "partitions_def": livehunt_partitions,
    "group_name": "livehunt",
    "backfill_policy": dg.BackfillPolicy.multi_run(max_partitions_per_run=24),
}
# Runs that call VirusTotal share the `virustotal` pool (limit set in dagster.yaml).
_VT = {"pool": "virustotal"}


def run_vt(
    virustotal: VirusTotalResource, work: Callable[[VirusTotalSession], Awaitable[T]]
) -> tuple[T, VirusTotalSession]:
    """Run async VirusTotal work from a sync asset, in a loop that owns its vt-py client."""

    async def main() -> tuple[T, VirusTotalSession]:
        async with virustotal.session() as session:
            return await work(session), session

    return asyncio.run(main())


def for_each_partition(
    keys: list[str], work: Callable[[VirusTotalSession, str], Awaitable[T]]
) -> Callable[[VirusTotalSession], Awaitable[dict[str, T]]]:
    """Run `work` for every partition concurrently, each task's calls counted under its key."""

    async def scoped(session: VirusTotalSession, key: str) -> T:
        call_scope(key)
        return await work(session, key)

    async def gather(session: VirusTotalSession) -> dict[str, T]:
        results = await asyncio.gather(*(scoped(session, key) for key in keys))
        return dict(zip(keys, results, strict=True))

    return gather


def _calls(session: VirusTotalSession, key: str) -> dict[str, Any]:
    return session.log_for(key).as_metadata()


@dg.asset(kinds={"virustotal", "json"}, **LIVEHUNT_ASSET, **_VT)
def livehunt_notifications(
    context: dg.AssetExecutionContext,
    virustotal: VirusTotalResource,
    livehunt_settings: LivehuntSettings,
    storage: StorageResource,
) -> Partitioned[list[dict[str, Any]]]:
    """Every Livehunt notification dated in the window, raw as VirusTotal returned it.

    A window's record only grows: what an earlier read stored is kept as it was, and a re-read
    only adds notifications not seen before (by notification id). With DELETE_NOTIFICATION on,
    VT no longer lists a delivered window's notifications, and every schedule tick re-reads
    the previous hour: replacing the record would empty it, and its files table and bundle.
    """
    windows = partition_windows(context)
    tag, limit = livehunt_settings.filter_with_tag.strip(), max(0, livehunt_settings.limit)

    async def fetch(session: VirusTotalSession, key: str) -> tuple[list[dict[str, Any]], bool]:
        window = windows[key]
        return await session.livehunt_notifications(window.start, window.end, tag, limit)

    fetched, session = run_vt(virustotal, for_each_partition(list(windows), fetch))
    merged: dict[str, list[dict[str, Any]]] = {}
    for key, (items, truncated) in fetched.items():
        if truncated:
            context.log.warning(f"{key}: stopped at limit={limit}; later notifications not read")
        known = storage.stored_json(context.asset_key.path, key) or []
        merged[key], new = merge_notifications(known, items)
        types = Counter(n.safe_text(item.get("type"), 64) for item in merged[key])
        context.add_asset_metadata(
            {
                "notifications": len(merged[key]),
                "notifications_read": len(items),
                "notifications_already_known": len(merged[key]) - new,
                "notifications_new": new,
                "notifications_by_type": dg.MetadataValue.json(dict(sorted(types.items()))),
                "limit_reached": truncated,
                **_calls(session, key),
            },
            partition_key=key,
        )
    return merged


def merge_notifications(
    known: list[Any], fetched: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], int]:
    """The stored items, unchanged and in order, then the fetched ones they lack; and how many
    were added. Identity is the notification id (the canonical JSON for an item without one,
    as the VT session deduplicates), so an earlier stored item is never replaced by a re-read."""
    merged = list(known)
    seen = {_identity(item) for item in known}
    for item in fetched:
        identity = _identity(item)
        if identity not in seen:
            seen.add(identity)
            merged.append(item)
    return merged, len(merged) - len(known)


def _identity(item: Any) -> str:
    try:
        return "id:" + n.notification_id(item)
    except (n.InvalidNotification, AttributeError, TypeError):
        return "json:" + dumps_json(item).decode()


@dg.asset(kinds={"pandas", "parquet"}, **LIVEHUNT_ASSET)
def livehunt_files(
    context: dg.AssetExecutionContext,
    livehunt_notifications: Partitioned[list[dict[str, Any]]],
    livehunt_settings: LivehuntSettings,
) -> Partitioned[pd.DataFrame]:
    """One row per notification, with what the filters read and why a row was dropped."""
    options = livehunt_settings.to_options()
    frames: dict[str, pd.DataFrame] = {}
    for key, items in livehunt_notifications.items():
        frame = filter_notifications(items, options)
        frames[key] = frame
        reasons = frame["drop_reason"].dropna().value_counts().sort_index()
        malformed = frame[frame["drop_reason"] == MALFORMED]
        for row in malformed.itertuples():
            context.log.warning(
                f"{key}: notification {row.notification_id or '(no id)'} dropped as "
                f"{MALFORMED}: {row.drop_detail}"
            )
        context.add_asset_metadata(
            {
                "notifications": len(frame),
                "kept": int(frame["kept"].sum()),
                "dropped": int((~frame["kept"]).sum()),
                "dropped_by_reason": dg.MetadataValue.json({k: int(v) for k, v in reasons.items()}),
                "malformed_notification_ids": dg.MetadataValue.json(
                    [str(i) for i in malformed["notification_id"].fillna("(no id)")]
                ),
                "vt_calls": 0,
            },
            partition_key=key,
        )
    return frames


@dg.asset(kinds={"virustotal", "yara"}, **LIVEHUNT_ASSET, **_VT)
def livehunt_rulesets(
    context: dg.AssetExecutionContext,
    livehunt_files: Partitioned[pd.DataFrame],
    virustotal: VirusTotalResource,
    livehunt_settings: LivehuntSettings,
) -> Partitioned[dict[str, dict[str, Any]]]:
    """The raw Livehunt rulesets the kept notifications name, fetched once per run.

    Only kept notifications count: a dropped file costs no ruleset fetch. A ruleset VirusTotal
    no longer has (404) is left out; the bundle then counts the YARA rule as missing.
    """
    # partition -> ruleset id per kept notification (the frame lists the valid ones)
    wanted: dict[str, list[str]] = {
        key: [
            ruleset_id
            for ids in frame.loc[frame["kept"], "ruleset_ids"].dropna()
            for ruleset_id in str(ids).split(",")
            if ruleset_id
        ]
        if livehunt_settings.create_yara_rule
        else []
        for key, frame in livehunt_files.items()
    }

    cache: dict[str, asyncio.Task[dict[str, Any] | None]] = {}

    async def fetch(session: VirusTotalSession, ruleset_id: str) -> dict[str, Any] | None:
        try:
            return await session.hunting_ruleset(ruleset_id)
        except VirusTotalError as exc:
            if exc.code == "NotFoundError":
                context.log.warning(f"ruleset {ruleset_id} not found on VirusTotal")
                return None
            raise

    async def for_partition(session: VirusTotalSession, key: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for ruleset_id in wanted[key]:
            if not livehunt_settings.cache_rulesets:
                ruleset = await fetch(session, ruleset_id)  # upstream: one fetch per notification
            else:
                if ruleset_id not in cache:
                    cache[ruleset_id] = asyncio.ensure_future(fetch(session, ruleset_id))
                ruleset = await cache[ruleset_id]
            if ruleset is not None:
                found[ruleset_id] = ruleset
        return dict(sorted(found.items()))

    rulesets, session = run_vt(virustotal, for_each_partition(list(wanted), for_partition))
    for key, found in rulesets.items():
        context.add_asset_metadata(
            {
                "rulesets": len(found),
                "missing_rulesets": len(set(wanted[key]) - set(found)),
                **_calls(session, key),
            },
            partition_key=key,
        )
    return rulesets


@dg.asset(kinds={"virustotal", "filesystem"}, **LIVEHUNT_ASSET, **_VT)
def livehunt_artifacts(
    context: dg.AssetExecutionContext,
    livehunt_files: Partitioned[pd.DataFrame],
    virustotal: VirusTotalResource,
    livehunt_settings: LivehuntSettings,
    storage: StorageResource,
    opencti: OpenCTIResource,
) -> Partitioned[list[dict[str, Any]]]:
    """Kept samples, downloaded when `upload_artifact` is on, into the content-addressed store.

    A sample already stored costs no call; one OpenCTI already holds (with its file) is not
    downloaded at all (`in_opencti`). A sample above the size cap (by VT's size, or found while
    streaming) is skipped with reason `too_large`; one VT cannot serve, `not_available`.
    """
    options = livehunt_settings.to_options()
    store = storage.artifact_store()
    targets: dict[str, list[tuple[str, int | None]]] = {}
    for key, frame in livehunt_files.items():
        kept = frame[frame["kept"] & (frame["object_type"] == "file")]
        unique = kept.drop_duplicates("subject")
        targets[key] = (
            [
                (str(row.subject), None if pd.isna(row.size) else int(row.size))
                for row in unique.itertuples()
            ]
            if options.upload_artifact
            else []
        )
    in_opencti = _held_by_opencti(
        context, opencti, {sha256 for wanted in targets.values() for sha256, _ in wanted}
    )

    async def fetch_one(
        session: VirusTotalSession, sha256: str, size: int | None
    ) -> dict[str, Any]:
        cap = options.artifact_max_bytes
        if sha256 in in_opencti:
            record = _artifact(sha256, "in_opencti", size, "OpenCTI already holds this sample")
            return {**record, "mime_type": in_opencti[sha256]}
        if cap and size is not None and size > cap:
            return _artifact(sha256, "too_large", size, f"VT size {size} > cap {cap}")
        result = await session.download_sample(sha256, store, cap)
        record = _artifact(result.sha256, result.status, result.size, result.reason)
        if result.status in AVAILABLE:
            with open(store.path_for(sha256), "rb") as handle:
                record["mime_type"] = sniff_mime_type(handle.read(16))
        return record

    async def for_partition(session: VirusTotalSession, key: str) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(fetch_one(session, *t) for t in targets[key])))

    artifacts, session = run_vt(virustotal, for_each_partition(list(targets), for_partition))
    for key, records in artifacts.items():
        statuses = Counter(record["status"] for record in records)
        stored = [r for r in records if r["status"] in AVAILABLE]
        context.add_asset_metadata(
            {
                "enabled": options.upload_artifact,
                "artifacts": len(stored),
                "artifact_bytes": sum(int(r["size"] or 0) for r in stored),
                "artifacts_by_status": dg.MetadataValue.json(dict(sorted(statuses.items()))),
                **_calls(session, key),
            },
            partition_key=key,
        )
    return artifacts


@dg.asset(kinds={"stix", "json"}, **LIVEHUNT_ASSET)
def livehunt_stix_bundles(
    context: dg.AssetExecutionContext,
    livehunt_notifications: Partitioned[list[dict[str, Any]]],
    livehunt_files: Partitioned[pd.DataFrame],
    livehunt_rulesets: Partitioned[dict[str, dict[str, Any]]],
    livehunt_artifacts: Partitioned[list[dict[str, Any]]],
    livehunt_settings: LivehuntSettings,
) -> Partitioned[dict[str, Any]]:
    """One STIX 2.1 bundle per window; pure mapping of stored inputs, no VirusTotal call."""
    options = livehunt_settings.to_options()
    bundles: dict[str, dict[str, Any]] = {}
    for key, items in livehunt_notifications.items():
        stored = {r["sha256"]: r for r in livehunt_artifacts[key] if r["status"] in AVAILABLE}
        result = build_livehunt_bundle(
            _kept(items, livehunt_files[key]), livehunt_rulesets[key], stored, options
        )
        bundles[key] = result.bundle
        types = Counter(obj["type"] for obj in result.bundle["objects"])
        context.add_asset_metadata(
            {
                "stix_objects": len(result.bundle["objects"]),
                "stix_objects_by_type": dg.MetadataValue.json(dict(sorted(types.items()))),
                "mapping_stats": dg.MetadataValue.json(dict(sorted(result.stats.items()))),
                "vt_calls": 0,
            },
            partition_key=key,
        )
    return bundles


def _held_by_opencti(
    context: dg.AssetExecutionContext, opencti: OpenCTIResource, wanted: set[str]
) -> dict[str, str | None]:
    """Which of the wanted samples OpenCTI already holds, with the MIME type it has for them.
    Best effort: if OpenCTI cannot be asked, the samples are downloaded (quota spent, nothing
    lost) and the delivery checks again before uploading."""
    if not wanted or not opencti.configured:
        return {}
    try:
        lookups = opencti.lookups()
        held = {sha256: lookups.held_artifact(sha256) for sha256 in sorted(wanted)}
    except OpenCTIError as exc:
        context.log.warning(f"cannot ask OpenCTI which samples it holds, downloading all: {exc}")
        return {}
    return {sha256: found.get("mime_type") for sha256, found in held.items() if found}


def _kept(items: list[dict[str, Any]], frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The notifications the filters kept; the frame has one row per item, in the same order."""
    if len(frame) != len(items):
        raise ValueError(
            f"livehunt_files has {len(frame)} rows for {len(items)} notifications: "
            "re-materialize livehunt_files for this partition"
        )
    return [item for item, kept in zip(items, frame["kept"].tolist(), strict=True) if kept]


def _artifact(sha256: str, status: str, size: int | None, reason: str | None) -> dict[str, Any]:
    return {"sha256": sha256, "status": status, "size": size, "reason": reason, "mime_type": None}


livehunt_assets = [
    livehunt_notifications,
    livehunt_files,
    livehunt_rulesets,
    livehunt_artifacts,
    livehunt_stix_bundles,
]
