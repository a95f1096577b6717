"""vt_pipeline: VirusTotal Livehunt and enrichment for OpenCTI, as a Dagster code location.

Two Dagster features the pipeline relies on on purpose warn in every process that loads the code
location (the webserver, the daemon, each run and each step worker): `backfill_policy` on assets
(beta; one run covers a backfill range) and `partitions_def` on an asset check spec (preview; one
check result per window). Those two warnings, matched by their exact text, are silenced here,
before any module defines an asset; every other Beta/Preview warning still shows.
"""

import warnings

# The text Dagster 1.13 gives them (`dagster._core.decorator_utils`, `asset_check_decorator`).
KNOWN_FEATURE_WARNINGS = (
    r"Parameter `backfill_policy` of function `asset` is currently in beta",
    r"Specifying a partitions_def on an AssetCheckSpec is currently in preview",
)

for _message in KNOWN_FEATURE_WARNINGS:
    warnings.filterwarnings("ignore", message=_message)
