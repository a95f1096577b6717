"""`vt-pipeline`: run the emulators, the demo, and the Dagster UI against the emulators.

vt-pipeline emulate virustotal --port 8765 --seed 7 --notifications 500
vt-pipeline emulate postgres   # a private PostgreSQL for deploy/dagster.yaml
vt-pipeline demo [--notifications 300] [--windows 3] [--graph]
vt-pipeline ui [--port 3000]
vt-pipeline sweep-runs   # end the runs whose process died, free their slots (no daemon needed)
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg

from vt_pipeline.emulators.processes import interrupt_on_sigterm, spawn_owned, terminate_group

DEMO_SEED = 7
REPO_ROOT = Path(__file__).resolve().parent.parent


def main(argv: Sequence[str] | None = None) -> int:
    # Dagster flags the (stable in practice) backfill policy and partitioned checks as beta.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    parser = argparse.ArgumentParser(prog="vt-pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    emulate = commands.add_parser("emulate", help="serve an emulator of an external system")
    systems = emulate.add_subparsers(dest="system", required=True)
    from vt_pipeline.emulators import postgres
    from vt_pipeline.emulators.opencti import server as opencti_emulator
    from vt_pipeline.emulators.virustotal import server as vt_emulator

    vt_emulator.add_arguments(systems.add_parser("virustotal", help="VirusTotal API v3"))
    opencti_emulator.add_arguments(systems.add_parser("opencti", help="OpenCTI GraphQL API"))
    postgres.add_arguments(
        systems.add_parser("postgres", help="a private PostgreSQL for deploy/dagster.yaml")
    )

    demo = commands.add_parser(
        "demo", help="materialize the last Livehunt windows from the emulator"
    )
    demo.add_argument("--notifications", type=int, default=300, help="in the 24 h corpus")
    demo.add_argument("--windows", type=int, default=3, help="hourly windows to materialize")
    demo.add_argument("--seed", type=int, default=DEMO_SEED)
    demo.add_argument(
        "--graph",
        action="store_true",
        help="then enrich one file with every expansion on and print the graph OpenCTI holds "
        "around it",
    )

    ui = commands.add_parser("ui", help="dagster dev against the VirusTotal and OpenCTI emulators")
    ui.add_argument("--port", type=int, default=3000)
    ui.add_argument("--notifications", type=int, default=300)
    ui.add_argument("--seed", type=int, default=DEMO_SEED)
    ui.add_argument(
        "--windows",
        type=int,
        default=3,
        help="Livehunt windows delivered into the emulators before the UI opens (0: none), so "
        "the links to OpenCTI open on this run's emulator",
    )

    commands.add_parser(
        "sweep-runs",
        help="end the runs of $DAGSTER_HOME whose process died and free their pool slots "
        "(what the dead_run_sweeper sensor does every 30 s when the daemon runs)",
    )

    args = parser.parse_args(argv)
    if args.command == "sweep-runs":
        return run_sweep()
    if args.command == "emulate":
        systems_run = {"virustotal": vt_emulator, "opencti": opencti_emulator, "postgres": postgres}
        return systems_run[args.system].run(args)
    # SIGTERM (a service manager, `kill`, a container stop) unwinds like Ctrl-C: the emulators,
    # the broker and `dagster dev` stop with us; a SIGKILL is left to their watchdogs.
    with interrupt_on_sigterm():
        try:
            if args.command == "demo":
                return run_demo(args.notifications, args.windows, args.seed, args.graph)
            return run_ui(args.port, args.notifications, args.seed, args.windows)
        except KeyboardInterrupt:
            return 130


# First line of the instance file vt-pipeline keeps in $DAGSTER_HOME, a copy of the repository's.
COPY_MARK = "# Copied by vt-pipeline from the repository's dagster.yaml at every start"


def demo_home() -> Path:
    """The demo's Dagster instance: $DAGSTER_HOME, else `.dagster_home` in the checkout.

    Dagster reads its instance file from $DAGSTER_HOME only, so the repository's `dagster.yaml`
    is copied there at every start (the README's instance is then the one in force); a
    dagster.yaml the user wrote there (without the copy's first line, and not a plain copy) is
    left alone, and the start says so.
    """
    home = Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    target, source = home / "dagster.yaml", REPO_ROOT / "dagster.yaml"
    existing = target.read_text() if target.exists() else None
    # Ours (marked), or an unmarked copy an older vt-pipeline made of the same file: replaced.
    if existing is None or existing.startswith(COPY_MARK) or existing == source.read_text():
        target.write_text(
            f"{COPY_MARK} ({source}): edit that file, not this one.\n{source.read_text()}"
        )
    else:
        print(f"Dagster instance: {target} is yours (not the repository's dagster.yaml): kept")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def demo_emulator(stack: ExitStack, notifications: int, seed: int) -> tuple[str, Any, Any]:
    """Start the VT emulator with the last 24 hours of synthetic notifications; return its URL,
    its corpus and the emulator (its call counts)."""
    from vt_pipeline.emulators.virustotal.corpus import generate_corpus
    from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator

    end = datetime.now(UTC)
    corpus = generate_corpus(
        seed=seed, notifications=notifications, start=end - timedelta(hours=24), end=end
    )
    # Uploaded samples are analysed at once (VT takes minutes; the demo shows the flow).
    emulator = VirusTotalEmulator(corpus, api_keys={"demo": True}, analysis_polls=0)
    url = stack.enter_context(emulator.serve())
    os.environ.update({"VIRUSTOTAL_API_URL": url, "VIRUSTOTAL_TOKEN": "demo"})
    os.environ.setdefault("VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_UPLOAD_ARTIFACT", "true")
    return url, corpus, emulator


def demo_opencti(stack: ExitStack) -> Any:
    """Start a real RabbitMQ and the OpenCTI emulator on it; point OPENCTI_* at them."""
    from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
    from vt_pipeline.emulators.rabbitmq import RabbitMQ

    broker = stack.enter_context(RabbitMQ())
    opencti = stack.enter_context(OpenCTIEmulator(amqp=broker))
    os.environ.update({"OPENCTI_URL": opencti.url, "OPENCTI_TOKEN": opencti.token})
    return opencti


def opencti_summary(opencti: Any) -> str:
    counts = opencti.counts()
    works = opencti.works()
    complete = sum(work.status == "complete" for work in works)
    return "\n".join(
        [
            f"OpenCTI emulator {opencti.url} now holds:",
            "  " + ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items())),
            f"  relationships {len(opencti.relationships())}, uploaded samples "
            f"{len(opencti.artifacts())}, works {len(works)} ({complete} complete)",
        ]
    )


def run_demo(notifications: int, windows: int, seed: int, graph: bool = False) -> int:
    home = demo_home()
    with ExitStack() as stack:
        url, corpus, vt = demo_emulator(stack, notifications, seed)
        print("Starting RabbitMQ and the OpenCTI emulator...", flush=True)
        opencti = demo_opencti(stack)
        from vt_pipeline.livehunt.summary import livehunt_summary
        from vt_pipeline.resources import build_resources

        print(f"VirusTotal emulator: {url} ({notifications} notifications over 24 h, seed {seed})")
        with dg.DagsterInstance.get() as instance:
            result = ingest_recent_windows(instance, windows, home)
            print(livehunt_summary(result))
            print(opencti_summary(opencti))
            print()
            resources = build_resources()
            enriched = demo_enrichment(instance, opencti, corpus, resources)
            if graph:
                print()
                enriched = demo_graph(instance, opencti, vt, corpus, resources) and enriched
    print()
    print(
        "See these runs in the Dagster UI (same Dagster home, emulators started again with the "
        "same seed):  .venv/bin/vt-pipeline ui   then open http://127.0.0.1:3000"
    )
    return 0 if result.success and enriched else 1


def ingest_recent_windows(
    instance: dg.DagsterInstance, windows: int, home: Path
) -> dg.JobExecutionResult:
    """One run of `livehunt_job` over the last `windows` hourly windows, delivered to OpenCTI.

    A run of the code location's job, as the schedule makes (not an ad hoc materialization):
    the UI shows it on the Overview timeline and on the job's page, not only under Runs.
    """
    from vt_pipeline.livehunt.partitions import RANGE_END_TAG, RANGE_START_TAG, livehunt_partitions
    from vt_pipeline.location_runs import execute_location_job

    now = datetime.now(UTC).timestamp()
    last = livehunt_partitions.get_partition_key_for_timestamp(now)
    first = livehunt_partitions.get_partition_key_for_timestamp(now - 3600 * (windows - 1))
    print(f"Materializing Livehunt windows {first} .. {last} into {home}", flush=True)
    return execute_location_job(
        instance,
        "livehunt_job",
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        tags={RANGE_START_TAG: first, RANGE_END_TAG: last},
    )


# One entity of each type the enrichment connector takes, from the corpus's fixed targets.
DEMO_ENTITIES: tuple[tuple[str, str], ...] = (
    ("StixFile", "malicious_file"),
    ("Artifact", "unknown_file_content"),
    ("IPv4-Addr", "ip"),
    ("Domain-Name", "domain"),
    ("Hostname", "hostname"),
    ("Url", "url"),
    ("Indicator", "domain"),
)


def demo_enrichment(
    instance: dg.DagsterInstance, opencti: Any, corpus: Any, resources: dict[str, Any]
) -> bool:
    """Ask OpenCTI to enrich one entity of each type, let the sensor and the job answer, and
    print what OpenCTI then holds about each. True when every work completed without error."""
    from vt_pipeline.enrichment.summary import answer_enrichment_requests

    cti = resources["opencti"].process_config_and_initialize()  # the EnvVar token resolved
    with cti.connector("enrichment"):
        pass  # registered: OpenCTI now has the connector's listen queue
    targets = corpus.targets()
    entities: list[tuple[str, str]] = []
    for entity_type, target in DEMO_ENTITIES:
        value = getattr(targets, target)
        if entity_type == "StixFile":
            entity = opencti.create_observable(entity_type, hashes={"SHA-256": value})
        elif entity_type == "Artifact":
            entity = opencti.create_artifact(value, name="never-seen.txt", mime_type="text/plain")
        elif entity_type == "Indicator":
            entity = opencti.create_indicator(
                f"[domain-name:value = '{value}']",
                observable_values=[{"type": "Domain-Name", "value": value}],
            )
        else:
            entity = opencti.create_observable(entity_type, value)
        entities.append((entity_type, entity))
    works = {
        entity: opencti.ask_enrichment(entity, cti.enrichment_connector_id)
        for _, entity in entities
    }
    print(f"Asked OpenCTI to enrich {len(entities)} entities; the sensor and the job answer...")
    runs = answer_enrichment_requests(
        instance, resources, expected=len(entities), log_level="WARNING"
    )
    jobs = ", ".join(sorted({r.job_def.name for r in runs}))
    print(f"  {len(runs)} run(s) of {jobs}: {sum(r.success for r in runs)} succeeded")
    ok = True
    for entity_type, entity in entities:
        work = opencti.work(works[entity])
        summary = opencti.entity_summary(entity)
        in_error = bool(work is None or work.in_error or work.status != "complete")
        ok = ok and not in_error
        relations = sorted({r["relationship_type"] for r in summary.get("relationships", [])})
        print(
            f"  {entity_type:12s} score {summary.get('score')}, "
            f"notes {len(summary.get('notes', []))}, "
            f"indicators {len(summary.get('indicators', []))}, "
            f"relationships {', '.join(relations) or 'none'}; "
            f"work {'in error' if in_error else 'complete'}"
        )
    return ok


# The graph demo (`demo --graph`, issue 19): one file enriched with every expansion on.
GRAPH_RELATIONSHIPS_LIMIT = 5  # per relation: a readable tree, and the cap shows
QUOTA_ENDPOINT = "overall_quotas"  # the VT emulator's name for the budget's quota read


def graph_settings(base: Any) -> Any:
    """`base` (the deployment's enrichment settings) with every file expansion on: all the
    file's VT relations (capped), family, ATT&CK, Sigma, IDS, YARA, comments and GTI context.
    A resource of its own for the graph's run: the environment is left as it is."""
    from vt_pipeline.enrichment.settings import EnrichmentSettings
    from vt_pipeline.virustotal.relations import RELATIONSHIPS

    values = {name: getattr(base, name) for name in EnrichmentSettings.model_fields}
    values.update(
        file_relationships=list(RELATIONSHIPS["file"]),
        relationships_limit=GRAPH_RELATIONSHIPS_LIMIT,
        file_malware_family=True,
        file_attack_patterns=True,
        file_import_sigma=True,
        file_import_ids=True,
        file_import_yara=True,
        create_note_comments=True,
        gti_context=True,
    )
    return EnrichmentSettings(**values)


def graph_file(corpus: Any, min_engines: int) -> tuple[str, list[str]]:
    """The corpus file that shows the most expansions, and what VT's answers for it lack (a
    small corpus may have no file with all). Issue 19's own options count first (family,
    ATT&CK, Sigma, IDS, comments, a GTI actor), then YARA and GTI's campaign and report; the
    first file in sorted order among the richest."""
    from vt_pipeline.emulators.virustotal.behaviour import mitre_trees
    from vt_pipeline.emulators.virustotal.comments import comment_objects
    from vt_pipeline.emulators.virustotal.gti_collections import associations
    from vt_pipeline.emulators.virustotal.objects import is_analysed

    def features(obj: dict[str, Any]) -> dict[str, tuple[int, bool]]:
        attrs = obj["attributes"]
        names = (attrs.get("popular_threat_classification") or {}).get("popular_threat_name")
        family = max((int(n.get("count") or 0) for n in names or ()), default=0)
        threats = {t["attributes"]["collection_type"] for t in associations("files", obj)}
        return {  # name: (weight, present)
            f"a family of >= {min_engines} engines": (10, family >= min_engines),
            "ATT&CK techniques": (10, bool(mitre_trees(obj))),
            "crowdsourced Sigma": (10, bool(attrs.get("sigma_analysis_results"))),
            "crowdsourced IDS": (10, bool(attrs.get("crowdsourced_ids_results"))),
            "community comments": (10, bool(comment_objects("files", obj))),
            "a GTI threat actor": (10, "threat-actor" in threats),
            "crowdsourced YARA": (1, bool(attrs.get("crowdsourced_yara_results"))),
            "a GTI campaign": (1, "campaign" in threats),
            "a GTI report": (1, "report" in threats),
        }

    best: tuple[int, str, list[str]] | None = None
    for sha256, obj in sorted(corpus.files.items()):
        if not is_analysed(obj):
            continue
        found = features(obj)
        missing = sum(weight for weight, present in found.values() if not present)
        if best is None or missing < best[0]:
            absent = [name for name, (_, present) in found.items() if not present]
            best = (missing, sha256, absent)
    if best is None:
        raise LookupError("the corpus has no analysed file")
    return best[1], best[2]


def graph_node(opencti: Any, obj: dict[str, Any]) -> str:
    """One object of the graph on a line: its OpenCTI type, what names it, its score."""
    record = opencti.record(obj["id"])
    kind = record.entity_type if record is not None else obj["type"]
    if obj["type"] == "file":
        text = (obj.get("hashes") or {}).get("SHA-256") or obj.get("name") or obj["id"]
    elif obj["type"] == "indicator":
        text = f"[{obj.get('pattern_type')}] {obj.get('name')}"
    elif obj["type"] == "attack-pattern":
        text = f"{obj.get('x_mitre_id')} {obj.get('name')}"
    elif obj["type"] == "malware":
        text = str(obj.get("name")) + (" (family)" if obj.get("is_family") else "")
    else:
        text = str(obj.get("value") or obj.get("name") or obj["id"])
    score = opencti.score_of(obj["id"]) if record is not None else None
    return f"{kind:15s} {text}" + ("" if score is None else f"  score {score}")


def graph_lines(opencti: Any, entity_id: str) -> list[str]:
    """What OpenCTI holds around an entity, as a tree: its relationships grouped by type and
    direction (a Malware with the Attack-Patterns it `uses`), the Reports containing it and
    the Notes about it."""
    summary = opencti.entity_summary(entity_id)
    ids = set(opencti.record(entity_id).all_ids())
    lines = [f"{summary['entity_type']} {summary['observable_value']}  score {summary['score']}"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for rel in summary["relationships"]:
        outgoing = rel["source_ref"] in ids
        other = opencti.get(str(rel["target_ref" if outgoing else "source_ref"]))
        if other is not None:
            label = rel["relationship_type"]
            groups.setdefault(f"{label} ->" if outgoing else f"<- {label}", []).append(other)
    # Outgoing first, then incoming, each by relationship type: the same order on every run.
    for group, items in sorted(groups.items(), key=lambda kv: (kv[0][:2] == "<-", kv[0])):
        lines.append(f"  {group} ({len(items)})")
        for line, item in sorted((graph_node(opencti, i), i) for i in items):
            lines.append(f"    {line}")
            if item["type"] == "malware":
                lines += [
                    f"      uses -> {graph_node(opencti, pattern)}"
                    for pattern in sorted(
                        opencti.related(item["id"], "uses"), key=lambda p: str(p.get("x_mitre_id"))
                    )
                ]
    reports = sorted(str(r.get("name")) for r in opencti.containers_of(entity_id, "Report"))
    lines.append(f"  in Reports ({len(reports)})")
    lines += [f"    Report          {name}" for name in reports]
    notes = sorted(str(n.get("abstract")) for n in summary["notes"])
    lines.append(f"  Notes about it ({len(notes)})")
    lines += [f"    Note            {abstract}" for abstract in notes]
    return lines


def recorded_requests(runs: Sequence[dg.ExecuteInProcessResult]) -> list[dict[str, Any]]:
    """The rows of the runs' `requests` tables (entity, outcome, VT calls, cache hits...)."""
    rows = []
    for run in runs:
        for event in run.all_events:
            if event.event_type_value == "STEP_OUTPUT":
                table = event.step_output_data.metadata.get("requests")
                rows += [dict(r.data) for r in getattr(table, "records", None) or ()]
    return rows


def demo_graph(
    instance: dg.DagsterInstance,
    opencti: Any,
    vt: Any,
    corpus: Any,
    resources: dict[str, Any],
    sensors: Sequence[dg.SensorDefinition] | None = None,
) -> bool:
    """Ask OpenCTI to enrich one file with every expansion on, let the sensor and the job
    answer (the same path as `demo_enrichment`; `sensors`: the code location's unless given),
    and print the graph OpenCTI then holds around the file and the VT calls it cost per
    endpoint (as the VT emulator counted them). True when the work completed without error."""
    from vt_pipeline.enrichment.summary import answer_enrichment_requests

    settings = graph_settings(resources["enrichment_settings"])
    sha256, absent = graph_file(corpus, settings.file_malware_family_min_engines)
    cti = resources["opencti"].process_config_and_initialize()
    with cti.connector("enrichment"):
        pass  # registered: OpenCTI now has the connector's listen queue
    entity = opencti.create_observable("StixFile", hashes={"SHA-256": sha256})
    before = vt.stats()
    work_id = opencti.ask_enrichment(entity, cti.enrichment_connector_id)
    print(
        "Enriching one file with every expansion on (its VT relations, at most "
        f"{settings.relationships_limit} each; family, ATT&CK, Sigma, IDS, YARA, comments, GTI "
        "context); the sensor and the job answer..."
    )
    if absent:
        print(f"  (the corpus's richest file; VT has nothing for it on: {', '.join(absent)})")
    runs = answer_enrichment_requests(
        instance,
        {**resources, "enrichment_settings": settings},
        expected=1,
        log_level="WARNING",
        **({"sensors": sensors} if sensors is not None else {}),
    )
    calls = {
        endpoint: spent
        for endpoint, codes in sorted(vt.stats().items())
        if (spent := sum(codes.values()) - sum((before.get(endpoint) or {}).values()))
    }
    work = opencti.work(work_id)
    ok = bool(work is not None and work.status == "complete" and not work.in_error)
    jobs = ", ".join(sorted({r.job_def.name for r in runs}))
    print(f"  {len(runs)} run(s) of {jobs}: {sum(r.success for r in runs)} succeeded")
    print("OpenCTI now holds around it:")
    print("\n".join("  " + line for line in graph_lines(opencti, entity)))
    # The session's quota read (a budget's, when its report is stale) is no request's cost.
    quota_reads = calls.pop(QUOTA_ENDPOINT, 0)
    spent = ", ".join(f"{endpoint} {count}" for endpoint, count in calls.items())
    print(
        f"  VT calls: {sum(calls.values())} ({spent or 'none'})"
        + (
            f"; and the run's budget read the key's quotas ({QUOTA_ENDPOINT} {quota_reads})"
            if quota_reads
            else ""
        )
    )
    for row in recorded_requests(runs):
        reused = int(row.get("cache_hits") or 0)
        print(
            f"  the run recorded: {row.get('outcome')}, {row.get('vt_calls')} VT calls, "
            f"{reused} stored VT answers reused"
            + (
                " (younger than VT_PIPELINE_ENRICHMENT_CACHE_HOURS: a new DAGSTER_HOME, or the "
                "variable at 0, spends the calls again)"
                if reused
                else ""
            )
        )
    if work is not None:
        for message in work.summary()["messages"] + work.summary()["errors"]:
            print(f"  work: {message}")
    print(f"  work {'complete' if ok else 'in error or not complete'}")
    return ok


def run_sweep() -> int:
    from vt_pipeline.run_health import end_dead_runs

    with dg.DagsterInstance.get() as instance:
        ended = end_dead_runs(instance)
    for run in ended:
        print(f"{run.run_id}: {run.message}")
    print(f"{len(ended)} dead run(s) ended")
    return 0


def run_ui(port: int, notifications: int, seed: int, windows: int = 3) -> int:
    """Serve the Dagster UI with the emulators running, so runs and backfills work offline.

    The last `windows` Livehunt windows are delivered into this run's OpenCTI emulator first
    (an emulator keeps nothing between starts), so their links into OpenCTI open. The UI is
    `dagster dev` started in $DAGSTER_HOME: that is where Dagster reads its instance file (the
    repository's dagster.yaml, copied there by `demo_home`), so the logs say nothing about
    another dagster.yaml. `dg dev` at the repository root works too (README, "Dagster UI");
    this wrapper keeps the older entry point, which `dg dev` itself calls, quiet about it.
    """
    home = demo_home()
    with ExitStack() as stack:
        url, _, _ = demo_emulator(stack, notifications, seed)
        opencti = demo_opencti(stack)
        print(
            f"VirusTotal emulator: {url}; OpenCTI emulator: {opencti.url}; "
            f"Dagster instance: {home} (dagster.yaml: the repository's)",
            flush=True,
        )
        if windows > 0:
            from vt_pipeline.livehunt.summary import livehunt_summary

            with dg.DagsterInstance.get() as instance:
                print(livehunt_summary(ingest_recent_windows(instance, windows, home)), flush=True)
        command = [
            sys.executable,
            # `dagster dev` says "use dg dev": dg dev runs this same server, but only from the
            # repository's root, where Dagster would warn that that dagster.yaml is not used.
            "-W",
            "ignore::FutureWarning",
            "-m",
            "dagster",
            "dev",
            "-w",
            str(REPO_ROOT / "workspace.yaml"),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
        ]
        # Its own process group, watched: it stops with us however we end (see `processes`).
        dev, watchdog = spawn_owned(command, grace=30.0, cwd=home)
        try:
            return dev.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            terminate_group(dev, grace=30.0)  # SIGTERM: dagster dev shuts down gracefully
            watchdog.release()


if __name__ == "__main__":
    sys.exit(main())
