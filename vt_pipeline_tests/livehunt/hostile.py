"""Hostile Livehunt notifications: each one shape that used to fail its whole window.

Shared by the filter, asset and end-to-end tests: every item here must be dropped with reason
`malformed` while the notifications beside it are processed as if it were not there.
"""

from __future__ import annotations

import math
from typing import Any

from vt_pipeline_tests.factories import NOTIFICATION_DATE, domain_notification, file_notification


def hostile_notifications(date: int = NOTIFICATION_DATE) -> dict[str, dict[str, Any]]:
    """One notification per hostile shape, by a label that says what is wrong with it."""

    def file(label: str, **kwargs: Any) -> dict[str, Any]:
        return file_notification(
            f"hostile-{label}", notification_id=f"hostile-{label}", notification_date=date, **kwargs
        )

    domain = domain_notification(
        "hostile-list.example.com",
        notification_id="hostile-attributes-list",
        notification_date=date,
    )
    domain["attributes"] = [{"last_analysis_stats": {"malicious": 3}}]
    return {
        "size 2**64": file("size", attributes={"size": 2**64}),
        "first_submission_date 10**30": file(
            "first-submission", attributes={"first_submission_date": 10**30}
        ),
        "malicious Infinity": file(
            "infinity",
            attributes={"last_analysis_stats": {"malicious": math.inf, "harmless": 0}},
        ),
        "hunting_info a list": file("hunting-list", context={"hunting_info": ["Test_Rule"]}),
        "domain attributes a list": domain,
        "lone surrogate in a name": file(
            "surrogate", meaningful_name="invoice\udc80.exe", names=["invoice\udc80.exe"]
        ),
    }
