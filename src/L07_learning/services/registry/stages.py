"""The stage process of contract §4.2: the transition table, approvals and the gates, as plain functions.

Nothing here reads or writes the database: the registry (``promotion.py``, ``approvals.py``) loads the model, its
open approvals and its latest validation, calls these functions inside its transaction and stores what they return. A refusal is an ``L07Error``
whose message names what is missing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelArtifact, ModelStage, ServingState
from ...models.validation import Recommendation, StageOutcome, ValidationResult

CANARY_CONFIG = {"traffic_percentage": 20, "duration_minutes": 60, "success_criteria": "error_rate < 1%"}
APPROVAL_ROLES = ("reviewer", "deployer", "ml_manager", "admin")
ROLLBACK_REASONS = ("quality_degradation", "bug", "manual", "canary_failure", "security")
# The error code the learning.model_deployment_failed event carries for a rollback reason.
ROLLBACK_CODES = {"canary_failure": "E7205", "quality_degradation": "E7403", "security": "E7201"}
ARCHIVE_AFTER_DAYS = 30  # contract §8 #8: STANDBY -> ARCHIVED 30 days after being superseded

# Contract §4.2, with the issue's rule that ARCHIVED is final. PRODUCTION -> ARCHIVED applies to STANDBY only;
# STANDBY -> ACTIVE is `rollback`, never `promote_model`.
ALLOWED: dict[ModelStage, tuple[ModelStage, ...]] = {
    ModelStage.DEVELOPMENT: (ModelStage.STAGING, ModelStage.REJECTED, ModelStage.ARCHIVED),
    ModelStage.STAGING: (ModelStage.PRODUCTION, ModelStage.ARCHIVED),
    ModelStage.PRODUCTION: (ModelStage.ARCHIVED,),
    ModelStage.ARCHIVED: (),
    ModelStage.REJECTED: (ModelStage.ARCHIVED,),
}

# The transition each role approves when the approval names none (contract §7.4).
APPROVAL_ROLE_TARGET = {"reviewer": ModelStage.STAGING, "deployer": ModelStage.PRODUCTION,
                        "ml_manager": ModelStage.PRODUCTION, "admin": ModelStage.ARCHIVED}


def allowed_targets(stage: ModelStage, serving_state: ServingState = ServingState.NONE) -> list[ModelStage]:
    """Stages ``promote_model`` may move a model to from where it is."""
    if stage is ModelStage.PRODUCTION and serving_state is not ServingState.STANDBY:
        return []  # the ACTIVE model is replaced or rolled back, never archived directly
    return list(ALLOWED[stage])


def parse_stage(stage: str | ModelStage) -> ModelStage:
    """``"staging"``, ``"Production"``... as a ``ModelStage`` (E7251 for an unknown name)."""
    try:
        return stage if isinstance(stage, ModelStage) else ModelStage(str(stage).strip())
    except ValueError:
        raise L07Error(
            L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED,
            f"unknown stage {stage!r}; stages are {', '.join(s.value for s in ModelStage)}",
            stage=str(stage), allowed=[s.value for s in ModelStage],
        ) from None


def check_transition(model: ModelArtifact, target: ModelStage) -> None:
    """Refuse a move the table does not allow from the model's stage (E7251, naming the allowed ones)."""
    allowed = allowed_targets(model.stage, model.serving_state)
    if target in allowed:
        return
    where = model.stage.value + (f" ({model.serving_state.value})" if model.stage is ModelStage.PRODUCTION else "")
    hint = ""
    if model.stage is ModelStage.PRODUCTION and target is ModelStage.PRODUCTION:
        hint = " To make a STANDBY version ACTIVE again use rollback."
    elif model.stage is ModelStage.DEVELOPMENT and target is ModelStage.PRODUCTION:
        hint = " Models reach PRODUCTION only through STAGING."
    raise L07Error(
        L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED,
        f"model {model.name} {model.version} is {where}; it cannot move to {target.value}. "
        f"Allowed from {where}: {', '.join(s.value for s in allowed) or 'none (final)'}.{hint}",
        model_id=model.model_id, current_stage=model.stage.value, serving_state=model.serving_state.value,
        target_stage=target.value, allowed=[s.value for s in allowed],
    )


