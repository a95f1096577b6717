"""The Livehunt asset chain: fetch, filter, download, map. A thin shell around pure code.

    livehunt_notifications -> livehunt_files -> livehunt_rulesets  \\
                                             -> livehunt_artifacts  -> livehunt_stix_bundles

Every asset is partitioned by hour (`partitions.py`) and exchanges `{partition_key: value}`
mappings, so a run covers one window or, in a backfill, up to a day of windows at once (one
process start per day instead of per hour). Memory follows the window, not the run: a step
reads its inputs one window at a time (`PartitionMap`), the notifications are spooled to a
temporary file per window as their pages arrive, and the files tables and the bundles are made
one window at a time while the IO manager writes them. What a step keeps for the whole run is
small: ruleset ids, sample hashes and their download records. VirusTotal is called only by the
first asset, the rulesets and the artifacts; every raw response is stored before use, so the
bundles can be rebuilt after a mapping change without spending quota.

VirusTotal calls in the metadata: a window's `vt_calls`, `vt_calls_<endpoint>` and `vt_retries`
are the calls that served that window. A call that serves several windows of one run (a ruleset
fetched once for the run, a sample kept in two windows and downloaded once) is counted on every
window it serves, so a window shows what it cost, the same whether it ran alone or in a
backfill, and `rulesets 4` comes with the 4 fetches behind it. What the step really spent in the
run, each call once, is `run_vt_calls` / `run_vt_calls_<endpoint>`: the same figure on every
window of the run (add it up per run, not per window).

Metadata that reads well in the UI: the UI plots every numeric entry across partitions, so only
what an operator watches is an integer, always present (notifications, kept, dropped, samples,
STIX objects, VT calls; delivery's in `delivery.py`); a count that is usually zero (retries,
budget waits, missing rulesets) is an integer only in the windows where it happened, so a quiet
deployment has no plot of zeros. Breakdowns (by drop reason, notification type, endpoint,
sample status, STIX type) are small tables, never JSON; an asset that calls no VT has no VT
entries.
"""

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import dagster as dg
import pandas as pd

from vt_pipeline.livehunt.filters import MALFORMED, filter_notifications
from vt_pipeline.livehunt.options import LivehuntOptions
from vt_pipeline.livehunt.partitions import livehunt_partitions, partition_windows, windows_per_run
from vt_pipeline.livehunt.relations import (
    FileExpansions,
    FileRelations,
    related_bundle_objects,
    window_relations,
)
from vt_pipeline.livehunt.schedules import LIVEHUNT_FRESHNESS
from vt_pipeline.livehunt.settings import LivehuntSettings
from vt_pipeline.opencti.resource import OpenCTIError, OpenCTIResource
from vt_pipeline.stix.common import make_bundle
from vt_pipeline.stix.livehunt import build_livehunt_bundle
from vt_pipeline.storage.store import (
    EncodedList,
    PartitionMap,
    Partitions,
    Spool,
    StorageResource,
    dumps_json,
    sniff_mime_type,
)
from vt_pipeline.virustotal import objects as n
from vt_pipeline.virustotal.resource import (
    CallLog,
    VirusTotalError,
    VirusTotalResource,
    VirusTotalSession,
    call_scope,
)

T = TypeVar("T")
# Artifact statuses whose sample exists (locally or in OpenCTI) and so appears in the bundle.
AVAILABLE = frozenset({"downloaded", "already_stored", "in_opencti"})
# {partition_key: value}: inputs read one window at a time, outputs made one at a time.
Partitioned = Partitions

# Waiting for quota budget is shown from this long on: the budget's own transactions take
# milliseconds on every run, which would be a plot of noise.
BUDGET_WAIT_SHOWN = 1.0

# Who answers for the Livehunt assets in the UI (Dagster owner syntax: a team or an e-mail).
LIVEHUNT_OWNERS = ["team:threat-intel"]
# The upstream OpenCTI connector the Livehunt assets replace, as an asset tag.
REPLACES_TAG = {"replaces": "virustotal-livehunt-notifications"}

