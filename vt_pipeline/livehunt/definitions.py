"""The Livehunt domain: its assets, check, job and schedule; Retrohunt jobs, imported like
Livehunt windows (their assets, check, job and sensor)."""

import dagster as dg

from vt_pipeline.livehunt.assets import livehunt_assets
from vt_pipeline.livehunt.checks import livehunt_stix_bundle_is_valid
from vt_pipeline.livehunt.delivery import livehunt_opencti_delivery
from vt_pipeline.livehunt.retrohunt import (
    retrohunt_assets,
    retrohunt_job,
    retrohunt_sensor,
    retrohunt_stix_bundle_is_valid,
)
from vt_pipeline.livehunt.schedules import livehunt_fresh_windows, livehunt_job

defs = dg.Definitions(
    assets=[*livehunt_assets, livehunt_opencti_delivery, *retrohunt_assets],
    asset_checks=[livehunt_stix_bundle_is_valid, retrohunt_stix_bundle_is_valid],
    jobs=[livehunt_job, retrohunt_job],
    schedules=[livehunt_fresh_windows],
    sensors=[retrohunt_sensor],
)
