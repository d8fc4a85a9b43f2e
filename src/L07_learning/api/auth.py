"""Who may call the REST service and what they may do (contract §7.4 "REST auth", "RBAC", "Approvals").

Each key is bound to one role. Attributes (for example ``{"ml_manager": true}``) carry extra capacities that are
not roles: STAGING -> PRODUCTION needs a ``deployer`` approval **and** an ``ml_manager`` approval. How keys are stored
(only their SHA-256) is ``services/access.py``'s business; ``l07 keys`` manages keys through ``AuthService`` here, so
that the role check is the same whether a key is made by the CLI or checked by the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..models.error_codes import L07Error, L07ErrorCode
from ..services.access import AccessService, ApiKeyRecord, hash_token
from ..services.ingestion.provenance import EventBinding, normalise_binding

__all__ = [
    "ApprovalCapacity", "AuthService", "AuthenticationError", "Permission", "PermissionDenied", "Principal", "Role",
    "ROLE_PERMISSIONS", "hash_token", "parse_role",
]


class Role(str, Enum):
    """The contract's roles, plus ``producer`` for layers that only post events."""

    TRAINER = "trainer"
    REVIEWER = "reviewer"
    DEPLOYER = "deployer"
    AUDITOR = "auditor"
    ADMIN = "admin"
    # Not in the contract's RBAC list: event producers (L02, L04-L06) need ingestion and nothing else,
    # so they get a least-privilege role instead of trainer or admin rights.
    PRODUCER = "producer"
    # Agents and gateways calling a model served by ``l07 serve-model``: inference and nothing else.
    INFERENCE = "inference"


class Permission(str, Enum):
    """Actions a key may be allowed to perform (names follow the contract's ``model.*`` vocabulary)."""

    EVENTS_INGEST = "events.ingest"
    MODEL_LIST = "model.list"
    MODEL_GET = "model.get"
    MODEL_CREATE = "model.create"  # submit training jobs that create models
    MODEL_TRAIN_LOG = "model.train_log"  # cancel / follow one's training jobs
    MODEL_GET_METRICS = "model.get_metrics"
    MODEL_VALIDATE = "model.validate"
    MODEL_APPROVE_FOR_STAGING = "model.approve_for_staging"
    MODEL_DEPLOY_TO_STAGING = "model.deploy_to_staging"
    MODEL_DEPLOY_TO_PRODUCTION = "model.deploy_to_production"
    MODEL_ROLLBACK = "model.rollback"
    MODEL_ARCHIVE = "model.archive"
    JOB_GET = "job.get"
    DATASET_LIST = "dataset.list"
    DATASET_GET_TRAINING_DATA = "dataset.get_training_data"  # example texts, restricted
    EXAMPLE_REVIEW = "example.review"  # accept or reject an example the filter sent to REVIEW
    AUDIT_LOG = "audit_log"
    METRICS_READ = "metrics.read"  # GET /metrics unless L07_API_PUBLIC_METRICS=true
    MODEL_INFER = "model.infer"  # chat completions from ``l07 serve-model``


_READ = {Permission.MODEL_LIST, Permission.MODEL_GET, Permission.JOB_GET, Permission.DATASET_LIST, Permission.METRICS_READ}

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    # Contract §7.4 grants trainers list/get/create/train_log only: validation (which decides DEPLOY/REVIEW/REJECT
    # of the trainer's own model) belongs to the reviewer, deployer and admin.
    Role.TRAINER: frozenset(_READ | {Permission.MODEL_CREATE, Permission.MODEL_TRAIN_LOG}),
    Role.REVIEWER: frozenset(
        _READ
        | {
            Permission.MODEL_GET_METRICS,
            Permission.MODEL_APPROVE_FOR_STAGING,
            Permission.DATASET_GET_TRAINING_DATA,
            Permission.EXAMPLE_REVIEW,
            Permission.MODEL_VALIDATE,
        }
    ),
    Role.DEPLOYER: frozenset(
        _READ
        | {
            Permission.MODEL_DEPLOY_TO_STAGING,
            Permission.MODEL_DEPLOY_TO_PRODUCTION,
            Permission.MODEL_ROLLBACK,
            Permission.MODEL_VALIDATE,
        }
    ),
    Role.AUDITOR: frozenset(_READ | {Permission.AUDIT_LOG, Permission.MODEL_GET_METRICS}),
    Role.ADMIN: frozenset(Permission),
    Role.PRODUCER: frozenset({Permission.EVENTS_INGEST}),
    Role.INFERENCE: frozenset({Permission.MODEL_INFER}),
}


class ApprovalCapacity(str, Enum):
    """In which capacity an approval is given (contract §7.4 "Approvals"); the registry checks which it needs:
    ``reviewer`` for REVIEW -> STAGING, ``deployer`` and ``ml_manager`` for STAGING -> PRODUCTION, ``admin`` for a
    manual archive."""

    REVIEWER = "reviewer"
    DEPLOYER = "deployer"
    ML_MANAGER = "ml_manager"
    ADMIN = "admin"


class AuthenticationError(L07Error):
    """No key, or a key that is unknown or revoked (HTTP 401)."""

    def __init__(self, message: str) -> None:
        super().__init__(L07ErrorCode.SERVICE_ACCOUNT_PERMISSION_ERROR, message, reason="unauthenticated")

    @property
    def http_status(self) -> int:
        return 401


