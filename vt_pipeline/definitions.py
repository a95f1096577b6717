"""The vt_pipeline code location: every domain's definitions merged, with shared resources."""

import dagster as dg

from vt_pipeline.livehunt import definitions as livehunt
from vt_pipeline.resources import build_resources
from vt_pipeline.run_health import dead_run_sweeper

defs = dg.Definitions.merge(
    livehunt.defs,
    # Ends runs whose process died and frees their pool slots (see run_health).
    dg.Definitions(sensors=[dead_run_sweeper]),
    dg.Definitions(resources=build_resources()),
)
