"""The vt_pipeline code location: every domain's definitions merged, with shared resources."""

import dagster as dg

from vt_pipeline.enrichment import definitions as enrichment
from vt_pipeline.livehunt import definitions as livehunt
from vt_pipeline.resources import build_resources

defs = dg.Definitions.merge(
    livehunt.defs, enrichment.defs, dg.Definitions(resources=build_resources())
)
