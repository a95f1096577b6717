"""Samples on request: a StixFile enrichment with VIRUSTOTAL_FILE_DOWNLOAD_ARTIFACT gives the
File's Artifact with the sample's bytes in the OpenCTI emulator; a download that never verifies
is left out with its reason while the enrichment itself goes through."""

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from vt_pipeline.emulators.opencti.amqp import listen_queue
from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.rabbitmq import RabbitMQ
from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.enrichment.job import vt_enrichment_job
from vt_pipeline.enrichment.requests import enrichment_run_config, parse_request
from vt_pipeline.enrichment.settings import EnrichmentSettings
from vt_pipeline.opencti.resource import ENRICHMENT_CONNECTOR_ID
from vt_pipeline.resources import api_key_env_name
from vt_pipeline.storage.store import ArtifactStore
from vt_pipeline_tests.conftest import take

pytestmark = pytest.mark.integration


@pytest.fixture
def enrich_file(
    opencti: OpenCTIEmulator,
    rabbitmq: RabbitMQ,
    job_resources: Callable[..., dict[str, Any]],
    dagster_instance: dg.DagsterInstance,
) -> Callable[..., str]:
    """Enrich one StixFile through OpenCTI's queue and the job; the work's status and text."""

    def run(file_id: str, **settings: Any) -> str:
        opencti.ask_enrichment(file_id, ENRICHMENT_CONNECTOR_ID)
        requests = [parse_request(b) for b in take(rabbitmq, listen_queue(ENRICHMENT_CONNECTOR_ID))]
        vt_enrichment_job.execute_in_process(
            run_config=enrichment_run_config(requests),
            resources=job_resources(**settings),
            instance=dagster_instance,
            raise_on_error=False,
        )
        (request,) = requests
        work = opencti.wait_for_work(str(request.work_id), timeout=20)
        summary = work.summary()
        assert summary["status"] == "complete" and not work.in_error, summary
        return " | ".join(str(m) for m in summary.get("messages") or [])

    return run


def downloadable(corpus: Corpus) -> str:
    """A corpus file VT knows and can serve the bytes of, under the default cap."""
    return next(
        sha
        for sha, obj in sorted(corpus.files.items())
        if (size := corpus.sample_size(sha)) is not None
        and 1000 < size < 5_000_000
        and obj["attributes"]["last_analysis_stats"]["malicious"] > 0
    )


def sample_entity(corpus: Corpus, opencti: OpenCTIEmulator) -> tuple[str, str]:
    """A StixFile in OpenCTI of a `downloadable` file: its SHA-256 and its id."""
    sha256 = downloadable(corpus)
    return sha256, opencti.create_observable("StixFile", hashes={"SHA-256": sha256})


def test_a_file_enrichment_brings_its_sample_as_the_files_artifact(
    enrich_file: Callable[..., str],
    opencti: OpenCTIEmulator,
    vt_corpus: Corpus,
    vt_emulator: VirusTotalEmulator,
    tmp_path: Path,
) -> None:
    sha256, file_id = sample_entity(vt_corpus, opencti)
    message = enrich_file(file_id, file_download_artifact=True)

    (uploaded,) = opencti.artifacts()
    assert hashlib.sha256(uploaded.data).hexdigest() == sha256  # the right bytes
    assert uploaded.name == sha256  # named by its hash, never by a VT-supplied name
    artifact = opencti.find_by_hash("SHA-256", sha256)
    assert artifact is not None and artifact["type"] == "artifact"
    links = [
        r
        for r in opencti.relationships(of=file_id)
        if r["relationship_type"] == "related-to" and r["target_ref"] == artifact["id"]
    ]
    assert len(links) == 1
    assert opencti.score_of(file_id) is not None  # the base enrichment is there too
    assert "sample_uploaded" in message
    store = ArtifactStore(tmp_path / "storage")
    assert store.has(sha256) and store.path_for(sha256).read_bytes() == uploaded.data
    assert vt_emulator.count("file_download") == 1

    # Asked again: OpenCTI holds the sample, nothing is downloaded or uploaded twice.
    again = enrich_file(file_id, file_download_artifact=True)
    assert "sample_in_opencti" in again
    assert len(opencti.artifacts()) == 1 and vt_emulator.count("file_download") == 1


@pytest.mark.parametrize("fault", ["truncated", "malformed"])
def test_a_sample_that_never_verifies_is_refused_and_the_enrichment_stays(
    fault: str,
    enrich_file: Callable[..., str],
    opencti: OpenCTIEmulator,
    vt_corpus: Corpus,
    vt_emulator: VirusTotalEmulator,
    tmp_path: Path,
) -> None:
    sha256, file_id = sample_entity(vt_corpus, opencti)
    vt_emulator.set_faults(f"sample:{fault}:1.0")
    message = enrich_file(file_id, file_download_artifact=True)

    assert opencti.artifacts() == []
    assert not ArtifactStore(tmp_path / "storage").has(sha256)  # nothing half-written kept
    assert "sample not attached" in message and sha256 in message
    assert opencti.score_of(file_id) is not None  # enriched all the same
    assert opencti.notes_about(file_id)


def test_off_by_default_and_on_with_the_downloaders_key() -> None:
    assert EnrichmentSettings.from_env({}).file_download_artifact is False
    moved = EnrichmentSettings.from_env({"VIRUSTOTAL_DOWNLOADER_API_KEY": "k"})
    assert moved.file_download_artifact is True
    refused = {"VIRUSTOTAL_DOWNLOADER_API_KEY": "k", "VIRUSTOTAL_FILE_DOWNLOAD_ARTIFACT": "false"}
    assert EnrichmentSettings.from_env(refused).file_download_artifact is False
    # One key for the deployment: the downloader's only when no other key variable is set.
    assert (
        api_key_env_name({"VIRUSTOTAL_DOWNLOADER_API_KEY": "k"}) == "VIRUSTOTAL_DOWNLOADER_API_KEY"
    )
    both = {"VIRUSTOTAL_DOWNLOADER_API_KEY": "k", "VIRUSTOTAL_TOKEN": "t"}
    assert api_key_env_name(both) == "VIRUSTOTAL_TOKEN"


def test_a_file_known_by_md5_only_gets_its_sample_by_the_sha256_vt_gives(
    enrich_file: Callable[..., str],
    opencti: OpenCTIEmulator,
    vt_corpus: Corpus,
) -> None:
    sha256 = downloadable(vt_corpus)
    md5 = vt_corpus.files[sha256]["attributes"]["md5"]
    file_id = opencti.create_observable("StixFile", hashes={"MD5": md5})
    assert "sample_uploaded" in enrich_file(file_id, file_download_artifact=True)
    (uploaded,) = opencti.artifacts()
    assert hashlib.sha256(uploaded.data).hexdigest() == sha256