def check_rollback_reason(reason: str) -> str:
    """A rollback reason from ``ROLLBACK_REASONS`` (E7110 otherwise)."""
    if reason not in ROLLBACK_REASONS:
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                       f"rollback reason must be one of {', '.join(ROLLBACK_REASONS)}", allowed=list(ROLLBACK_REASONS))
    return reason


# --- approvals ----------------------------------------------------------------------------------------------------


def parse_approvals(approvals: Iterable[Any] | None) -> list[tuple[str, str]]:
    """Approvals as ``(role, actor)``: accepts dicts ``{role, actor}``, pairs, or ``"role=actor"`` strings."""
    out: list[tuple[str, str]] = []
    for item in approvals or []:
        if isinstance(item, dict):
            role, who = item.get("role"), item.get("actor")
        elif isinstance(item, str) and "=" in item:
            role, who = item.split("=", 1)
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            role, who = item
        else:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"approval {item!r} must be role=actor")
        out.append((check_role(str(role or "")), check_actor(str(who or ""))))
    return out


def check_role(role: str) -> str:
    """An approval role from ``APPROVAL_ROLES``, any case (E7110 otherwise)."""
    role = role.strip().lower()
    if role not in APPROVAL_ROLES:
        raise L07Error(
            L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
            f"approval role {role!r} is not one of {', '.join(APPROVAL_ROLES)}", role=role, allowed=list(APPROVAL_ROLES),
        )
    return role


def check_actor(actor: str) -> str:
    """The non-empty name of who approved (E7110 when empty)."""
    actor = actor.strip()
    if not actor:
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "an approval must name who approved")
    return actor


def approval_target(role: str, to_stage: str | ModelStage | None = None) -> ModelStage:
    """The transition an approval is for: ``to_stage`` when given, else the one the role approves."""
    return parse_stage(to_stage) if to_stage is not None else APPROVAL_ROLE_TARGET[role]


# Transitions whose approvals are given for one validation report (contract §4.2 gates read the latest report).
VALIDATED_TARGETS = (ModelStage.STAGING, ModelStage.PRODUCTION)


def approved_validation(model_id: str, latest: ValidationResult | None, asked: str | None) -> str:
    """The validation an approval is bound to: the model's latest (E7252 when there is none, or ``asked`` is older)."""
    if latest is None:
        raise L07Error(L07ErrorCode.STAGE_APPROVAL_MISSING,
                       f"model {model_id} has no validation report to approve; validate it first "
                       f"(l07 models validate {model_id})", model_id=model_id)
    if asked is not None and asked != latest.validation_id:
        raise L07Error(L07ErrorCode.STAGE_APPROVAL_MISSING,
                       f"validation {asked} is not the latest report of model {model_id}; review and approve "
                       f"{latest.validation_id} instead", model_id=model_id, validation_id=asked,
                       latest_validation_id=latest.validation_id)
    return latest.validation_id


# --- gates --------------------------------------------------------------------------------------------------------


def requirements(
    model: ModelArtifact, approvals: list[dict[str, Any]], validation: ValidationResult | None, target: ModelStage,
) -> list[dict[str, Any]]:
    """Check validation and approvals for a transition; returns the approvals it uses (the approval chain).

    Args:
        model: The model as it is now.
        approvals: The open approvals of this transition, oldest first (``{id, role, actor, at}``).
        validation: The model's latest stored validation, if any.
        target: Where the model is to go; ``check_transition`` has allowed it already.

    Raises:
        L07Error: E7252 approval missing; E7203/E7204 validation missing, failed or regressed.
    """
    by_role: dict[str, dict[str, Any]] = {}
    for a in approvals:
        by_role.setdefault(a["role"], a)
    if target is ModelStage.STAGING:
        return _staging_chain(model, by_role, validation)
    if target is ModelStage.PRODUCTION:
        production_gates(model, validation)
        return _production_chain(approvals, by_role)
    if target is ModelStage.REJECTED:
        rejected_by_validation = validation is not None and (
            validation.recommendation is Recommendation.REJECT
            or (validation.stages.get("safety") is not None and validation.stages["safety"].outcome is StageOutcome.FAIL)
        )
        if rejected_by_validation:
            return [_validator_approval(validation)]  # type: ignore[arg-type]
        for role in ("reviewer", "admin"):
            if role in by_role:
                return [by_role[role]]
        raise L07Error(L07ErrorCode.STAGE_APPROVAL_MISSING,
                       "REJECTED needs a validation that rejected the model, or a reviewer or admin approval",
                       missing=["reviewer|admin"])
    # ARCHIVED: manual archive needs an admin (contract §7.4).
    if "admin" not in by_role:
        raise L07Error(L07ErrorCode.STAGE_APPROVAL_MISSING, "archiving by hand needs an admin approval", missing=["admin"])
    return [by_role["admin"]]


