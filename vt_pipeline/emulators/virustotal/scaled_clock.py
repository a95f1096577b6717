"""`VirusTotalResource` on a scaled, shifted budget clock, for tests and benchmarks.

VirusTotal's quotas count per minute, hour, UTC day and month; a test of the budget cannot wait
real minutes, nor for midnight UTC. This subclass runs the budget (and the emulator, given the
same `BudgetClock`) on a clock `budget_time_scale` times faster than real time and shifted by
`budget_time_offset` seconds. It lives beside the emulators, not in the production resource, so
that an operator configuring `VirusTotalResource` in the UI never sees these two settings.
"""

from __future__ import annotations

from pydantic import Field

from vt_pipeline.virustotal.budget import BudgetClock
from vt_pipeline.virustotal.resource import VirusTotalResource


class ScaledClockVirusTotalResource(VirusTotalResource):
    """The VirusTotal resource with a test clock for its quota budget."""

    budget_time_scale: float = Field(
        default=1.0, gt=0, description="Clock seconds per real second (240: a minute in 0.25 s)."
    )
    budget_time_offset: float = Field(
        default=0.0, description="Seconds added to the budget's clock (e.g. to reach midnight UTC)."
    )

    def clock(self) -> BudgetClock:
        return BudgetClock(self.budget_time_scale, self.budget_time_offset)
