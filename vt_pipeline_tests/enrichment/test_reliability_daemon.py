"""Enrichment never loses a request, through a real `dagster-daemon`.

The deployment of one machine: `dagster-daemon run` on the repository's dagster.yaml (SQLite
instance, run monitoring, the code location's sensors: enrichment and the dead-run sweep), the
VirusTotal and OpenCTI emulators, a private RabbitMQ. Analysts click "enrich" in the OpenCTI
emulator; the test then kills what a crash kills and asserts, for every request: its work is
complete (enriched, or in error with the reason), it was answered once, and the listen queue is
empty.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEventType
from dagster._core.instance.ref import InstanceRef

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.processes import Watchdog, terminate_group
from vt_pipeline.emulators.rabbitmq import RabbitMQ
from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.enrichment import recovery
from vt_pipeline.enrichment.requests import DRAIN_JOB, ENRICHMENT_JOB
from vt_pipeline.opencti.listen_queue import ListenQueue
from vt_pipeline.opencti.resource import OpenCTIResource
from vt_pipeline_tests.conftest import PREMIUM_KEY
from vt_pipeline_tests.deploy.topology import environ_without
from vt_pipeline_tests.processes import spawn_logged

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
ANSWER_PREFIX = "VirusTotal enrichment of"


class Deployment:
    """`dagster-daemon run` in its own process group over a fresh DAGSTER_HOME."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.watchdog: Watchdog | None = None
        config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
        # A run left STARTING by a dead daemon is failed by run monitoring after this long
        # (the repository's default is longer; the test waits less, but a loaded machine takes
        # tens of seconds to start a run worker: shorter would fail healthy runs).
        config["run_monitoring"]["start_timeout_seconds"] = 60
        config["run_monitoring"]["poll_interval_seconds"] = 5
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        (home / "workspace.yaml").write_text((REPO_ROOT / "workspace.yaml").read_text())
        self.log = home / "daemon.log"

    def start(self) -> None:
        # The instance's SQLite storages created and migrated here, once: the daemon and its
        # code server starting together on a fresh home can both stamp the migration
        # ("alembic_version has more than one head") and the code location then fails to load.
        with self.instance():
            pass
        daemon = Path(sys.executable).parent / "dagster-daemon"
        self.process, self.watchdog = spawn_logged(
            [str(daemon), "run", "-w", str(self.home / "workspace.yaml")],
            self.log,
            {**self.env, "DAGSTER_HOME": str(self.home)},
            self.home,
        )

    def crash(self) -> None:
        """SIGKILL the daemon's process group (its code server and the runs it launched)."""
        assert self.process is not None and self.watchdog is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.watchdog.release()
        self.process = self.watchdog = None

    def stop(self) -> None:
        if self.process is not None:
            terminate_group(self.process, grace=20.0)
        if self.watchdog is not None:
            self.watchdog.release()
        self.process = self.watchdog = None

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home)))

    def wait_for(self, ready: Callable[[], Any], what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the daemon exited:\n{self.tail()}")
            value = ready()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s: {what}\n{self.tail()}")
            time.sleep(0.5)


def deployment_env(
    tmp_path: Path,
    vt_emulator: VirusTotalEmulator,
    opencti: OpenCTIEmulator,
    connector: str,
    **extra: str,
) -> dict[str, str]:
    """A deployment's environment: the emulators, a connector (and queue) of its own, nothing
    of this process's vt_pipeline, Dagster, VirusTotal or OpenCTI settings."""
    return {
        **environ_without(("DAGSTER_", "VIRUSTOTAL_", "OPENCTI_", "CONNECTOR_", "VT_PIPELINE_")),
        "PYTHONPATH": str(REPO_ROOT),
        "VIRUSTOTAL_API_URL": vt_emulator.url,
        "VIRUSTOTAL_TOKEN": PREMIUM_KEY,
        "OPENCTI_URL": opencti.url,
        "OPENCTI_TOKEN": opencti.token,
        "VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID": connector,
        "VT_PIPELINE_STORAGE_DIR": str(tmp_path / "storage"),
        **extra,
    }


@pytest.fixture
def deployment(
    tmp_path: Path, vt_emulator: VirusTotalEmulator, opencti: OpenCTIEmulator
) -> Iterator[Deployment]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    connector_id = str(uuid.uuid4())  # the broker outlives the test: a queue of its own
    env = deployment_env(
        tmp_path,
        vt_emulator,
        opencti,
        connector_id,
        VT_PIPELINE_ENRICHMENT_MODE="batch",  # what these tests are about; drain: below
        VT_PIPELINE_ENRICHMENT_BATCH_SIZE="3",
    )
    running = Deployment(home, env)
    running.start()
    try:
        running.wait_for(
            lambda: connector_id in opencti.connectors, "the enrichment sensor to register", 120
        )
        yield running
    finally:
        running.stop()


def connector_id(deployment: Deployment) -> str:
    return deployment.env["VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID"]


def click(opencti: OpenCTIEmulator, deployment: Deployment, domains: list[str]) -> list[str]:
    """An analyst's "enrich" on each domain; the work ids."""
    works = []
    for domain in domains:
        entity = opencti.create_observable("Domain-Name", domain)
        works.append(opencti.ask_enrichment(entity, connector_id(deployment)))
    return works


def enrichment_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(job_name=ENRICHMENT_JOB)))


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.RUN_START):
        if entry.dagster_event is not None and entry.dagster_event.pid:
            return entry.dagster_event.pid
    return None


