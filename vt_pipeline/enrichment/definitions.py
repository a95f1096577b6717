"""The enrichment domain's definitions: the jobs and the sensor that feeds them."""

import dagster as dg

from vt_pipeline.enrichment.drain import vt_enrichment_drain_job
from vt_pipeline.enrichment.job import vt_enrichment_job
from vt_pipeline.enrichment.sensor import (
    opencti_enrichment_drain_sensor,
    opencti_enrichment_sensor,
)

defs = dg.Definitions(
    jobs=[vt_enrichment_job, vt_enrichment_drain_job],
    sensors=[opencti_enrichment_sensor, opencti_enrichment_drain_sensor],
)