def production_gates(model: ModelArtifact, validation: ValidationResult | None) -> None:
    """STAGING -> PRODUCTION gates of contract §4.2 on the latest stored validation."""
    if validation is None:
        raise L07Error(L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED,
                       f"model {model.model_id} has no validation result; PRODUCTION needs one")
    if validation.recommendation is Recommendation.REJECT:
        raise L07Error(L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED,
                       f"validation {validation.validation_id} recommends REJECT")
    regression = validation.stages.get("regression")
    if regression is None or regression.outcome is not StageOutcome.PASS:
        raise L07Error(
            L07ErrorCode.MODEL_REGRESSION_DETECTED,
            "PRODUCTION needs a regression stage that passed (pass rate 100%, accuracy >= baseline - 5%); got "
            + (regression.outcome.value if regression else "no regression stage"),
            issues=regression.issues if regression else [],
        )
    safety = validation.stages.get("safety")
    if safety is not None and safety.outcome is StageOutcome.FAIL:
        raise L07Error(L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED,
                       "the safety stage found a critical issue: " + "; ".join(safety.issues), issues=safety.issues)


def _staging_chain(
    model: ModelArtifact, by_role: dict[str, dict[str, Any]], validation: ValidationResult | None
) -> list[dict[str, Any]]:
    """DEVELOPMENT -> STAGING: a DEPLOY validation, or a REVIEW one plus a reviewer approval."""
    if validation is None:
        raise L07Error(L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED,
                       f"model {model.model_id} has no validation result; validate it before STAGING")
    if validation.recommendation is Recommendation.DEPLOY:
        return [_validator_approval(validation)]
    if validation.recommendation is Recommendation.REVIEW:
        if "reviewer" not in by_role:
            raise L07Error(
                L07ErrorCode.STAGE_APPROVAL_MISSING,
                f"validation {validation.validation_id} recommends REVIEW: STAGING needs a reviewer approval "
                f"(`l07 models approve {model.model_id} reviewer --actor NAME`)",
                missing=["reviewer"],
            )
        return [by_role["reviewer"]]
    raise L07Error(L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED,
                   f"validation {validation.validation_id} recommends REJECT; the model cannot reach STAGING")


def _production_chain(approvals: list[dict[str, Any]], by_role: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """STAGING -> PRODUCTION: a deployer and an ml_manager, two different people."""
    missing = [r for r in ("deployer", "ml_manager") if r not in by_role]
    if missing:
        raise L07Error(
            L07ErrorCode.STAGE_APPROVAL_MISSING,
            f"STAGING -> PRODUCTION needs approvals from a deployer and an ml_manager; missing: {', '.join(missing)}",
            missing=missing, recorded=[{k: a[k] for k in ('role', 'actor')} for a in approvals],
        )
    deployer = by_role["deployer"]
    manager = next((a for a in approvals if a["role"] == "ml_manager" and a["actor"] != deployer["actor"]), None)
    if manager is None:
        raise L07Error(
            L07ErrorCode.STAGE_APPROVAL_MISSING,
            f"the deployer and ml_manager approvals must come from two different people "
            f"(both are {deployer['actor']})", missing=["ml_manager"],
        )
    return [deployer, manager]


def _validator_approval(validation: ValidationResult) -> dict[str, Any]:
    """A validation that decided a transition, as an entry of the approval chain."""
    return {"role": "validator", "actor": f"validation:{validation.validation_id}",
            "at": _iso(validation.completed_at or validation.started_at)}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
