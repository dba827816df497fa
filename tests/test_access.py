"""Who may watch what: docs/domain.md's table, row by row, as pure decisions."""

from __future__ import annotations

import pytest

from opspush.core.access import (
    CapabilityTable,
    RunScope,
    TenantScope,
    UserFacts,
    decide_review_pack,
    decide_run,
    decide_wall,
    visible_on_wall,
)

WS, OTHER_WS = 1, 2
T1, T2 = 10, 11
CAPS = CapabilityTable(
    by_role={
        "operator": frozenset({"operations.view", "review_pack.view", "review_pack.manage"}),
        "readonly": frozenset({"operations.view", "review_pack.view"}),
        "packs-only": frozenset({"review_pack.view"}),
        "ops-only": frozenset({"operations.view"}),
    },
    by_run_type={"secrets.rotate": frozenset({"secrets.view"})},
)


def user(role: str | None, tenants: tuple[int, ...] = (), workspace: int = WS) -> UserFacts:
    roles = {} if role is None else {workspace: role}
    return UserFacts(user_id=7, roles=roles, tenants=frozenset(tenants))


def run(tenant: int | None = T1, type: str = "inventory.sync") -> RunScope:
    return RunScope(workspace_id=WS, tenant_id=tenant, type=type)


@pytest.mark.parametrize(
    ("who", "scope", "decision"),
    [
        pytest.param(user("owner"), None, "not_found", id="run does not exist"),
        pytest.param(user(None), run(), "not_found", id="not a member"),
        pytest.param(user("owner", workspace=OTHER_WS), run(), "not_found", id="other workspace"),
        pytest.param(user("owner"), run(T1), "allowed", id="owner: every tenant"),
        pytest.param(user("manager", (T1,)), run(T1), "allowed", id="manager entitled"),
        pytest.param(user("manager"), run(T1), "not_found", id="manager not entitled"),
        pytest.param(user("operator", (T1,)), run(T1), "allowed", id="operator entitled"),
        pytest.param(user("operator", (T2,)), run(T1), "not_found", id="entitled elsewhere"),
        pytest.param(user("readonly", (T1,)), run(T1), "allowed", id="readonly entitled"),
        pytest.param(user("readonly"), run(None), "allowed", id="tenantless run"),
        pytest.param(user("packs-only", (T1,)), run(T1), "forbidden", id="no operations.view"),
        pytest.param(user("packs-only"), run(None), "forbidden", id="tenantless, no ops.view"),
        pytest.param(user("auditor", (T1,)), run(T1), "forbidden", id="custom role, no rows"),
        pytest.param(
            user("operator", (T1,)), run(T1, "secrets.rotate"), "forbidden", id="no type cap"
        ),
        pytest.param(user("owner"), run(T1, "secrets.rotate"), "allowed", id="owner: type cap"),
        pytest.param(
            user("manager", (T1,)), run(T1, "secrets.rotate"), "allowed", id="manager: type cap"
        ),
        pytest.param(
            user("auditor"), run(T1, "secrets.rotate"), "not_found", id="scope before capability"
        ),
    ],
)
def test_run_access(who: UserFacts, scope: RunScope | None, decision: str) -> None:
    assert decide_run(who, CAPS, scope) == decision


def test_type_capability_granted_by_rows() -> None:
    caps = CapabilityTable(
        by_role={"operator": frozenset({"operations.view", "secrets.view"})},
        by_run_type=CAPS.by_run_type,
    )
    assert decide_run(user("operator", (T1,)), caps, run(T1, "secrets.rotate")) == "allowed"


TENANT = TenantScope(tenant_id=T1, workspace_id=WS)


@pytest.mark.parametrize(
    ("who", "scope", "decision"),
    [
        pytest.param(user("owner"), None, "not_found", id="tenant does not exist"),
        pytest.param(user(None), TENANT, "not_found", id="not a member"),
        pytest.param(user("manager"), TENANT, "not_found", id="not entitled"),
        pytest.param(user("owner"), TENANT, "allowed", id="owner"),
        pytest.param(user("manager", (T1,)), TENANT, "allowed", id="manager entitled"),
        pytest.param(user("readonly", (T1,)), TENANT, "allowed", id="readonly entitled"),
        pytest.param(user("ops-only", (T1,)), TENANT, "forbidden", id="no review_pack.view"),
        pytest.param(user("auditor", (T1,)), TENANT, "forbidden", id="custom role"),
    ],
)
def test_review_pack_access(who: UserFacts, scope: TenantScope | None, decision: str) -> None:
    assert decide_review_pack(who, CAPS, scope) == decision


@pytest.mark.parametrize(
    ("who", "exists", "decision"),
    [
        pytest.param(user("owner"), False, "not_found", id="workspace does not exist"),
        pytest.param(user(None), True, "not_found", id="not a member"),
        pytest.param(user("readonly"), True, "allowed", id="member with operations.view"),
        pytest.param(user("packs-only"), True, "forbidden", id="no operations.view"),
        pytest.param(user("auditor"), True, "forbidden", id="custom role"),
    ],
)
def test_wall_access(who: UserFacts, exists: bool, decision: str) -> None:
    assert decide_wall(who, CAPS, WS, exists) == decision


def test_wall_lists_only_runs_the_user_could_open() -> None:
    runs = [run(T1), run(T2), run(None), run(T1, "secrets.rotate")]
    visible = [r for r in runs if visible_on_wall(user("operator", (T1,)), CAPS, r)]
    assert visible == [run(T1), run(None)]
    assert [r for r in runs if visible_on_wall(user("owner"), CAPS, r)] == runs


def test_unknown_user_sees_nothing() -> None:
    ghost = UserFacts(user_id=99, exists=False)
    assert decide_run(ghost, CAPS, run()) == "not_found"
    assert decide_wall(ghost, CAPS, WS, True) == "not_found"