class PermissionDenied(L07Error):
    """A valid key whose role does not allow the action (HTTP 403, code E7904)."""

    def __init__(self, principal: "Principal", permission: Permission | str) -> None:
        name = permission.value if isinstance(permission, Permission) else permission
        super().__init__(
            L07ErrorCode.SERVICE_ACCOUNT_PERMISSION_ERROR,
            f"role '{principal.role.value}' may not perform '{name}'",
            reason="forbidden",
            permission=name,
            role=principal.role.value,
            key_id=principal.key_id,
        )


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: key id, role and attributes."""

    key_id: str
    role: Role
    name: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    # Producer keys: the sources and event kinds the key may send (``ingestion/provenance.py``).
    sources: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()

    @property
    def permissions(self) -> frozenset[Permission]:
        return ROLE_PERMISSIONS[self.role]

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def event_binding(self) -> EventBinding | None:
        """What this caller may post to ``/api/v1/events``: a producer key's binding (an unbound producer key may
        post nothing); None for an admin key without a binding, which may post anything."""
        if self.role is Role.ADMIN and not self.sources:
            return None
        return EventBinding(f"API key {self.key_id}", self.sources, self.kinds)

    def can(self, permission: Permission) -> bool:
        """True when the role grants ``permission``."""
        return permission in self.permissions

    def require(self, permission: Permission) -> None:
        """Raise ``PermissionDenied`` unless the role grants ``permission``."""
        if not self.can(permission):
            raise PermissionDenied(self, permission)

    @property
    def capacities(self) -> frozenset[ApprovalCapacity]:
        """Capacities this caller may approve in. ``ml_manager`` comes only from the attribute, never from a role,
        so that the two PRODUCTION approvals stay two people's decisions."""
        caps: set[ApprovalCapacity] = set()
        if self.can(Permission.MODEL_APPROVE_FOR_STAGING):
            caps.add(ApprovalCapacity.REVIEWER)
        if self.can(Permission.MODEL_DEPLOY_TO_PRODUCTION):
            caps.add(ApprovalCapacity.DEPLOYER)
        if self.attributes.get("ml_manager") is True:
            caps.add(ApprovalCapacity.ML_MANAGER)
        if self.role is Role.ADMIN:
            caps.add(ApprovalCapacity.ADMIN)
        return frozenset(caps)


def parse_role(role: str | Role) -> Role:
    """A role from its name (any case); E7904 naming the allowed roles otherwise."""
    if isinstance(role, Role):
        return role
    try:
        return Role(str(role).strip().lower())
    except ValueError:
        raise L07Error(
            L07ErrorCode.SERVICE_ACCOUNT_PERMISSION_ERROR,
            f"unknown role '{role}'; allowed: {', '.join(r.value for r in Role)}",
            role=str(role),
        ) from None


class AuthService:
    """Creates, revokes and checks API keys.

    Args:
        access: Key storage (``LearningService.access``).
    """

    def __init__(self, access: AccessService) -> None:
        self.access = access

    async def create_key(
        self, role: str | Role, name: str | None = None, attributes: dict[str, Any] | None = None, actor: str = "cli",
        *, sources: Any = None, kinds: Any = None,
    ) -> tuple[ApiKeyRecord, str]:
        """Create a key bound to ``role``; a ``producer`` key is also bound to the ``sources`` it speaks for and the
        event ``kinds`` it may send (default: what those layers produce; ``human_review`` only when named).

        Returns:
            The stored record and the token. The token is not stored anywhere and cannot be shown again.

        Raises:
            L07Error: E7904 for an unknown role; E7110 for a producer key without sources, an unknown source or kind,
                or a binding on a key of another role.
        """
        parsed = parse_role(role)
        bound: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        if parsed is Role.PRODUCER or (parsed is Role.ADMIN and (sources or kinds)):
            bound = normalise_binding(sources, kinds)
        elif sources or kinds:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                           f"only producer (or admin) keys are bound to sources and kinds, not {parsed.value} keys",
                           role=parsed.value)
        return await self.access.create_key(parsed.value, name, dict(attributes or {}), actor,
                                            sources=bound[0], kinds=bound[1])

    async def authenticate(self, token: str | None) -> Principal:
        """The principal for a presented token.

        Raises:
            AuthenticationError: no token, an unknown token or a revoked key.
        """
        if not token:
            raise AuthenticationError("an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'")
        return _principal(await self.access.find_key(token))

    async def principal_for_key(self, key_id: str) -> Principal:
        """The principal of a stored key named by id (a console session), checked as ``authenticate`` checks a token.

        Raises:
            AuthenticationError: an unknown or revoked key.
        """
        return _principal(await self.access.get_key(key_id))

    async def list_keys(self, include_revoked: bool = False) -> list[ApiKeyRecord]:
        """Stored keys (hashes only)."""
        return await self.access.list_keys(include_revoked=include_revoked)

    async def revoke_key(self, key_id: str, actor: str = "cli") -> bool:
        """Revoke a key; returns False when there was nothing to revoke. Audited either way."""
        return await self.access.revoke_key(key_id, actor)


def _principal(record: ApiKeyRecord | None) -> Principal:
    if record is None:
        raise AuthenticationError("unknown API key")
    if not record.active:
        raise AuthenticationError(f"API key {record.key_id} was revoked")
    return Principal(key_id=record.key_id, role=Role(record.role), name=record.name, attributes=record.attributes,
                     sources=record.sources, kinds=record.kinds)
