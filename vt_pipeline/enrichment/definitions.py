"""The enrichment domain's definitions: the job and the sensor that feeds it."""

import dagster as dg

from vt_pipeline.enrichment.job import vt_enrichment_job
from vt_pipeline.enrichment.sensor import opencti_enrichment_sensor

defs = dg.Definitions(jobs=[vt_enrichment_job], sensors=[opencti_enrichment_sensor])
