"""The deployment's resources from the environment: one per external system, settings, storage.

This is assembly, not a layer: it knows every domain's settings, and only `definitions.py`, the
CLI and the benchmarks import it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import dagster as dg

from vt_pipeline.config import (
    ConfigError,
    combined,
    invalid,
    settings_from_env,
    writable_directory,
)
from vt_pipeline.enrichment.settings import EnrichmentSettings
from vt_pipeline.hunting_rules.settings import HuntingRulesSettings
from vt_pipeline.livehunt.retrohunt import RetrohuntSettings
from vt_pipeline.livehunt.settings import LivehuntSettings
from vt_pipeline.opencti.resource import OpenCTIResource
from vt_pipeline.storage.store import (
    STORAGE_DIR_ENV,
    PartitionedFileIOManager,
    StorageResource,
    default_storage_dir,
)
from vt_pipeline.virustotal.resource import VirusTotalResource

# Upstream's names for the key: the enrichment connector's, the Livehunt connector's, the
# Livehunt rules stream connector's, then the downloader's (README "Samples on request").
API_KEY_ENV_NAMES = (
    "VIRUSTOTAL_TOKEN",
    "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_API_KEY",
    "VIRUSTOTAL_LIVEHUNT_TOKEN",
    "VIRUSTOTAL_DOWNLOADER_API_KEY",
)
# The variables of each resource's fields (the token and the key travel as EnvVar, unread).
VIRUSTOTAL_VARIABLES = {
    "api_url": "VIRUSTOTAL_API_URL",
    "max_concurrency": "VIRUSTOTAL_MAX_CONCURRENCY",
    # How long a call whose VT answer keeps failing is retried (real seconds)
    "retry_deadline_seconds": "VIRUSTOTAL_RETRY_DEADLINE_SECONDS",
    # The deployment's quota budget (vt_pipeline/virustotal/budget.py)
    "quota_budget": "VIRUSTOTAL_QUOTA_BUDGET",
    "quota_per_minute": "VIRUSTOTAL_QUOTA_PER_MINUTE",
    "quota_per_day": "VIRUSTOTAL_QUOTA_PER_DAY",
    "quota_per_month": "VIRUSTOTAL_QUOTA_PER_MONTH",
    "quota_auto_max_share": "VIRUSTOTAL_QUOTA_AUTO_MAX_SHARE",
    "quota_livehunt_max_share": "VIRUSTOTAL_QUOTA_LIVEHUNT_MAX_SHARE",
    "quota_backfill_max_share": "VIRUSTOTAL_QUOTA_BACKFILL_MAX_SHARE",
    "quota_reset_wait_seconds": "VIRUSTOTAL_QUOTA_RESET_WAIT_SECONDS",
    "budget_url": "VT_PIPELINE_BUDGET_URL",
}
OPENCTI_VARIABLES = {
    "url": "OPENCTI_URL",
    "connector_id": "CONNECTOR_ID",
    "connector_name": "CONNECTOR_NAME",
    "connector_scope": "CONNECTOR_SCOPE",
    "connector_confidence_level": "CONNECTOR_CONFIDENCE_LEVEL",
    "connector_log_level": "CONNECTOR_LOG_LEVEL",
    "queue_protocol": "CONNECTOR_QUEUE_PROTOCOL",
    # Two connector identities: CONNECTOR_ID/NAME/SCOPE keep configuring the Livehunt
    # connector, these the enrichment one; CONNECTOR_AUTO is the enrichment connector's
    # (Livehunt is not an enrichment connector).
    "enrichment_connector_id": "VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID",
    "enrichment_connector_name": "VIRUSTOTAL_ENRICHMENT_CONNECTOR_NAME",
    "enrichment_connector_scope": "VIRUSTOTAL_ENRICHMENT_CONNECTOR_SCOPE",
    "connector_auto": "CONNECTOR_AUTO",
}


def api_key_env_name(env: Mapping[str, str] | None = None) -> str:
    """The variable holding the VT key: the first one set (default: VIRUSTOTAL_TOKEN)."""
    env = os.environ if env is None else env
    return next((name for name in API_KEY_ENV_NAMES if env.get(name)), API_KEY_ENV_NAMES[0])


def build_resources(env: Mapping[str, str] | None = None) -> dict[str, object]:
    """The deployment's resources, configured from the environment (secrets as EnvVar).

    Every variable is checked here, when the code location loads; one `ConfigError` lists all
    the bad ones, each with its value and what is accepted.
    """
    env = os.environ if env is None else env
    builders: dict[str, Callable[[Mapping[str, str]], object]] = {
        "virustotal": build_virustotal,
        "livehunt_settings": LivehuntSettings.from_env,
        "retrohunt_settings": RetrohuntSettings.from_env,
        "enrichment_settings": EnrichmentSettings.from_env,
        "hunting_rules_settings": HuntingRulesSettings.from_env,
        "opencti": build_opencti,
        "storage_dir": storage_dir,
    }
    built: dict[str, object] = {}
    errors: list[ConfigError] = []
    for name, make in builders.items():
        try:
            built[name] = make(env)
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise combined(errors)
    base_dir = str(built.pop("storage_dir"))
    return {
        **built,
        "storage": StorageResource(base_dir=base_dir),
        "io_manager": PartitionedFileIOManager(base_dir=base_dir),
    }


def build_virustotal(env: Mapping[str, str]) -> VirusTotalResource:
    """VirusTotal from the upstream variables; blank ones keep the defaults."""
    return settings_from_env(
        VirusTotalResource,
        "",
        _set(env),
        VIRUSTOTAL_VARIABLES,
        fields=VIRUSTOTAL_VARIABLES,
        extra={"api_key": dg.EnvVar(api_key_env_name(env))},
    )


def build_opencti(env: Mapping[str, str]) -> OpenCTIResource:
    """OpenCTI from the upstream connector's variables; unset OPENCTI_URL = not configured.

    The token is a reference, resolved in the run, and only when set, so that a deployment
    without OpenCTI can still ingest up to the bundles. A token without a URL is refused: it
    means delivery was wanted, and it would silently not happen.
    """
    has_token = bool(env.get("OPENCTI_TOKEN", "").strip())
    if has_token and not env.get("OPENCTI_URL", "").strip():
        raise invalid(
            "OPENCTI_URL",
            env.get("OPENCTI_URL", ""),
            "the OpenCTI platform's URL, e.g. http://opencti:8080, since OPENCTI_TOKEN is set "
            "(or unset OPENCTI_TOKEN to run without OpenCTI)",
        )
    return settings_from_env(
        OpenCTIResource,
        "",
        _set(env),
        OPENCTI_VARIABLES,
        fields=OPENCTI_VARIABLES,
        extra={"token": dg.EnvVar("OPENCTI_TOKEN") if has_token else ""},
    )


def storage_dir(env: Mapping[str, str]) -> str:
    """The storage base directory, refused at load when this process could not write it.

    The message names the variable that chose it: VT_PIPELINE_STORAGE_DIR, else DAGSTER_HOME.
    """
    path = default_storage_dir(env)
    try:
        return writable_directory(STORAGE_DIR_ENV, path)
    except ConfigError:
        if env.get(STORAGE_DIR_ENV) or not env.get("DAGSTER_HOME"):
            raise
        accepted = f"a directory where this process can write storage/ (or set {STORAGE_DIR_ENV})"
        raise invalid("DAGSTER_HOME", env["DAGSTER_HOME"], accepted) from None


def _set(env: Mapping[str, str]) -> dict[str, str]:
    """The variables set to something: blank ones count as unset (compose files leave them so)."""
    return {name: value for name, value in env.items() if value.strip()}