def assert_every_request_answered_once(
    opencti: OpenCTIEmulator, deployment: Deployment, works: list[str], timeout: float
) -> list[dict[str, Any]]:
    """Every work complete, with exactly one answer (enriched, or an error), and the queue
    empty; the works' summaries."""

    def all_complete() -> bool:
        return all(
            (work := opencti.work(w)) is not None
            and work.status == "complete"
            and bool(work.processed_time)
            for w in works
        )

    deployment.wait_for(all_complete, "every work to complete", timeout)
    summaries = [opencti.work(w).summary() for w in works]  # type: ignore[union-attr]
    for summary in summaries:
        answers = [m for m in summary["messages"] if m.startswith(ANSWER_PREFIX)]
        assert len(answers) + len(summary["errors"]) == 1, summary
    resource = OpenCTIResource(
        url=opencti.url,
        token=opencti.token,
        enrichment_connector_id=connector_id(deployment),
    )
    with resource.connector("enrichment") as cti, ListenQueue.of(cti) as queue:
        assert queue.read(100, 5) == []
    return summaries


@pytest.mark.slow  # batch mode; the default drain mode's daemon test runs by default
def test_a_killed_run_has_its_requests_answered_again(
    deployment: Deployment,
    opencti: OpenCTIEmulator,
    vt_emulator: VirusTotalEmulator,
    vt_corpus: Corpus,
) -> None:
    vt_emulator.set_latency(4000)  # the run is still waiting on VirusTotal when it is killed
    works = click(opencti, deployment, sorted(vt_corpus.domains)[:3])
    with deployment.instance() as instance:
        killed = deployment.wait_for(
            lambda: next(
                (r.run_id for r in enrichment_runs(instance) if worker_pid(instance, r.run_id)),
                None,
            ),
            "an enrichment run to start",
            90,
        )
        pid = worker_pid(instance, killed)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        vt_emulator.set_latency(0)
        summaries = assert_every_request_answered_once(opencti, deployment, works, 240)
        assert all(not s["errors"] for s in summaries), [s["errors"] for s in summaries]
        dead = deployment.wait_for(
            lambda: (
                (run := instance.get_run_by_id(killed)) is not None
                and recovery.OUTCOME_TAG in run.tags
                and run
            ),
            "the sensor to say what became of the killed run's requests",
            60,
        )
        assert dead.status == dg.DagsterRunStatus.FAILURE
        assert "sent again in run" in dead.tags[recovery.OUTCOME_TAG], dead.tags
        retries = [r for r in enrichment_runs(instance) if r.tags.get(recovery.RETRY_OF_TAG)]
        assert [r.tags[recovery.RETRY_OF_TAG] for r in retries] == [killed]


@pytest.mark.slow  # batch mode; the default drain mode's daemon test runs by default
def test_a_crashed_daemon_loses_no_request(
    deployment: Deployment,
    opencti: OpenCTIEmulator,
    vt_emulator: VirusTotalEmulator,
    vt_corpus: Corpus,
) -> None:
    """The whole deployment dies (daemon, code server, run workers: a machine reboot) while
    runs are starting and running, then comes back."""
    vt_emulator.set_latency(3000)
    works = click(opencti, deployment, sorted(vt_corpus.domains)[:9])
    with deployment.instance() as instance:
        deployment.wait_for(
            lambda: any(worker_pid(instance, r.run_id) for r in enrichment_runs(instance)),
            "an enrichment run to start",
            90,
        )
        pids = [worker_pid(instance, r.run_id) for r in enrichment_runs(instance)]
        deployment.crash()
        for pid in pids:  # run workers in a session of their own die with the machine too
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        vt_emulator.set_latency(0)
        deployment.start()
        summaries = assert_every_request_answered_once(opencti, deployment, works, 300)
        assert all(not s["errors"] for s in summaries), [s["errors"] for s in summaries]
        retried = [r for r in enrichment_runs(instance) if r.tags.get(recovery.RETRY_OF_TAG)]
        assert retried, "no run was caught by the crash: the test proved nothing"


