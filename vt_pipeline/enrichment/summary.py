"""Answer enrichment requests in-process, as a deployment does (the demo's driver).

A deployment's daemon evaluates `opencti_enrichment_sensor` and launches the runs it requests;
here the same sensor ticks are evaluated in this process and each requested run is executed
in-process with its run key, so the next tick sees the run and acknowledges its messages.
Nothing else differs: the same sensor, cursor, job, resources and OpenCTI queue.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import dagster as dg

from vt_pipeline.enrichment.definitions import defs as enrichment_defs
from vt_pipeline.enrichment.job import vt_enrichment_job
from vt_pipeline.enrichment.sensor import opencti_enrichment_sensor

RUN_KEY_TAG = "dagster/run_key"


def answer_enrichment_requests(
    instance: dg.DagsterInstance,
    resources: Mapping[str, Any],
    expected: int,
    timeout_seconds: float = 120.0,
    log_level: str = "DEBUG",
) -> list[dg.ExecuteInProcessResult]:
    """Tick the sensor and execute its runs until `expected` requests were answered and their
    messages acknowledged (a tick that requests nothing), or the timeout passes. `log_level` is
    the console's; the runs' events are stored in the instance either way."""
    loggers = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    definitions = dg.Definitions.merge(enrichment_defs, dg.Definitions(resources=dict(resources)))
    results: list[dg.ExecuteInProcessResult] = []
    answered = 0
    cursor: str | None = None
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        # A context manager: resources with a teardown (the IO manager's) are set up in it.
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, resources=dict(resources), definitions=definitions
        ) as context:
            tick = opencti_enrichment_sensor.evaluate_tick(context)
        cursor = tick.cursor or cursor
        for request in tick.run_requests or []:
            requests = request.run_config["ops"]["vt_enrichment"]["config"]["requests"]
            results.append(
                vt_enrichment_job.execute_in_process(
                    run_config={**request.run_config, **loggers},
                    resources=dict(resources),
                    instance=instance,
                    tags={**request.tags, RUN_KEY_TAG: str(request.run_key)},
                    raise_on_error=False,
                )
            )
            answered += len(requests)
        if not tick.run_requests and answered >= expected:
            break
        if not tick.run_requests:
            time.sleep(0.2)  # requests still on their way through RabbitMQ
    return results
