"""Answer enrichment requests in-process, as a deployment does (the demo's driver).

A deployment's daemon evaluates `opencti_enrichment_sensor` and launches the runs it requests;
here the same sensor ticks are evaluated in this process and each requested run is executed
in-process with its run key, so the next tick sees the run (a batch run's messages are then
acknowledged). A drain run is executed with a short idle time (`DRAIN_IDLE_SECONDS`) so that
it ends once the queue is empty, instead of living its hour. Nothing else differs: the same
sensor, cursor, jobs, resources and OpenCTI queue.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from vt_pipeline.enrichment.definitions import defs as enrichment_defs
from vt_pipeline.enrichment.recovery import answered_requests
from vt_pipeline.enrichment.requests import DRAIN_JOB, DRAIN_OP
from vt_pipeline.enrichment.sensor import (
    opencti_enrichment_drain_sensor,
    opencti_enrichment_sensor,
)

RUN_KEY_TAG = "dagster/run_key"
DRAIN_IDLE_SECONDS = 3.0


def answer_enrichment_requests(
    instance: dg.DagsterInstance,
    resources: Mapping[str, Any],
    expected: int,
    timeout_seconds: float = 120.0,
    log_level: str = "DEBUG",
    sensors: Sequence[dg.SensorDefinition] = (
        opencti_enrichment_sensor,
        opencti_enrichment_drain_sensor,
    ),
) -> list[dg.ExecuteInProcessResult]:
    """Tick the sensors and execute their runs until `expected` requests were answered and
    their messages acknowledged (a tick that requests nothing), or the timeout passes.
    `log_level` is the console's; the runs' events are stored in the instance either way."""
    loggers = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    definitions = dg.Definitions.merge(enrichment_defs, dg.Definitions(resources=dict(resources)))
    results: list[dg.ExecuteInProcessResult] = []
    answered = 0
    cursors: dict[str, str | None] = {}
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        run_requests: list[dg.RunRequest] = []
        for sensor in sensors:
            # A context manager: resources with a teardown (the IO manager's) are set up in it.
            with dg.build_sensor_context(
                instance=instance,
                cursor=cursors.get(sensor.name),
                resources=dict(resources),
                definitions=definitions,
            ) as context:
                tick = sensor.evaluate_tick(context)
            cursors[sensor.name] = tick.cursor or cursors.get(sensor.name)
            run_requests += tick.run_requests or []
        for request in run_requests:
            run_config = dict(request.run_config)
            if request.job_name == DRAIN_JOB:
                config = run_config["ops"][DRAIN_OP]["config"]
                config = {**config, "idle_seconds": DRAIN_IDLE_SECONDS}
                run_config = {"ops": {DRAIN_OP: {"config": config}}}
            job = definitions.resolve_job_def(str(request.job_name))
            result = job.execute_in_process(
                run_config={**run_config, **loggers},
                resources=dict(resources),
                instance=instance,
                tags={**request.tags, RUN_KEY_TAG: str(request.run_key)},
                raise_on_error=False,
            )
            results.append(result)
            answered += len(answered_requests(instance, result.run_id))
        batch_runs = [r for r in run_requests if r.job_name != DRAIN_JOB]
        if answered >= expected and not batch_runs:  # a batch's messages acked on a next tick
            break
        if not run_requests:
            time.sleep(0.2)  # requests still on their way through RabbitMQ
    return results
