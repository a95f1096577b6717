"""Enrichment configuration, read from the upstream enrichment connector's variable names.

A docker-compose environment of upstream's `internal-enrichment/virustotal` connector moves over
unchanged: `VIRUSTOTAL_MAX_TLP`, `VIRUSTOTAL_REPLACE_WITH_LOWER_SCORE`, `VIRUSTOTAL_FILE_*`,
`VIRUSTOTAL_IP_*`, `VIRUSTOTAL_DOMAIN_*`, `VIRUSTOTAL_URL_*` and
`VIRUSTOTAL_INCLUDE_ATTRIBUTES_IN_NOTE` mean what they meant there. Defaults are the seed
README's; where upstream's code disagrees with its README, the README wins:
`VIRUSTOTAL_FILE_IMPORT_YARA` false (code: true), `VIRUSTOTAL_IP_ADD_RELATIONSHIPS` and
`VIRUSTOTAL_DOMAIN_ADD_RELATIONSHIPS` true (code: false). vt_pipeline adds
`VT_PIPELINE_ENRICHMENT_CACHE_HOURS` (default 24): a lookup of the same observable within that
time reuses the stored VirusTotal response instead of spending quota (0 disables the cache).

The values become the `enrichment_settings` resource, visible in the UI and overridable per run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg
from pydantic import Field, field_validator

from vt_pipeline.config import ConfigError, fields_from_env, invalid
from vt_pipeline.stix.enrichment import EnrichmentMappingOptions
from vt_pipeline.virustotal.expansions import ExpansionOptions
from vt_pipeline.virustotal.relations import MAX_LIMIT, RELATIONSHIPS, relationship_names
from vt_pipeline.virustotal.reports import ReportKind

ENV_PREFIX = "VIRUSTOTAL_"
CACHE_HOURS_ENV = "VT_PIPELINE_ENRICHMENT_CACHE_HOURS"
MAX_TLP_ENV = "VIRUSTOTAL_MAX_TLP"
DOWNLOADER_KEY_ENV = "VIRUSTOTAL_DOWNLOADER_API_KEY"
GTI_CONTEXT_LIMIT = 40  # GTI threat objects read per entity (one page)

# OpenCTI's TLP order (TLP:CLEAR is TLP 2.0's name for TLP:WHITE).
TLP_RANKS: dict[str, int] = {
    "TLP:CLEAR": 0,
    "TLP:WHITE": 0,
    "TLP:GREEN": 1,
    "TLP:AMBER": 2,
    "TLP:AMBER+STRICT": 3,
    "TLP:RED": 4,
}
_TLP_ACCEPTED = "one of TLP:CLEAR, TLP:WHITE, TLP:GREEN, TLP:AMBER, TLP:AMBER+STRICT, TLP:RED"


def normalize_tlp(value: str) -> str:
    """`amber`, `tlp:amber`, `TLP:AMBER` -> `TLP:AMBER`; ValueError for anything else."""
    text = value.strip().upper().replace("_", "+")
    if not text.startswith("TLP:"):
        text = "TLP:" + text
    if text not in TLP_RANKS:
        raise ValueError(f"{value!r} is not a TLP level: expected {_TLP_ACCEPTED}")
    return text


# Settings field -> the VT object kind whose relations it lists.
_RELATIONSHIP_FIELDS: dict[str, ReportKind] = {
    "file_relationships": "file",
    "domain_relationships": "domain",
    "ip_relationships": "ip_address",
    "url_relationships": "url",
}


def _relationship_variable(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


class EnrichmentSettings(dg.ConfigurableResource):
    """Every option of the upstream VirusTotal enrichment connector, plus the lookup cache."""

    max_tlp: str = Field(
        default="TLP:AMBER",
        description="Entities whose highest TLP marking is above this are refused. "
        + _TLP_ACCEPTED,
    )
    replace_with_lower_score: bool = Field(
        default=True, description="Let a lower VirusTotal score replace a higher existing one."
    )
    include_attributes_in_note: bool = False
    file_create_note_full_report: bool = True
    file_upload_unseen_artifacts: bool = Field(
        default=True, description="Upload Artifacts VirusTotal has never seen, then analyse them."
    )
    file_import_yara: bool = Field(
        default=False, description="Crowdsourced YARA rules as Indicators (upstream code: true)."
    )
    file_indicator_create_positives: int = Field(default=10, ge=0)
    file_indicator_valid_minutes: int = Field(default=2880, ge=1)
    file_indicator_detect: bool = True
    ip_indicator_create_positives: int = Field(default=10, ge=0)
    ip_indicator_valid_minutes: int = Field(default=2880, ge=1)
    ip_indicator_detect: bool = True
    ip_add_relationships: bool = Field(
        default=True, description="Autonomous System and Country (upstream code: false)."
    )
    domain_indicator_create_positives: int = Field(default=10, ge=0)
    domain_indicator_valid_minutes: int = Field(default=2880, ge=1)
    domain_indicator_detect: bool = True
    domain_add_relationships: bool = Field(
        default=True, description="A records as IPv4-Addr (upstream code: false)."
    )
    url_upload_unseen: bool = Field(
        default=True, description="Submit URLs VirusTotal has never seen, then analyse them."
    )
    url_indicator_create_positives: int = Field(default=10, ge=0)
    url_indicator_valid_minutes: int = Field(default=2880, ge=1)
    url_indicator_detect: bool = True
    lookup_cache_hours: int = Field(
        default=24,
        ge=0,
        description=f"{CACHE_HOURS_ENV}: reuse a stored VirusTotal response younger than this "
        "instead of spending quota (0 = always ask VirusTotal).",
    )
    # What the file is, a report that is still true, GTI context (README: the expansions' table)
    file_malware_family: bool = Field(
        default=False,
        description="VT's popular threat classification as Malware families linked to the file.",
    )
    file_malware_family_min_engines: int = Field(
        default=3, ge=1, description="Engines that must agree on a family name to add it."
    )
    file_attack_patterns: bool = Field(
        default=False,
        description="ATT&CK techniques of VT's sandboxes (behaviour_mitre_trees, 1 call/file).",
    )
    file_import_sigma: bool = Field(
        default=False, description="Crowdsourced Sigma results as Indicators (1 call per rule)."
    )
    file_import_ids: bool = Field(
        default=False, description="Crowdsourced IDS (Snort/Suricata) results as Indicators."
    )
    create_note_comments: bool = Field(
        default=False, description="VT community comments as one Note per entity (1 call)."
    )
    comments_limit: int = Field(default=10, ge=1, le=40, description="Newest comments noted.")
    rescan_older_than_days: int = Field(
        default=0,
        ge=0,
        description="Ask VT to re-analyse a file or URL whose last analysis is older (0 = never).",
    )
    gti_context: bool = Field(
        default=True,
        description="With a GTI-licensed key: threat actors, families, campaigns and reports "
        "GTI associates with the object (1 call, none without GTI).",
    )
    # Samples on request (README: "Samples on request"); upstream's virustotal-downloader
    file_download_artifact: bool = Field(
        default=False,
        description="StixFile enrichment also downloads the sample (premium key; 1 call) into "
        "the sample store and uploads it as the File's Artifact unless OpenCTI holds it. On by "
        f"default when {DOWNLOADER_KEY_ENV} (upstream downloader's key) is set.",
    )
    file_download_max_bytes: int = Field(
        default=52_428_800,
        ge=0,
        description="Cap on one downloaded sample, checked while streaming (0 = none); "
        "Livehunt's default cap.",
    )

    # issue 19 section 1: related objects (README: the expansions' table)
    file_relationships: list[str] = Field(
        default_factory=list,
        description="VT relations of a file to add (comma-separated): "
        + ", ".join(RELATIONSHIPS["file"]),
    )
    domain_relationships: list[str] = Field(
        default_factory=list,
        description="VT relations of a domain or hostname to add: "
        + ", ".join(RELATIONSHIPS["domain"]),
    )
    ip_relationships: list[str] = Field(
        default_factory=list,
        description="VT relations of an IP to add: " + ", ".join(RELATIONSHIPS["ip_address"]),
    )
    url_relationships: list[str] = Field(
        default_factory=list,
        description="VT relations of a URL to add: " + ", ".join(RELATIONSHIPS["url"]),
    )
    relationships_limit: int = Field(
        default=10, ge=1, le=MAX_LIMIT, description="The most related objects per relation."
    )

    @field_validator("max_tlp")
    @classmethod
    def _known_tlp(cls, value: str) -> str:
        return normalize_tlp(value)

    @field_validator(*_RELATIONSHIP_FIELDS)
    @classmethod
    def _known_relationships(cls, value: list[str], info: Any) -> list[str]:
        kind = _RELATIONSHIP_FIELDS[info.field_name]
        return relationship_names(_relationship_variable(info.field_name), value, kind)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EnrichmentSettings:
        """Settings from the upstream variable names; a bad value fails naming its variable."""
        values: dict[str, Any] = fields_from_env(
            cls, ENV_PREFIX, env, names={"lookup_cache_hours": CACHE_HOURS_ENV}
        )
        if "max_tlp" in values:
            raw = values["max_tlp"]
            if not str(raw).strip():
                del values["max_tlp"]
            else:
                try:
                    values["max_tlp"] = normalize_tlp(str(raw))
                except ValueError:
                    raise invalid(MAX_TLP_ENV, raw, _TLP_ACCEPTED) from None
        # Upstream's downloader moved over (its one variable is its key): samples were wanted.
        downloader = (os.environ if env is None else env).get(DOWNLOADER_KEY_ENV, "")
        if downloader.strip() and "file_download_artifact" not in values:
            values["file_download_artifact"] = True
        for field_name, kind in _RELATIONSHIP_FIELDS.items():
            if field_name in values:
                variable = _relationship_variable(field_name)
                values[field_name] = relationship_names(variable, values[field_name], kind)
        return cls(**values)

    @property
    def max_tlp_rank(self) -> int:
        return TLP_RANKS[normalize_tlp(self.max_tlp)]

    def relationships(self, kind: str) -> list[str]:
        """The VT relations configured for a VT object kind (`file`, `ip_address`...)."""
        field_name = next((f for f, k in _RELATIONSHIP_FIELDS.items() if k == kind), None)
        return list(getattr(self, field_name)) if field_name else []

    def to_options(self) -> EnrichmentMappingOptions:
        """The pure mapping's options (everything but the lookup and upload switches)."""
        return EnrichmentMappingOptions(
            replace_with_lower_score=self.replace_with_lower_score,
            include_attributes_in_note=self.include_attributes_in_note,
            file_create_note_full_report=self.file_create_note_full_report,
            file_import_yara=self.file_import_yara,
            file_indicator_create_positives=self.file_indicator_create_positives,
            file_indicator_valid_minutes=self.file_indicator_valid_minutes,
            file_indicator_detect=self.file_indicator_detect,
            ip_indicator_create_positives=self.ip_indicator_create_positives,
            ip_indicator_valid_minutes=self.ip_indicator_valid_minutes,
            ip_indicator_detect=self.ip_indicator_detect,
            ip_add_relationships=self.ip_add_relationships,
            domain_indicator_create_positives=self.domain_indicator_create_positives,
            domain_indicator_valid_minutes=self.domain_indicator_valid_minutes,
            domain_indicator_detect=self.domain_indicator_detect,
            domain_add_relationships=self.domain_add_relationships,
            url_indicator_create_positives=self.url_indicator_create_positives,
            url_indicator_valid_minutes=self.url_indicator_valid_minutes,
            url_indicator_detect=self.url_indicator_detect,
            file_malware_family=self.file_malware_family,
            file_malware_family_min_engines=self.file_malware_family_min_engines,
            file_attack_patterns=self.file_attack_patterns,
            file_import_sigma=self.file_import_sigma,
            file_import_ids=self.file_import_ids,
            create_note_comments=self.create_note_comments,
            gti_context=self.gti_context,
        )

    def expansion_options(self) -> ExpansionOptions:
        """What the expansions fetch beyond the lookup (each one call, only when asked)."""
        return ExpansionOptions(
            attack_patterns=self.file_attack_patterns,
            sigma_rules=self.file_import_sigma,
            comments_limit=self.comments_limit if self.create_note_comments else 0,
            gti_limit=GTI_CONTEXT_LIMIT if self.gti_context else 0,
        )


__all__ = ["TLP_RANKS", "ConfigError", "EnrichmentSettings", "normalize_tlp"]
