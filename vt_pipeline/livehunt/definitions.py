"""The Livehunt domain: its assets, check, job and schedule."""

import dagster as dg

from vt_pipeline.livehunt.assets import livehunt_assets
from vt_pipeline.livehunt.checks import livehunt_stix_bundle_is_valid
from vt_pipeline.livehunt.delivery import livehunt_opencti_delivery
from vt_pipeline.livehunt.schedules import livehunt_fresh_windows, livehunt_job

defs = dg.Definitions(
    assets=[*livehunt_assets, livehunt_opencti_delivery],
    asset_checks=[livehunt_stix_bundle_is_valid],
    jobs=[livehunt_job],
    schedules=[livehunt_fresh_windows],
)
