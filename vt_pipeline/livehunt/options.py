"""The Livehunt options, as plain values for the pure filters and STIX mapping.

Every option of the upstream Livehunt connector is here, with its upstream default. The mapping's
own options are `LivehuntMappingOptions` (in `stix/livehunt.py`, which knows nothing of this
domain); `LivehuntOptions` adds the filters. The Dagster resource `LivehuntSettings`
(`settings.py`) reads them from the upstream environment variable names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vt_pipeline.stix.livehunt import LivehuntMappingOptions


@dataclass(frozen=True)
class LivehuntOptions(LivehuntMappingOptions):
    upload_artifact: bool = False
    # Filters (0 disables a numeric filter; an empty extension list disables that filter)
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
