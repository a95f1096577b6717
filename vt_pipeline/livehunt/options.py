"""The Livehunt options, as plain values for the pure filters and STIX mapping.

Every option of the upstream Livehunt connector is here, with its upstream default. The Dagster
resource `LivehuntSettings` (vt_pipeline/livehunt/settings.py) reads them from the upstream
environment variable names and turns them into this frozen dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TlpLevel = Literal["clear", "white", "green", "amber", "amber+strict", "red"]


@dataclass(frozen=True)
class LivehuntOptions:
    # What to create
    tlp_level: TlpLevel = "clear"
    create_alert: bool = True
    alert_prefix: str = "VT "
    create_file: bool = True
    create_yara_rule: bool = True
    upload_artifact: bool = False
    create_file_indicators: bool = False
    get_malware_config: bool = False
    create_domain_name_indicators: bool = False
    create_ip_indicators: bool = False
    create_url_indicators: bool = False
    av_list: tuple[str, ...] = ()
    # Labels
    livehunt_tag_prefix: str = ""
    yara_label_prefix: str = "vt:yara:"
    livehunt_label_prefix: str = "vt:lh:"
    enable_label_enrichment: bool = True
    # Filters (0 disables a numeric filter; an empty extension list disables that filter)
    filter_with_tag: str = ""
    extensions: tuple[str, ...] = field(default_factory=tuple)
    min_positives: int = 1
    min_file_size: int = 1000
    max_file_size: int = 52_428_800
    max_age_days: int = 3
    # Safety cap on one downloaded sample, independent of the filters (0 disables).
    artifact_max_bytes: int = 52_428_800

    def normalized_extensions(self) -> frozenset[str]:
        """Extensions compared without a leading dot and case-insensitively (`.EXE` == `exe`)."""
        return frozenset(ext.strip().lstrip(".").lower() for ext in self.extensions if ext.strip())
