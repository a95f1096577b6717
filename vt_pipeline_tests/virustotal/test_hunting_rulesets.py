"""Livehunt ruleset management through the VT layer against the emulator (real vt-py)."""

import asyncio
from typing import Any

import pytest

from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.virustotal import hunting_rulesets as rulesets
from vt_pipeline.virustotal.resource import VirusTotalError, VirusTotalResource
from vt_pipeline_tests.conftest import PUBLIC_KEY, ResourcesFactory

pytestmark = pytest.mark.integration


def rule(number: int) -> str:
    return f'rule team_{number} : t {{ strings: $a = "x{number}" condition: $a }}'


def run(virustotal: VirusTotalResource, work: Any) -> Any:
    async def go() -> Any:
        async with virustotal.session(kind="auto") as session:
            return await work(session)

    return asyncio.run(go())


def test_list_every_page_create_edit_in_place_delete(
    vt_emulator: VirusTotalEmulator, livehunt_resources: ResourcesFactory
) -> None:
    virustotal = livehunt_resources()["virustotal"]
    corpus_rulesets = len(vt_emulator.api.hunting.all())

    async def work(session: Any) -> tuple[list, dict, dict, list, bool, bool]:
        made = [
            await rulesets.create_ruleset(
                session, name=f"team {n}", rules=rule(n), notification_emails=["a@example.com"]
            )
            for n in range(45)
        ]
        listed = await rulesets.list_rulesets(session)
        edited = await rulesets.update_ruleset(
            session, made[0]["id"], {"rules": rule(0) + "\n" + rule(100), "enabled": False}
        )
        await rulesets.add_editors(session, made[0]["id"], ["alice", "bob"])
        first = await rulesets.delete_ruleset(session, made[1]["id"])
        again = await rulesets.delete_ruleset(session, made[1]["id"])
        # VT's filter: full words ("team" but not "tea"), enabled, combined
        assert len(await rulesets.list_rulesets(session, "name:team")) == 44
        assert await rulesets.list_rulesets(session, "name:tea") == []
        assert len(await rulesets.list_rulesets(session, "name:team enabled:false")) == 1
        return listed, made[0], edited, await rulesets.list_rulesets(session), first, again

    vt_emulator.reset_stats()
    listed, made, edited, after, first, again = run(virustotal, work)
    total = corpus_rulesets + 45
    assert len(listed) == total and len({r["id"] for r in listed}) == total
    # 40 a page: 50 rulesets (2 pages), 44 "team" (2), none (1), 1 (1), 49 (2)
    assert vt_emulator.count("hunting_rulesets") == 2 + 2 + 1 + 1 + 2
    attrs = made["attributes"]
    assert attrs["enabled"] is True and attrs["limit"] == 100
    assert attrs["notification_emails"] == ["a@example.com"] and attrs["rule_names"] == ["team_0"]
    assert made["type"] == "hunting_ruleset" and made["links"]["self"].endswith(made["id"])
    # PATCH edits in place: same id, rule names recomputed, the rest kept
    assert edited["id"] == made["id"] and edited["attributes"]["enabled"] is False
    assert edited["attributes"]["rule_names"] == ["team_0", "team_100"]
    assert edited["attributes"]["notification_emails"] == ["a@example.com"]
    assert edited["attributes"]["creation_date"] == attrs["creation_date"]
    assert vt_emulator.api.hunting.editors(made["id"]) == [
        {"type": "user", "id": "alice"},
        {"type": "user", "id": "bob"},
    ]
    assert (first, again) == (True, False) and len(after) == total - 1


def test_rules_vt_cannot_compile_are_refused_and_nothing_is_made(
    vt_emulator: VirusTotalEmulator, livehunt_resources: ResourcesFactory
) -> None:
    virustotal = livehunt_resources()["virustotal"]
    before = len(vt_emulator.api.hunting.all())

    async def work(session: Any) -> None:
        await rulesets.create_ruleset(session, name="bad", rules="rule 9x { condition: true }")

    with pytest.raises(VirusTotalError) as refused:
        run(virustotal, work)
    assert refused.value.code == "InvalidArgumentError"
    assert vt_emulator.count("hunting_ruleset_create", 400) == 1  # not retried
    assert len(vt_emulator.api.hunting.all()) == before


def test_a_public_key_is_told_rulesets_need_a_premium_key(
    vt_emulator: VirusTotalEmulator, livehunt_resources: ResourcesFactory
) -> None:
    virustotal = livehunt_resources(api_key=PUBLIC_KEY)["virustotal"]
    with pytest.raises(VirusTotalError, match="premium") as refused:
        run(virustotal, rulesets.list_rulesets)
    assert refused.value.code == "ForbiddenError"


def test_unsafe_ruleset_ids_never_reach_a_path(livehunt_resources: ResourcesFactory) -> None:
    virustotal = livehunt_resources()["virustotal"]

    async def work(session: Any) -> None:
        await rulesets.update_ruleset(session, "../users/me", {"enabled": False})

    with pytest.raises(VirusTotalError, match="not a plain token"):
        run(virustotal, work)
