"""The deployment's resources from the environment: one per external system, settings, storage.

This is assembly, not a layer: it knows every domain's settings, and only `definitions.py`, the
CLI and the benchmarks import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from vt_pipeline.config import env_bool, env_int
from vt_pipeline.enrichment.settings import EnrichmentSettings
from vt_pipeline.livehunt.settings import LivehuntSettings
from vt_pipeline.opencti.resource import (
    ENRICHMENT_CONNECTOR_ID,
    ENRICHMENT_CONNECTOR_NAME,
    ENRICHMENT_SCOPE,
    LIVEHUNT_CONNECTOR_ID,
    LIVEHUNT_SCOPE,
    OpenCTIResource,
)
from vt_pipeline.storage.store import (
    PartitionedFileIOManager,
    StorageResource,
    default_storage_dir,
)
from vt_pipeline.virustotal.resource import (
    DEFAULT_API_URL,
    DEFAULT_CONCURRENCY,
    VirusTotalResource,
)

# Upstream's two names for the key: the enrichment connector's, then the Livehunt connector's.
API_KEY_ENV_NAMES = ("VIRUSTOTAL_TOKEN", "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_API_KEY")


def api_key_env_name(env: Mapping[str, str] | None = None) -> str:
    """The variable holding the VT key: the first one set (default: VIRUSTOTAL_TOKEN)."""
    env = os.environ if env is None else env
    return next((name for name in API_KEY_ENV_NAMES if env.get(name)), API_KEY_ENV_NAMES[0])


def build_resources(env: Mapping[str, str] | None = None) -> dict[str, object]:
    """The deployment's resources, configured from the environment (secrets as EnvVar)."""
    env = os.environ if env is None else env
    base_dir = default_storage_dir()
    return {
        "virustotal": VirusTotalResource(
            api_key=dg.EnvVar(api_key_env_name(env)),
            api_url=env.get("VIRUSTOTAL_API_URL") or DEFAULT_API_URL,
            max_concurrency=int(env.get("VIRUSTOTAL_MAX_CONCURRENCY") or DEFAULT_CONCURRENCY),
        ),
        "livehunt_settings": LivehuntSettings.from_env(env),
        "enrichment_settings": EnrichmentSettings.from_env(env),
        "opencti": build_opencti(env),
        "storage": StorageResource(base_dir=base_dir),
        "io_manager": PartitionedFileIOManager(base_dir=base_dir),
    }


def build_opencti(env: Mapping[str, str]) -> OpenCTIResource:
    """OpenCTI from the upstream connectors' variables; unset OPENCTI_URL = not configured.

    Two connector identities: CONNECTOR_ID/NAME/SCOPE keep configuring the Livehunt connector,
    VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID/NAME/SCOPE the enrichment one; CONNECTOR_AUTO is the
    enrichment connector's (Livehunt is not an enrichment connector).
    """
    return OpenCTIResource(
        url=env.get("OPENCTI_URL", ""),
        # A reference, resolved in the run; only when set, so that a deployment without
        # OpenCTI can still ingest up to the bundles.
        token=dg.EnvVar("OPENCTI_TOKEN") if env.get("OPENCTI_TOKEN") else "",
        connector_id=env.get("CONNECTOR_ID") or LIVEHUNT_CONNECTOR_ID,
        connector_name=env.get("CONNECTOR_NAME") or "VirusTotal Livehunt Notifications",
        connector_scope=env.get("CONNECTOR_SCOPE") or LIVEHUNT_SCOPE,
        connector_confidence_level=env_int("CONNECTOR_CONFIDENCE_LEVEL", 100, env, 0, 100),
        connector_log_level=env.get("CONNECTOR_LOG_LEVEL") or "error",
        queue_protocol=(env.get("CONNECTOR_QUEUE_PROTOCOL") or "amqp").lower(),
        enrichment_connector_id=env.get("VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID")
        or ENRICHMENT_CONNECTOR_ID,
        enrichment_connector_name=env.get("VIRUSTOTAL_ENRICHMENT_CONNECTOR_NAME")
        or ENRICHMENT_CONNECTOR_NAME,
        enrichment_connector_scope=env.get("VIRUSTOTAL_ENRICHMENT_CONNECTOR_SCOPE")
        or ENRICHMENT_SCOPE,
        connector_auto=env_bool("CONNECTOR_AUTO", False, env),
    )