# What every Livehunt asset shares: the hourly windows, the group, the windows per backfill run.
LIVEHUNT_ASSET: dict[str, Any] = {
    "partitions_def": livehunt_partitions,
    "group_name": "livehunt",
    "backfill_policy": dg.BackfillPolicy.multi_run(max_partitions_per_run=windows_per_run()),
    "owners": LIVEHUNT_OWNERS,
    "tags": REPLACES_TAG,
    # Stale in the UI when the schedule stops materializing them (see `livehunt_freshness`).
    "freshness_policy": LIVEHUNT_FRESHNESS,
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
    return for_each(keys, work, scope=lambda key: key)


def for_each(
    keys: Iterable[str],
    work: Callable[[VirusTotalSession, str], Awaitable[T]],
    scope: Callable[[str], str],
) -> Callable[[VirusTotalSession], Awaitable[dict[str, T]]]:
    """Run `work` for every key concurrently, each task's calls counted under `scope(key)`."""
    keys = list(keys)

    async def scoped(session: VirusTotalSession, key: str) -> T:
        call_scope(scope(key))
        return await work(session, key)

    async def gather(session: VirusTotalSession) -> dict[str, T]:
        results = await asyncio.gather(*(scoped(session, key) for key in keys))
        return dict(zip(keys, results, strict=True))

    return gather


def vt_calls_metadata(session: VirusTotalSession, scopes: Iterable[str] = ()) -> dict[str, Any]:
    """A window's VirusTotal calls: those made under any of `scopes` (its own, and the shared
    calls that served it, each once), with the run's beside; per endpoint in one table."""
    window, run = CallLog.empty(), session.log
    for scope in dict.fromkeys(scopes):
        log = session.log_for(scope)
        window.calls.update(log.calls)
        window.retries.update(log.retries)
        window.budget_wait_seconds += log.budget_wait_seconds
    out: dict[str, Any] = {
        "vt_calls": dg.MetadataValue.int(window.total),
        "run_vt_calls": dg.MetadataValue.int(run.total),
    }
    endpoints = sorted({*window.calls, *run.calls})
    if endpoints:
        out["vt_calls_by_endpoint"] = dg.MetadataValue.table(
            [
                dg.TableRecord(
                    {"endpoint": e, "window": int(window.calls[e]), "run": int(run.calls[e])}
                )
                for e in endpoints
            ],
            schema=dg.TableSchema(
                columns=[
                    dg.TableColumn("endpoint", "string"),
                    dg.TableColumn("window", "int", description="calls that served this window"),
                    dg.TableColumn("run", "int", description="calls the whole run made"),
                ]
            ),
        )
    if retries := sum(window.retries.values()):
        out["vt_retries"] = dg.MetadataValue.int(retries)
    if window.budget_wait_seconds >= BUDGET_WAIT_SHOWN:
        out["vt_budget_wait_seconds"] = dg.MetadataValue.float(round(window.budget_wait_seconds, 3))
    if run.budget_wait_seconds >= BUDGET_WAIT_SHOWN:
        out["run_vt_budget_wait_seconds"] = dg.MetadataValue.float(
            round(run.budget_wait_seconds, 3)
        )
    return out


def counts_table(column: str, counts: Mapping[str, int], unit: str) -> dg.TableMetadataValue:
    """A breakdown as a two-column table (`column`, `unit`), the names that occurred, sorted: one
    readable entry instead of a JSON blob or one mostly-zero plot per name."""
    return dg.MetadataValue.table(
        [
            dg.TableRecord({column: str(name), unit: int(count)})
            for name, count in sorted(counts.items())
            if count
        ],
        schema=dg.TableSchema(
            columns=[dg.TableColumn(column, "string"), dg.TableColumn(unit, "int")]
        ),
    )


def table_counts(value: Any, count_column: str | None = None) -> dict[str, int]:
    """A breakdown table read back as `{name: count}` (its first column, and `count_column` or
    its last one); what the demo's summary and the benchmarks add up."""
    records = getattr(value, "records", None) or []
    schema = getattr(value, "schema", None)
    if not records or schema is None:
        return {}
    names = [c.name for c in schema.columns]
    count = count_column or names[-1]
    return {str(r.data[names[0]]): int(r.data[count]) for r in records}


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
    # A window's pages go to an unnamed temporary file as they arrive (gone when closed, or
    # with the process): the windows are read concurrently, and held in memory until the last
    # page a day of them would all be in memory at once.
    spools: dict[str, Spool] = {}

    async def fetch(session: VirusTotalSession, key: str) -> bool:
        window, spool = windows[key], spools.setdefault(key, Spool(storage.base_dir))
        return await session.stream_livehunt_notifications(
            window.start, window.end, spool.add, tag, limit
        )

    try:
        truncated, session = run_vt(virustotal, for_each_partition(list(windows), fetch))
    except BaseException:
        for spool in spools.values():
            spool.close()
        raise

    def merged(key: str) -> EncodedList:
        """The window's record, made while the IO manager writes it (once per window), one
        notification parsed at a time: the record stays encoded (a fifth of its parsed size)."""
        if truncated[key]:
            context.log.warning(f"{key}: stopped at limit={limit}; later notifications not read")
        known = storage.stored_json(context.asset_key.path, key) or []
        record, types, read = merge_notifications(known, spools.pop(key).lines())
        metadata: dict[str, Any] = {
            "notifications": len(record),
            "notifications_new": len(record) - len(known),
            "notifications_read": read,
            "notifications_by_type": counts_table("type", types, "notifications"),
            **vt_calls_metadata(session, [key]),
        }
        metadata["limit_reached"] = truncated[key]  # a yes/no: shown, never plotted
        context.add_asset_metadata(metadata, partition_key=key)
        return record

    return PartitionMap(windows, merged)


def merge_notifications(
    known: list[Any], fetched: Iterable[bytes]
) -> tuple[EncodedList, Counter[str], int]:
    """The stored items, unchanged and in order, then the fetched ones (canonical JSON, one at
    a time) they lack, all encoded; the record's notifications by type; how many were read.
    Identity is the notification id (the canonical JSON for an item without one, as the VT
    session deduplicates), so an earlier stored item is never replaced by a re-read."""
    record = [dumps_json(item) for item in known]
    seen = {_identity(item) for item in known}
    types = Counter(_type(item) for item in known)
    read = 0
    for line in fetched:
        item, read = json.loads(line), read + 1
        identity = _identity(item)
        if identity not in seen:
            seen.add(identity)
            types[_type(item)] += 1
            record.append(line)
    return EncodedList(record), types, read


def _type(item: Any) -> str:
    return n.safe_text(item.get("type") if isinstance(item, dict) else None, 64)


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
    return files_tables(context, livehunt_notifications, livehunt_settings.to_options())


def files_tables(
    context: dg.AssetExecutionContext,
    notifications: Mapping[str, list[dict[str, Any]]],
    options: LivehuntOptions,
) -> Partitioned[pd.DataFrame]:
    """Each partition's filters table and its metadata (Livehunt windows, Retrohunt jobs)."""

    def files(key: str) -> pd.DataFrame:
        """The window's table, made while the IO manager writes it."""
        frame = filter_notifications(notifications[key], options)
        reasons = frame["drop_reason"].dropna().value_counts().sort_index()
        malformed = frame[frame["drop_reason"] == MALFORMED]
        for row in malformed.itertuples():
            context.log.warning(
                f"{key}: notification {row.notification_id or '(no id)'} dropped as "
                f"{MALFORMED}: {row.drop_detail}"
            )
        metadata: dict[str, Any] = {
            "notifications": len(frame),
            "kept": int(frame["kept"].sum()),
            "dropped": int((~frame["kept"]).sum()),
            "dropped_by_reason": counts_table(
                "reason", {k: int(v) for k, v in reasons.items()}, "notifications"
            ),
        }
        if len(malformed):
            metadata["malformed_notifications"] = dg.MetadataValue.table(
                [
                    dg.TableRecord(
                        {
                            "notification_id": str(row.notification_id or "(no id)"),
                            "why": str(row.drop_detail or ""),
                        }
                    )
                    for row in malformed.itertuples()
                ],
                schema=dg.TableSchema(
                    columns=[
                        dg.TableColumn("notification_id", "string"),
                        dg.TableColumn("why", "string"),
                    ]
                ),
            )
        context.add_asset_metadata(metadata, partition_key=key)
        return frame

    return PartitionMap(notifications, files)


@dg.asset(kinds={"virustotal", "yara"}, **LIVEHUNT_ASSET, **_VT)
def livehunt_rulesets(
    context: dg.AssetExecutionContext,
    livehunt_files: Partitioned[pd.DataFrame],
    virustotal: VirusTotalResource,
    livehunt_settings: LivehuntSettings,
) -> Partitioned[dict[str, dict[str, Any]]]:
    """The raw Livehunt rulesets the kept notifications name, fetched once per run.

    Only kept notifications count: a dropped file costs no ruleset fetch. A ruleset VirusTotal
    no longer has (404) is left out; the bundle then counts the YARA rule as missing. A fetch
    is counted on every window whose notifications name the ruleset (see the module docstring);
    `run_vt_calls` is what the run spent.
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

    async def fetch(session: VirusTotalSession, ruleset_id: str) -> dict[str, Any] | None:
        try:
            return await session.hunting_ruleset(ruleset_id)
        except VirusTotalError as exc:
            if exc.code == "NotFoundError":
                context.log.warning(f"ruleset {ruleset_id} not found on VirusTotal")
                return None
            raise

    if livehunt_settings.cache_rulesets:
        # One fetch per distinct ruleset for the whole run, under the ruleset's own scope.
        distinct = sorted({ruleset_id for ids in wanted.values() for ruleset_id in ids})
        fetched, session = run_vt(virustotal, for_each(distinct, fetch, scope=_ruleset_scope))
        found_by_key = {key: {r: fetched[r] for r in set(ids)} for key, ids in wanted.items()}
        scopes = {key: [_ruleset_scope(r) for r in sorted(set(ids))] for key, ids in wanted.items()}
    else:

        async def for_partition(
            session: VirusTotalSession, key: str
        ) -> dict[str, dict[str, Any] | None]:
            # upstream: one fetch per notification, counted on the window that made it
            return {ruleset_id: await fetch(session, ruleset_id) for ruleset_id in wanted[key]}

        found_by_key, session = run_vt(virustotal, for_each_partition(list(wanted), for_partition))
        scopes = {key: [key] for key in wanted}

    rulesets: dict[str, dict[str, dict[str, Any]]] = {}
    for key, found in found_by_key.items():
        rulesets[key] = {r: ruleset for r, ruleset in sorted(found.items()) if ruleset is not None}
        metadata: dict[str, Any] = {
            "rulesets": len(rulesets[key]),
            **vt_calls_metadata(session, scopes[key]),
        }
        if missing := len(set(wanted[key]) - set(rulesets[key])):
            metadata["missing_rulesets"] = missing
        context.add_asset_metadata(metadata, partition_key=key)
    return rulesets


def _ruleset_scope(ruleset_id: str) -> str:
    return f"ruleset {ruleset_id}"


def _sample_scope(sha256: str) -> str:
    return f"sample {sha256}"


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
    One download per distinct SHA-256 per run: a sample kept in several windows of the run is
    fetched once, and every one of those windows records the same result (e.g. `downloaded`)
    and counts the call (see the module docstring).
    """
    options = livehunt_settings.to_options()
    return sample_artifacts(context, livehunt_files, virustotal, options, storage, opencti)


def sample_artifacts(
    context: dg.AssetExecutionContext,
    livehunt_files: Mapping[str, pd.DataFrame],
    virustotal: VirusTotalResource,
    options: LivehuntOptions,
    storage: StorageResource,
    opencti: OpenCTIResource,
) -> Partitioned[list[dict[str, Any]]]:
    """`livehunt_artifacts` of any partitions' files tables (Livehunt windows, Retrohunt jobs)."""
    store = storage.artifact_store()
    targets: dict[str, list[str]] = {}
    sizes: dict[str, int | None] = {}  # every distinct sample of the run, with VT's size
    for key in sorted(livehunt_files):  # one window's table at a time
        frame = livehunt_files[key]
        kept = frame[frame["kept"] & (frame["object_type"] == "file")]
        unique = kept.drop_duplicates("subject") if options.upload_artifact else kept.iloc[:0]
        targets[key] = [str(row.subject) for row in unique.itertuples()]
        for row in unique.itertuples():
            sizes.setdefault(str(row.subject), None if pd.isna(row.size) else int(row.size))
    in_opencti = _held_by_opencti(context, opencti, set(sizes))

    async def fetch_one(session: VirusTotalSession, sha256: str) -> dict[str, Any]:
        cap, size = options.artifact_max_bytes, sizes[sha256]
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

    results, session = run_vt(virustotal, for_each(sorted(sizes), fetch_one, scope=_sample_scope))
    artifacts: dict[str, list[dict[str, Any]]] = {}
    for key in livehunt_files:
        records = artifacts[key] = [dict(results[sha256]) for sha256 in targets[key]]
        statuses = Counter(record["status"] for record in records)
        stored = [r for r in records if r["status"] in AVAILABLE]
        if not options.upload_artifact:
            # Nothing to plot: a constant 0 would say "no sample" where the truth is "not asked".
            context.add_asset_metadata(
                {"samples": "not downloaded: UPLOAD_ARTIFACT is off"}, partition_key=key
            )
            continue
        context.add_asset_metadata(
            {
                "artifacts": len(stored),
                "artifact_bytes": sum(int(r["size"] or 0) for r in stored),
                "artifacts_by_status": counts_table("status", statuses, "samples"),
                **vt_calls_metadata(session, [_sample_scope(s) for s in targets[key]]),
            },
            partition_key=key,
        )
    return artifacts


@dg.asset(kinds={"virustotal", "json"}, **LIVEHUNT_ASSET, **_VT)
def livehunt_file_relations(
    context: dg.AssetExecutionContext,
    livehunt_files: Partitioned[pd.DataFrame],
    livehunt_settings: LivehuntSettings,
    virustotal: VirusTotalResource,
) -> Partitioned[FileRelations]:
    """Each window's kept files with their VT relations and ATT&CK trees, raw
    (`livehunt/relations.py`); nothing and no call unless
    VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_FILE_RELATIONSHIPS or _FILE_ATTACK_PATTERNS is set."""
    wanted = livehunt_settings.file_expansions()
    files: dict[str, list[str]] = {}
    for key in sorted(livehunt_files):  # one window's table at a time
        frame = livehunt_files[key]
        kept = frame[frame["kept"] & (frame["object_type"] == "file")]
        files[key] = sorted(set(kept["subject"].astype(str))) if wanted.fetches else []
    lines: dict[str, list[str]] = {key: [] for key in files}

    async def fetch(session: VirusTotalSession, key: str) -> FileRelations:
        return await window_relations(session, files[key], wanted, lines[key])

    session: VirusTotalSession | None = None
    fetched: dict[str, FileRelations] = {key: {} for key in files}
    if any(files.values()):
        fetched, session = run_vt(virustotal, for_each_partition(list(files), fetch))
    for key in files:  # a window's record is small: hashes and descriptors
        metadata: dict[str, Any] = {}
        if session is not None and fetched[key]:  # figures only when relations were asked
            metadata.update(files_expanded=len(fetched[key]), **vt_calls_metadata(session, [key]))
        if lines[key]:
            metadata["relations"] = dg.MetadataValue.md("\n".join(f"- {x}" for x in lines[key]))
        context.add_asset_metadata(metadata, partition_key=key)
    return fetched


@dg.asset(kinds={"stix", "json"}, **LIVEHUNT_ASSET)
def livehunt_stix_bundles(
    context: dg.AssetExecutionContext,
    livehunt_notifications: Partitioned[list[dict[str, Any]]],
    livehunt_files: Partitioned[pd.DataFrame],
    livehunt_rulesets: Partitioned[dict[str, dict[str, Any]]],
    livehunt_artifacts: Partitioned[list[dict[str, Any]]],
    livehunt_file_relations: Partitioned[FileRelations],
    livehunt_settings: LivehuntSettings,
) -> Partitioned[dict[str, Any]]:
    """One STIX 2.1 bundle per window; pure mapping of stored inputs, no VirusTotal call.
    Each window's bundle is made from that window's inputs as the IO manager writes it, once
    the window before it is written and let go."""
    options = livehunt_settings.to_options()
    return stix_bundles(
        context,
        livehunt_notifications,
        livehunt_files,
        livehunt_rulesets,
        livehunt_artifacts,
        options,
        relations=livehunt_file_relations,
        expansions=livehunt_settings.file_expansions(),
    )


def stix_bundles(
    context: dg.AssetExecutionContext,
    notifications: Mapping[str, list[dict[str, Any]]],
    files: Mapping[str, pd.DataFrame],
    rulesets: Mapping[str, dict[str, dict[str, Any]]],
    artifacts: Mapping[str, list[dict[str, Any]]],
    options: LivehuntOptions,
    *,
    relations: Mapping[str, FileRelations] | None = None,
    expansions: FileExpansions | None = None,
) -> Partitioned[dict[str, Any]]:
    """Each partition's bundle and its metadata (Livehunt windows, Retrohunt jobs); with
    `relations` (`livehunt_file_relations`), the kept files' related objects too."""

    def bundle(key: str) -> dict[str, Any]:
        stored = {r["sha256"]: r for r in artifacts[key] if r["status"] in AVAILABLE}
        kept = _kept(notifications[key], files[key])
        result = build_livehunt_bundle(kept, rulesets[key], stored, options)
        bundle, stats = result.bundle, Counter(result.stats)
        if relations is not None and expansions is not None and expansions.any:
            related, counts = related_bundle_objects(
                bundle["objects"], relations.get(key) or {}, kept, expansions
            )
            bundle, stats = make_bundle([*bundle["objects"], *related]), stats + counts
        del kept
        types = Counter(obj["type"] for obj in bundle["objects"])
        context.add_asset_metadata(
            {
                "stix_objects": len(bundle["objects"]),
                "stix_objects_by_type": counts_table("type", types, "objects"),
                # What the mapping met (mapped, duplicates, YARA rules missing...), when it met it
                "mapping": counts_table("event", stats, "count"),
            },
            partition_key=key,
        )
        return bundle

    return PartitionMap(notifications, bundle)


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
    livehunt_file_relations,
    livehunt_stix_bundles,
]