@pytest.mark.slow  # batch mode; the default drain mode's daemon test runs by default
def test_poison_messages_429_and_500_bursts_and_a_broker_restart_leave_every_work_complete(
    tmp_path: Path,
    vt_emulator: VirusTotalEmulator,
    opencti: OpenCTIEmulator,
    rabbitmq: RabbitMQ,
    vt_corpus: Corpus,
) -> None:
    """A message that is not JSON, one naming a work OpenCTI no longer knows, a burst of 429s
    on domains and a URL that VirusTotal answers 500 forever: the poison leaves the queue, the
    domains are enriched, the URL ends in error at the retry deadline, nothing else waits.
    Then RabbitMQ restarts (down 20 s) while a run sends its bundles: they go into the same
    works, which complete without an error."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    connector = str(uuid.uuid4())
    env = deployment_env(
        tmp_path,
        vt_emulator,
        opencti,
        connector,
        VIRUSTOTAL_RETRY_DEADLINE_SECONDS="5",
        VT_PIPELINE_ENRICHMENT_MODE="batch",
    )
    deployment = Deployment(home, env)
    vt_emulator.set_faults("domain:429:1.0:5,url:500:1.0")
    deployment.start()
    try:
        deployment.wait_for(lambda: connector in opencti.connectors, "the sensor to register", 120)
        opencti.publish_raw(connector, b"\x00\x1b[2J not json")
        opencti.publish_raw(
            connector,
            b'{"internal": {"work_id": "work_gone"}, "event": {"entity_id": "x", '
            b'"entity_type": "Malware"}}',
        )
        works = click(opencti, deployment, sorted(vt_corpus.domains)[:3])
        url = opencti.create_observable("Url", vt_corpus.targets().url)
        works.append(opencti.ask_enrichment(url, connector))
        summaries = assert_every_request_answered_once(opencti, deployment, works, 240)
        assert [bool(s["errors"]) for s in summaries] == [False, False, False, True], summaries
        assert "kept failing" in summaries[-1]["errors"][0], summaries[-1]
        assert vt_emulator.count("domain", 429) == 5

        # RabbitMQ restarts and stays down 20 s while the next run is answering its requests.
        vt_emulator.set_faults("")
        vt_emulator.set_latency(2000)
        more = click(opencti, deployment, sorted(vt_corpus.domains)[3:6])
        deployment.wait_for(
            lambda: all((w := opencti.work(work)) and w.received_time for work in more),
            "the run to take the requests",
            120,
        )
        rabbitmq.restart(down_seconds=20)
        vt_emulator.set_latency(0)
        summaries = assert_every_request_answered_once(opencti, deployment, more, 300)
        assert all(not s["errors"] for s in summaries), [s["errors"] for s in summaries]
        assert all(s["expected"] == s["processed"] > 0 for s in summaries), summaries
    finally:
        deployment.stop()


def test_drain_mode_a_killed_drain_run_is_replaced_and_loses_no_request(
    tmp_path: Path,
    vt_emulator: VirusTotalEmulator,
    opencti: OpenCTIEmulator,
    vt_corpus: Corpus,
) -> None:
    """The default mode through the daemon: the drain sensor keeps a drain run reading; a click
    is answered by it; the drain run's worker SIGKILLed while it answers is swept, replaced,
    and every request is answered exactly once, the queue empty."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    connector = str(uuid.uuid4())
    env = deployment_env(
        tmp_path, vt_emulator, opencti, connector, VT_PIPELINE_ENRICHMENT_MODE="drain"
    )
    deployment = Deployment(home, env)
    deployment.start()
    try:
        with deployment.instance() as instance:

            def reading() -> str | None:
                runs = instance.get_runs(
                    filters=dg.RunsFilter(
                        job_name=DRAIN_JOB, statuses=[dg.DagsterRunStatus.STARTED]
                    )
                )
                return runs[0].run_id if runs else None

            first = deployment.wait_for(reading, "a drain run to start", 180)
            assert connector in opencti.connectors  # registered by the drain sensor's ticks
            [work] = click(opencti, deployment, sorted(vt_corpus.domains)[:1])
            assert not opencti.wait_for_work(work, timeout=60).in_error
            vt_emulator.set_latency(3000)  # the next clicks are held on VirusTotal
            works = click(opencti, deployment, sorted(vt_corpus.domains)[1:5])
            deployment.wait_for(
                lambda: all((w := opencti.work(x)) and w.received_time for x in works),
                "the drain run to take the clicks",
                60,
            )
            pid = worker_pid(instance, first)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            vt_emulator.set_latency(0)
            summaries = assert_every_request_answered_once(opencti, deployment, [work, *works], 240)
            assert all(not s["errors"] for s in summaries), [s["errors"] for s in summaries]
            dead = instance.get_run_by_id(first)
            assert dead is not None and dead.status == dg.DagsterRunStatus.FAILURE
            assert reading() not in (None, first)  # its successor reads now
    finally:
        deployment.stop()
