"""Asset checks on the Livehunt bundles: what OpenCTI would reject is caught here first."""

from typing import Any

import dagster as dg

from vt_pipeline.livehunt.assets import livehunt_stix_bundles
from vt_pipeline.livehunt.partitions import livehunt_partitions
from vt_pipeline.stix.validation import validate_bundle


@dg.asset_check(asset=livehunt_stix_bundles, partitions_def=livehunt_partitions, blocking=True)
def livehunt_stix_bundle_is_valid(
    livehunt_stix_bundles: dict[str, dict[str, Any]],
) -> dg.AssetCheckResult:
    """Each bundle parses with stix2 and every `*_ref` / `*_refs` resolves inside the bundle.

    Blocking: an invalid bundle stops the run before anything downstream (delivery) uses it.
    """
    problems = {
        key: found
        for key, bundle in sorted(livehunt_stix_bundles.items())
        if (found := validate_bundle(bundle))
    }
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "bundles": len(livehunt_stix_bundles),
            "invalid_bundles": len(problems),
            "problems": dg.MetadataValue.json({k: v[:20] for k, v in problems.items()}),
        },
    )
