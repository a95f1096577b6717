"""The vt_pipeline code location: every domain's definitions merged, with shared resources.

Runs execute their steps in the run's own process (`in_process` executor) by default: the steps
wait on VirusTotal and OpenCTI, not on the CPU, and a step process of its own costs seconds of
start-up each (Python, Dagster, pycti, pandas imports) - most of a 7-step run's wall time with
the multiprocess executor. Memory stays bounded per run because steps hand their outputs over
through the storage IO manager, not in memory. `VT_PIPELINE_EXECUTOR=multiprocess` brings back
one process per step (isolation at the price of start-up); the pools (`virustotal`, `opencti`)
bound concurrency with either.
"""

import gc
import os
from collections.abc import Mapping

import dagster as dg

from vt_pipeline.config import invalid
from vt_pipeline.enrichment import definitions as enrichment
from vt_pipeline.hunting_rules import definitions as hunting_rules
from vt_pipeline.livehunt import definitions as livehunt
from vt_pipeline.quota import definitions as quota
from vt_pipeline.resources import build_resources
from vt_pipeline.run_health import dead_run_sweeper

EXECUTOR_ENV = "VT_PIPELINE_EXECUTOR"
EXECUTORS: dict[str, dg.ExecutorDefinition] = {
    "in_process": dg.in_process_executor,
    "multiprocess": dg.multiprocess_executor,
    # One process per step, forked from a server that has already imported the code location.
    "forkserver": dg.multiprocess_executor.configured(
        {"start_method": {"forkserver": {}}}, name="forkserver_executor"
    ),
}


def run_executor(env: Mapping[str, str] | None = None) -> dg.ExecutorDefinition:
    """The executor named by `VT_PIPELINE_EXECUTOR` (default `in_process`)."""
    env = os.environ if env is None else env
    choice = (env.get(EXECUTOR_ENV) or "in_process").strip().lower()
    if choice not in EXECUTORS:
        raise invalid(EXECUTOR_ENV, choice, " or ".join(EXECUTORS))
    return EXECUTORS[choice]


# What the code location is, for tools that read the definitions' metadata (Dagster's UI shows
# no code location description: the README's "Dagster UI" section points a newcomer around).
DESCRIPTION = (
    "VirusTotal into OpenCTI. Start with the Livehunt assets (group livehunt, hourly windows: "
    "Catalog > livehunt_notifications), the schedule livehunt_fresh_windows (off until you turn "
    "it on under Automation), the enrichment sensor and job, and the virustotal_quota asset."
)

defs = dg.Definitions.merge(
    dg.Definitions(metadata={"description": DESCRIPTION}),
    livehunt.defs,
    enrichment.defs,
    hunting_rules.defs,
    quota.defs,
    # Ends runs whose process died and frees their pool slots (see run_health).
    dg.Definitions(sensors=[dead_run_sweeper]),
    dg.Definitions(resources=build_resources(), executor=run_executor()),
)

# What the code location loaded lives as long as the process: out of the cyclic collector's
# sight, its full collections only walk what a run allocates (Dagster's and our modules are
# ~300 MB of objects; walking them again and again cost ~0.3 s of a 1,000-notification run).
gc.freeze()
