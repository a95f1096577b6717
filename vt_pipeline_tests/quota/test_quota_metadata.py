"""The quota asset's figures as an operator reads them: limits in force, work and job names."""

from __future__ import annotations

from typing import Any

import dagster as dg

from vt_pipeline.quota.definitions import job_name, limits_in_force, quota_metadata, summary
from vt_pipeline.virustotal.budget import UNLIMITED


def reported(hour: int, day: int, month: int, used: int = 0) -> dict[str, Any]:
    return {
        f"api_requests_{name}": {"user": {"allowed": allowed, "used": used}}
        for name, allowed in (("hourly", hour), ("daily", day), ("monthly", month))
    }


def usage(limits: dict[str, int], **by_job: int) -> dict[str, Any]:
    return {
        "limits": limits,
        "used": {"minute": 1, "hour": 2, "day": 3, "month": 4},
        "last_minute": 1,
        "by_kind": {"livehunt": 3},
        "by_kind_month": {"livehunt": 4},
        "by_job": by_job,
    }


def test_a_key_without_limits_says_so_instead_of_zero() -> None:
    """The budget keeps 0 for "no limit"; the asset says what it means."""
    limits = limits_in_force(
        reported(UNLIMITED, UNLIMITED, UNLIMITED),
        {"minute": 0, "hour": 0, "day": 0, "month": 0},
        {},
    )
    assert all(limit is None and "sets no limit" in why for limit, why in limits.values())
    unknown = limits_in_force(None, {"minute": 0, "hour": 0, "day": 0, "month": 0}, {})
    assert all("not known" in why for _, why in unknown.values())


def test_the_limit_in_force_names_where_it_comes_from() -> None:
    budget = {"minute": 20, "hour": 6000, "day": 1000, "month": 100_000}
    limits = limits_in_force(reported(6000, 50_000, 100_000), budget, {"day": 1000})
    assert limits["minute"] == (
        20,
        "lowered for 10 minutes after a 429 (another client on the key)",
    )
    assert limits["hour"] == (6000, "VirusTotal's quota for the key")
    assert limits["day"] == (1000, "VIRUSTOTAL_QUOTA_PER_DAY")
    assert limits["month"] == (100_000, "VirusTotal's quota for the key")


def test_jobs_are_named_as_an_operator_knows_them() -> None:
    metadata = quota_metadata(
        reported(UNLIMITED, UNLIMITED, UNLIMITED),
        usage(
            {"minute": 0, "hour": 0, "day": 0, "month": 0},
            __ASSET_JOB=2,
            __ephemeral_asset_job__=1,
            livehunt_job=5,
        ),
    )
    jobs = {r.data["job"]: r.data["today"] for r in metadata["calls_by_job"].value.records}
    assert jobs == {
        "assets materialized from the UI": 2,
        "in-process runs (vt-pipeline demo, Python)": 1,
        "Livehunt schedule and job runs (livehunt_job)": 5,
    }
    assert job_name("__ASSET_JOB_0") == "assets materialized from the UI"
    plotted = sorted(k for k, v in metadata.items() if isinstance(v, dg.IntMetadataValue))
    assert plotted == [
        "calls_last_minute",
        "calls_this_hour",
        "calls_this_month",
        "calls_today",
        "vt_key_used_this_hour",
        "vt_key_used_this_month",
        "vt_key_used_today",
    ]
    assert summary(metadata) == (
        "Recorded virustotal_quota: VT calls 3 today, 1 this minute; the key used 0 today as "
        "VirusTotal counts. No run: the quota is recorded without one."
    )
