"""Who may watch what (docs/domain.md, "Who may watch what"), as pure decisions.

The storage layer loads the *facts* (a user's memberships and entitlements, the capability
tables) and the *scope* of the thing watched (a run's workspace, tenant and type; a tenant's
workspace); the decision itself is a plain function of both. Out-of-scope and missing things
both give `not_found`, so the answer never tells whether something exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

Decision = Literal["allowed", "not_found", "forbidden"]

OPERATIONS_VIEW: Final = "operations.view"
REVIEW_PACK_VIEW: Final = "review_pack.view"

# Roles that hold every capability, including ones added later: a rule in code, not rows.
ALL_CAPABILITY_ROLES: Final = frozenset({"owner", "manager"})
# Roles entitled to every tenant of their workspace.
ALL_TENANT_ROLES: Final = frozenset({"owner"})


@dataclass(frozen=True)
class CapabilityTable:
    """`role_capabilities` and `operation_type_capabilities`, as loaded."""

    by_role: Mapping[str, frozenset[str]] = field(default_factory=dict)
    by_run_type: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def role_has(self, role: str, capability: str) -> bool:
        if role in ALL_CAPABILITY_ROLES:
            return True
        return capability in self.by_role.get(role, frozenset())


@dataclass(frozen=True)
class UserFacts:
    """What the database says about one user, as far as access goes."""

    user_id: int
    exists: bool = True
    roles: Mapping[int, str] = field(default_factory=dict)  # workspace id -> role
    tenants: frozenset[int] = frozenset()  # direct tenant entitlements

    def role_in(self, workspace_id: int) -> str | None:
        return self.roles.get(workspace_id)

    def entitled(self, role: str, tenant_id: int) -> bool:
        return role in ALL_TENANT_ROLES or tenant_id in self.tenants


@dataclass(frozen=True)
class RunScope:
    workspace_id: int
    tenant_id: int | None
    type: str


@dataclass(frozen=True)
class TenantScope:
    tenant_id: int
    workspace_id: int


def decide_run(user: UserFacts, caps: CapabilityTable, run: RunScope | None) -> Decision:
    if run is None:
        return "not_found"
    role = user.role_in(run.workspace_id)
    if role is None:
        return "not_found"
    if run.tenant_id is not None and not user.entitled(role, run.tenant_id):
        return "not_found"
    if not caps.role_has(role, OPERATIONS_VIEW):
        return "forbidden"
    for capability in caps.by_run_type.get(run.type, frozenset()):
        if not caps.role_has(role, capability):
            return "forbidden"
    return "allowed"


def decide_review_pack(
    user: UserFacts, caps: CapabilityTable, tenant: TenantScope | None
) -> Decision:
    if tenant is None:
        return "not_found"
    role = user.role_in(tenant.workspace_id)
    if role is None or not user.entitled(role, tenant.tenant_id):
        return "not_found"
    if not caps.role_has(role, REVIEW_PACK_VIEW):
        return "forbidden"
    return "allowed"


def decide_wall(
    user: UserFacts, caps: CapabilityTable, workspace_id: int, workspace_exists: bool
) -> Decision:
    if not workspace_exists:
        return "not_found"
    role = user.role_in(workspace_id)
    if role is None:
        return "not_found"
    if not caps.role_has(role, OPERATIONS_VIEW):
        return "forbidden"
    return "allowed"


def visible_on_wall(user: UserFacts, caps: CapabilityTable, run: RunScope) -> bool:
    """A wall lists only the runs the user could open one by one."""
    return decide_run(user, caps, run) == "allowed"
