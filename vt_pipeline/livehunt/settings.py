"""Livehunt configuration, read from the upstream connector's environment variable names.

A docker-compose environment of the upstream connector moves over unchanged: every
`VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_*` variable below means what it meant there (booleans accept
true/false/1/0/yes/no in any case, lists are comma separated). The values become the
`livehunt_settings` resource: visible in the Dagster UI and overridable per run or backfill from
the launchpad (e.g. a backfill with `min_positives: 5`).

Values are checked where they are read: a bad variable fails the code location's load, a bad
launchpad value fails the run when it starts (before any VT call), naming the variable, the value
and what is accepted. Numbers are never negative (0 is what disables a filter or a cap), the TLP
level is one upstream knows, and a minimum file size above the maximum is refused (it would drop
every file).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, get_args

import dagster as dg
from pydantic import Field, field_validator, model_validator

from vt_pipeline.config import invalid, is_env_reference, settings_from_env
from vt_pipeline.livehunt.options import LivehuntOptions
from vt_pipeline.livehunt.relations import FileExpansions
from vt_pipeline.stix.livehunt import TlpLevel
from vt_pipeline.virustotal.relations import MAX_LIMIT, RELATIONSHIPS, relationship_names

ENV_PREFIX = "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_"
TLP_LEVELS: tuple[str, ...] = get_args(TlpLevel)


class LivehuntSettings(dg.ConfigurableResource):
    """Every option of the upstream Livehunt connector, plus vt_pipeline's own few."""

    tlp_level: TlpLevel = Field(
        default="clear",
        description="clear|white|green|amber|amber+strict|red (from the variable, case, a TLP: "
        "prefix and _ for + are accepted too)",
    )
    create_alert: bool = True
    alert_prefix: str = "VT "
    delete_notification: bool = Field(
        default=False, description="Delete notifications on VT once OpenCTI has accepted them."
    )
    filter_with_tag: str = Field(default="", description="Only notifications with this tag.")
    create_file: bool = True
    extensions: list[str] = Field(default_factory=list, description="e.g. exe,dll; empty = all")
    max_age_days: int = Field(default=3, ge=0, description="0 disables. Age at notification time.")
    min_file_size: int = Field(default=1000, ge=0, description="Bytes; 0 disables.")
    max_file_size: int = Field(default=52_428_800, ge=0, description="Bytes; 0 disables.")
    min_positives: int = Field(default=1, ge=0, description="Malicious verdicts; 0 disables.")
    upload_artifact: bool = Field(default=False, description="Download kept samples as Artifacts.")
    create_yara_rule: bool = True
    av_list: list[str] = Field(default_factory=list, description="Engines listed in descriptions.")
    livehunt_tag_prefix: str = ""
    yara_label_prefix: str = "vt:yara:"
    livehunt_label_prefix: str = "vt:lh:"
    enable_label_enrichment: bool = True
    get_malware_config: bool = False
    create_file_indicators: bool = False
    create_domain_name_indicators: bool = False
    create_ip_indicators: bool = False
    create_url_indicators: bool = False
    limit: int = Field(
        default=0,
        ge=0,
        description="At most this many notifications per partition (0 = no cap). A capped "
        "partition is marked `limit_reached` in its metadata.",
    )
    artifact_max_bytes: int = Field(
        default=52_428_800, ge=0, description="Hard cap on one stored sample (0 disables)."
    )
    cache_rulesets: bool = Field(
        default=True,
        description="Fetch each ruleset once per run. False re-fetches it per notification, as "
        "upstream does; only the benchmark's baseline turns it off.",
    )

    # issue 19 section 5: a matched file's VT relations, by enrichment's code (README)
    file_relationships: list[str] = Field(
        default_factory=list,
        description="VT relations of a kept file to add to its window's bundle: "
        + ", ".join(RELATIONSHIPS["file"])
        + " (1 lookup per kept file, + 1 per relation its descriptors do not cover)",
    )
    relationships_limit: int = Field(
        default=10, ge=1, le=MAX_LIMIT, description="The most related objects per relation."
    )

    # ...and what the file is, by enrichment's code too (README)
    file_malware_family: bool = Field(
        default=False,
        description="VT's popular threat classification as Malware families linked to a kept "
        "file (read from the notification: no call).",
    )
    file_malware_family_min_engines: int = Field(
        default=3, ge=1, description="Engines that must agree on a family name to add it."
    )
    file_attack_patterns: bool = Field(
        default=False,
        description="ATT&CK techniques of VT's sandboxes (behaviour_mitre_trees, 1 call per "
        "kept file).",
    )

    @field_validator("file_relationships")
    @classmethod
    def _known_relationships(cls, value: list[str]) -> list[str]:
        return relationship_names(ENV_PREFIX + "FILE_RELATIONSHIPS", value, "file")

    def file_expansions(self) -> FileExpansions:
        """What a kept file gets from VT beyond its notification (`livehunt/relations.py`)."""
        return FileExpansions(
            relationships=tuple(self.file_relationships),
            limit=self.relationships_limit,
            malware_family=self.file_malware_family,
            min_engines=self.file_malware_family_min_engines,
            attack_patterns=self.file_attack_patterns,
        )

    @field_validator("tlp_level", mode="before")
    @classmethod
    def _known_tlp_level(cls, value: Any) -> Any:
        """Canonical level (`TLP:AMBER_STRICT` -> `amber+strict`); unknown ones refused here,
        not after the VT fetch (upstream fell back to green)."""
        if is_env_reference(value) or not isinstance(value, str):
            return value
        level = value.strip().lower().removeprefix("tlp:").replace("_", "+")
        if level not in TLP_LEVELS:
            accepted = ", ".join(TLP_LEVELS) + " (case and a TLP: prefix do not matter)"
            raise invalid(ENV_PREFIX + "TLP_LEVEL", value, accepted)
        return level

    @model_validator(mode="after")
    def _size_range_keeps_something(self) -> Self:
        """A minimum above the maximum would silently drop every file."""
        low, high = self.min_file_size, self.max_file_size
        if low and high and low > high:
            raise invalid(
                ENV_PREFIX + "MIN_FILE_SIZE",
                low,
                f"at most {ENV_PREFIX}MAX_FILE_SIZE={high} (or 0 for no minimum): "
                "otherwise every file is dropped",
            )
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LivehuntSettings:
        """Settings from the upstream variable names; unset variables keep upstream defaults."""
        return settings_from_env(cls, ENV_PREFIX, env)

    def to_options(self) -> LivehuntOptions:
        return LivehuntOptions(
            tlp_level=self.tlp_level,
            create_alert=self.create_alert,
            alert_prefix=self.alert_prefix,
            create_file=self.create_file,
            create_yara_rule=self.create_yara_rule,
            upload_artifact=self.upload_artifact,
            create_file_indicators=self.create_file_indicators,
            get_malware_config=self.get_malware_config,
            create_domain_name_indicators=self.create_domain_name_indicators,
            create_ip_indicators=self.create_ip_indicators,
            create_url_indicators=self.create_url_indicators,
            av_list=tuple(self.av_list),
            livehunt_tag_prefix=self.livehunt_tag_prefix,
            yara_label_prefix=self.yara_label_prefix,
            livehunt_label_prefix=self.livehunt_label_prefix,
            enable_label_enrichment=self.enable_label_enrichment,
            filter_with_tag=self.filter_with_tag.strip(),
            extensions=tuple(self.extensions),
            min_positives=self.min_positives,
            min_file_size=self.min_file_size,
            max_file_size=self.max_file_size,
            max_age_days=self.max_age_days,
            artifact_max_bytes=self.artifact_max_bytes,
        )
