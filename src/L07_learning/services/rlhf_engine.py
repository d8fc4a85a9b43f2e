"""RLHF engine: a pairwise reward model and preference optimisation of a LoRA policy (contract §3.6, §5.5, §5.7).

``RLHFEngine.train_reward_model`` trains a sequence-classification reward model on preference pairs and registers it
as ``REWARD_MODEL``; ``RLHFEngine.optimize_policy`` runs DPO (default), GRPO, RLOO or our PPO against it and registers
the policy with lineage to the base / SFT model, the reward model and the preference data. Guards: KL budget (E7306:
the last good weights are kept), reward hacking (E7305: the model is registered quarantined, marked
``validation_status=FAILED`` and tagged ``quarantined``, and the call raises), and the negative-feedback-loop check
across RLHF iterations (E7402).

The same work runs as a durable job (``job_type=RLHF``) through the fine-tuning engine's runner: its worker-side hooks
(dataset -> preference pairs; registration through this engine) are in ``services/jobs/rlhf.py``, the child side is
``rlhf_pipeline.entry``. Heavy compute runs in a worker thread (direct calls) or the job's child process; torch is
never imported here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.error_codes import L07Error, L07ErrorCode
from ..models.model_artifact import ModelArtifact, ModelType
from ..models.reward_signal import PreferencePair, RewardModel, RLHFConfig
from ..observability.metrics import CIRCUIT_BREAKER_STATE, ERRORS, REWARD_MODEL_ACCURACY, RLHF_ALERTS
from ..pipelines import rlhf_pipeline
from ..settings import Settings, get_settings
from ..store.db import Database, get_database
from ..store.repositories.audit import audit
from ..store.repositories.rewards import RewardRepository
from .filtering.redaction import redact_for_storage
from .jobs.register import Provenance, default_name, model_record
from .model_registry import ModelRegistry

log = logging.getLogger(__name__)

ONLINE_ALGORITHMS = frozenset({"grpo", "rloo", "ppo"})
FEEDBACK_LOOP_RATIO = 0.95
"""A model whose quality is below this share of the baseline counts toward a negative feedback loop (§5.7)."""
FEEDBACK_LOOP_RUN = 3
"""Consecutive low models that trip E7402 (§5.7)."""
TREND_P_VALUE = 0.05
"""A falling data-quality trend trips E7402 when its slope is < 0 at this significance (§5.7)."""


def pairs_digest(pairs: list[PreferencePair]) -> str:
    """sha256 over the pairs' ``prompt/chosen/rejected`` in order: the preference data's identity in lineage."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.prompt, p.chosen, p.rejected], ensure_ascii=False).encode())
    return "sha256:" + h.hexdigest()


def _coerce_pairs(pairs: list[PreferencePair | dict[str, Any]]) -> list[PreferencePair]:
    try:
        return [p if isinstance(p, PreferencePair) else PreferencePair.model_validate(p) for p in pairs]
    except ValueError as exc:
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"invalid preference pair: {exc}") from None


@dataclass
class FeedbackLoopReport:
    """Result of the negative-feedback-loop check (contract §5.7).

    Attributes:
        detected: True when E7402 applies.
        reasons: ``low_model_run`` (3 consecutive models < 0.95 x baseline) and/or ``declining_data_quality``
            (slope < 0 with p < 0.05).
        model_qualities: The qualities checked, oldest first.
        baseline: The baseline quality.
        slope: Data-quality trend slope per iteration (None with fewer than 3 points).
        p_value: Its p-value.
    """

    detected: bool
    reasons: list[str] = field(default_factory=list)
    model_qualities: list[float] = field(default_factory=list)
    baseline: float | None = None
    slope: float | None = None
    p_value: float | None = None


def detect_negative_feedback_loop(model_qualities: list[float], baseline: float,
                                  data_qualities: list[float] | None = None) -> FeedbackLoopReport:
    """Contract §5.7: 3 consecutive models with quality < 0.95 x baseline, or a data-quality trend with slope < 0 at
    p < 0.05 (least-squares over iterations, oldest first).

    Args:
        model_qualities: Quality of each successive model (any scale, same as ``baseline``), oldest first.
        baseline: Quality of the baseline model.
        data_qualities: Mean quality of the new training data of each iteration, oldest first.
    """
    report = FeedbackLoopReport(detected=False, model_qualities=list(model_qualities), baseline=baseline)
    run = 0
    for q in model_qualities:
        run = run + 1 if q < FEEDBACK_LOOP_RATIO * baseline else 0
        if run >= FEEDBACK_LOOP_RUN:
            report.reasons.append("low_model_run")
            break
    if data_qualities and len(data_qualities) >= 3 and len(set(data_qualities)) > 1:
        from scipy.stats import linregress

        fit = linregress(list(range(len(data_qualities))), data_qualities)
        report.slope, report.p_value = float(fit.slope), float(fit.pvalue)
        if fit.slope < 0 and fit.pvalue < TREND_P_VALUE:
            report.reasons.append("declining_data_quality")
    report.detected = bool(report.reasons)
    return report


class RLHFEngine:
    """Reward modelling and preference optimisation over registered models.

    Args:
        db: Database (default: the configured one).
        registry: ``ModelRegistry`` (default: built on ``db``).
        settings: Settings (default ``get_settings()``).
        validator: Optional ``ModelValidator``; when given, ``optimize_policy(..., validate=True)`` validates the result.
    """

    def __init__(self, db: Database | None = None, registry: Any = None, settings: Settings | None = None,
                 validator: Any = None) -> None:
        self.settings = settings or get_settings()
        self.db = db or get_database(self.settings.database_url)
        self.registry = registry if registry is not None else ModelRegistry(db=self.db, settings=self.settings)
        self.validator = validator
        self.training_blocked: FeedbackLoopReport | None = None

    def _workdir(self) -> Path:
        path = Path(self.settings.home) / "work" / "rlhf" / uuid.uuid4().hex
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def alert(self, code: L07ErrorCode, resource_id: str, message: str, details: dict[str, Any]) -> None:
        RLHF_ALERTS.labels(code=code.value).inc()
        ERRORS.labels(error_code=code.value, error_type=code.spec.severity).inc()
        level = logging.CRITICAL if code.spec.severity == "C" else logging.WARNING
        log.log(level, "%s %s: %s", code.value, code.name, message)
        async with self.db.session() as session:
            await audit(session, f"rlhf.alert.{code.value}", "model", resource_id, result="alert",
                        details={"message": message, **details}, error_code=code.value)

    async def _base_id(self, base_model_id: str | None) -> str:
        if base_model_id is not None:
            return base_model_id
        return (await self.registry.ensure_base_model()).model_id

    # --- reward model ----------------------------------------------------------------------------------------------

    async def train_reward_model(
        self,
        preference_pairs: list[PreferencePair | dict[str, Any]],
        base_model_id: str | None = None,
        config: RLHFConfig | None = None,
        name: str | None = None,
        dataset_id: str | None = None,
        dataset_version: str | None = None,
        training_job_id: str | None = None,
    ) -> RewardModel:
        """Train a pairwise reward model and register it as ``REWARD_MODEL`` (contract §5.5).

        Args:
            preference_pairs: Pairs (``PreferencePair`` or dicts); they are stored (idempotent on ``pair_id``).
            base_model_id: Registered model whose body carries the score head; default: the default base model.
            config: ``reward_training_epochs``, ``reward_learning_rate``, ``reward_validation_split``,
                ``reward_lora_rank``, ``reward_batch_size``, ``seed``.
            name: Registry name (default ``<base name>-reward``).
            dataset_id, dataset_version, training_job_id: Lineage, when the pairs come from a dataset / job.

        Returns:
            The ``RewardModel`` (``reward_model_id`` is the registry id).

        Raises:
            L07Error: E7300 too few pairs or training failed; E7110 invalid pairs; registry errors.
        """
        cfg = config or RLHFConfig()
        pairs = _coerce_pairs(preference_pairs)
        if len(pairs) < 2:
            raise L07Error(L07ErrorCode.REWARD_MODEL_TRAINING_FAILURE, "need at least 2 preference pairs",
                           pairs=len(pairs))
        base_id = await self._base_id(base_model_id)
        base = await self.registry.get_model(base_id)
        base_dir = await self.registry.local_path(base_id)
        async with self.db.session() as session:
            await RewardRepository(session, redact=redact_for_storage).add_pairs(pairs)
        work = self._workdir()
        try:
            result = await asyncio.to_thread(
                rlhf_pipeline.train_reward_model, base_dir, pairs, work / "reward_model",
                epochs=cfg.reward_training_epochs, learning_rate=cfg.reward_learning_rate,
                validation_split=cfg.reward_validation_split, batch_size=cfg.reward_batch_size,
                lora_rank=cfg.reward_lora_rank, max_length=cfg.max_length, seed=cfg.seed,
            )
            model_id = await self.register_reward_model(result, base, pairs, cfg, name,
                                                        Provenance(training_job_id, dataset_id, dataset_version))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for alert in result.alerts:
            await self.alert(L07ErrorCode(alert.code), model_id, alert.message, alert.details)
        REWARD_MODEL_ACCURACY.set(result.val_accuracy)
        artifact = await self.registry.get_model(model_id)
        return RewardModel(
            reward_model_id=model_id, base_model_id=base_id, artifact_path=artifact.artifact_path,
            checksum=artifact.checksum, train_pairs=result.train_pairs, val_pairs=result.val_pairs,
            val_pairwise_accuracy=result.val_accuracy, train_pairwise_accuracy=result.train_accuracy,
            train_val_gap=result.train_val_gap, created_at=artifact.created_at,
            metrics={"loss_curve": result.loss_curve, "wall_s": result.wall_s,
                     "alerts": [a.code for a in result.alerts]},
        )

    async def register_reward_model(self, result: Any, base: ModelArtifact, pairs: list[PreferencePair],
                                    cfg: RLHFConfig, name: str | None, provenance: Provenance) -> str:
        """Register a trained reward model (``pipelines.rlhf.common.RewardTrainResult``); returns its ``model_id``."""
        artifact = model_record(
            name or default_name(base, "reward"), ModelType.REWARD_MODEL, base, provenance,
            metrics={"training_metrics": {
                "train_pairwise_accuracy": result.train_accuracy, "val_pairwise_accuracy": result.val_accuracy,
                "train_val_gap": result.train_val_gap, "train_pairs": result.train_pairs,
                "val_pairs": result.val_pairs, "wall_s": result.wall_s,
                "final_loss": result.loss_curve[-1] if result.loss_curve else None,
                "alerts": [a.code for a in result.alerts],
            }},
            config={"rlhf": cfg.model_dump(mode="json"), "preference_data": {
                "pairs": len(pairs), "digest": pairs_digest(pairs), "pair_ids": [p.pair_id for p in pairs]}},
            tags=["rlhf", "reward_model"],
        )
        return await self.registry.register_model(artifact, source_dir=result.model_dir)

    # --- policy ------------------------------------------------------------------------------------------------------

    async def optimize_policy(
        self,
        base_model_id: str | None,
        reward_model: RewardModel | str,
        config: RLHFConfig | None = None,
        preference_pairs: list[PreferencePair | dict[str, Any]] | None = None,
        sft_model_id: str | None = None,
        name: str | None = None,
        dataset_id: str | None = None,
        dataset_version: str | None = None,
        validate: bool = False,
    ) -> ModelArtifact:
        """Optimise a LoRA policy against a reward model / preferences and register it (contract §5.5, §8 #27).

        Args:
            base_model_id: Registered base model (default: the default base model).
            reward_model: A ``RewardModel`` or the registry id of a ``REWARD_MODEL``.
            config: ``RLHFConfig`` (algorithm ``dpo`` by default).
            preference_pairs: Pairs to train on (held-out share: ``reward_validation_split``); default: every stored pair.
            sft_model_id: Registered SFT ``LORA_ADAPTER`` of the base to start from. Required for GRPO/RLOO/PPO
                unless the base is itself fine-tuned (an untrained policy earns flat rewards and never learns).
            name: Registry name (default ``<base name>-rlhf-<algorithm>``).
            dataset_id, dataset_version: Lineage when the pairs come from a dataset.
            validate: Run the ``ModelValidator`` on the result (needs ``validator``).

        Returns:
            The registered policy: ``LORA_ADAPTER`` on the base, or ``FINE_TUNED`` (merged) when started from an SFT
            adapter. Its metrics hold before/after reward and validation, KL history, alerts.

        Raises:
            L07Error: E7402 while a negative feedback loop blocks training; E7500 online method without an SFT policy;
                E7250 unknown models; E7305 reward hacking (the model is registered quarantined); E7303 training
                failure; E7020 too few pairs.
        """
        if self.training_blocked is not None:
            raise L07Error(L07ErrorCode.NEGATIVE_FEEDBACK_LOOP_DETECTED,
                           "training is blocked by a negative feedback loop; reset it after review",
                           reasons=self.training_blocked.reasons)
        cfg = config or RLHFConfig()
        base_id = await self._base_id(base_model_id)
        base = await self.registry.get_model(base_id)
        if cfg.algorithm in ONLINE_ALGORITHMS and sft_model_id is None and base.model_type == ModelType.BASE:
            raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID,
                           f"{cfg.algorithm} starts from an SFT policy: pass sft_model_id (an untrained policy earns "
                           "flat rewards and never learns)", algorithm=cfg.algorithm)
        rm_id = reward_model.reward_model_id if isinstance(reward_model, RewardModel) else reward_model
        rm = await self.registry.get_model(rm_id)
        if rm.model_type != ModelType.REWARD_MODEL:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"{rm_id} is a {rm.model_type.value}, not a "
                           "REWARD_MODEL", model_id=rm_id)
        if preference_pairs is None:
            async with self.db.session() as session:
                pairs = await RewardRepository(session).list_pairs()
        else:
            pairs = _coerce_pairs(preference_pairs)
            async with self.db.session() as session:
                await RewardRepository(session, redact=redact_for_storage).add_pairs(pairs)
        if len(pairs) < 2:
            raise L07Error(L07ErrorCode.INSUFFICIENT_EXAMPLES, "need at least 2 preference pairs", pairs=len(pairs))
        train, val = rlhf_pipeline.split_pairs(pairs, cfg.reward_validation_split, cfg.seed)
        base_dir = await self.registry.local_path(base_id)
        rm_dir = await self.registry.local_path(rm_id)
        sft_dir = await self.registry.local_path(sft_model_id) if sft_model_id else None
        work = self._workdir()
        try:
            result = await asyncio.to_thread(rlhf_pipeline.optimize_policy, base_dir, rm_dir, train, val,
                                             work / "policy", cfg, sft_adapter_dir=sft_dir)
            model_id = await self.register_policy(result, base, rm_id, sft_model_id, pairs, cfg, name,
                                                  Provenance(dataset_id=dataset_id, dataset_version=dataset_version))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return await self.after_policy(model_id, result.alerts, validate)

    async def register_policy(self, result: Any, base: ModelArtifact, reward_model_id: str, sft_model_id: str | None,
                              pairs: list[PreferencePair], cfg: RLHFConfig, name: str | None,
                              provenance: Provenance) -> str:
        """Register an optimised policy (``pipelines.rlhf.common.PolicyResult``), quarantined on E7305; returns its id."""
        merged = result.merged_dir is not None
        hacked = any(a.code == L07ErrorCode.REWARD_HACKING_DETECTED.value for a in result.alerts)
        artifact = model_record(
            name or default_name(base, f"rlhf-{cfg.algorithm}"),
            ModelType.FINE_TUNED if merged else ModelType.LORA_ADAPTER, base, provenance,
            parent_model_id=sft_model_id or base.model_id,
            metrics={"training_metrics": {
                "algorithm": result.algorithm, "steps": result.steps, "stopped_reason": result.stopped_reason,
                "reward_before": result.before["mean_reward"], "reward_after": result.after["mean_reward"],
                "reward_gain": result.reward_gain,
                "validation_accuracy_before": result.before["validation_accuracy"],
                "validation_accuracy_after": result.after["validation_accuracy"],
                "kl": result.after["kl"], "history": result.history, "wall_s": result.wall_s,
                "alerts": [{"code": a.code, "message": a.message, "step": a.step} for a in result.alerts],
                "loss_curve": result.train_metrics.get("loss_curve", []),
                # Quality of this iteration's preference data: the mean L06 score gap of its pairs (§5.7 trend).
                "data_quality": sum(p.margin for p in pairs) / len(pairs),
            }},
            config={"rlhf": cfg.model_dump(mode="json"), "reward_model_id": reward_model_id,
                    "base_model_id": base.model_id, "sft_model_id": sft_model_id,
                    "preference_data": {"pairs": len(pairs), "digest": pairs_digest(pairs)}},
            tags=["rlhf", cfg.algorithm, *(["quarantined"] if hacked else [])],
            # Quarantine (E7305): kept for inspection, marked as failing validation so no promotion accepts it.
            validation_status="FAILED" if hacked else "PENDING",
            notes="quarantined: reward rose while held-out validation fell (E7305)" if hacked else None,
        )
        return await self.registry.register_model(artifact, source_dir=result.merged_dir or result.adapter_dir)

    async def after_policy(self, model_id: str, alerts: list[Any], validate: bool) -> ModelArtifact:
        """Raise the run's guard alerts; E7305 when the policy was quarantined; optionally validate it."""
        for alert in alerts:
            await self.alert(L07ErrorCode(alert.code), model_id, alert.message, {"step": alert.step})
        if any(a.code == L07ErrorCode.REWARD_HACKING_DETECTED.value for a in alerts):
            raise L07Error(L07ErrorCode.REWARD_HACKING_DETECTED,
                           "reward rose while held-out validation fell; the policy is quarantined", model_id=model_id)
        if validate and self.validator is not None:
            await self.validator.validate_model(model_id)
        return await self.registry.get_model(model_id)

    # --- negative feedback loop ---------------------------------------------------------------------------------

    async def check_feedback_loop(self, name: str, baseline_quality: float | None = None) -> FeedbackLoopReport:
        """Check the RLHF models of track ``name`` for a negative feedback loop (contract §5.7, E7402).

        Quality of a model is its held-out ``validation_accuracy_after``; the baseline is ``baseline_quality`` or
        the first model's ``validation_accuracy_before``. Data quality per iteration is the mean score gap (margin)
        of the preference pairs it trained on.

        On detection: a critical alert (audit + metrics), the training breaker opens (``optimize_policy`` refuses
        until ``reset_feedback_breaker``) and L07Error E7402 is raised carrying the report.
        """
        models = [m for m in await self.registry.list_models(name=name) if "rlhf" in m.tags]
        models.sort(key=lambda m: m.created_at)
        tm = [m.metrics.get("training_metrics", {}) for m in models]
        qualities = [float(t["validation_accuracy_after"]) for t in tm if "validation_accuracy_after" in t]
        if not qualities:
            return FeedbackLoopReport(detected=False)
        baseline = baseline_quality if baseline_quality is not None else float(tm[0]["validation_accuracy_before"])
        data = [float(t["data_quality"]) for t in tm if "data_quality" in t]
        report = detect_negative_feedback_loop(qualities, baseline, data)
        if report.detected:
            self.training_blocked = report
            CIRCUIT_BREAKER_STATE.labels(component="training", state="open").set(1)
            CIRCUIT_BREAKER_STATE.labels(component="training", state="closed").set(0)
            await self.alert(L07ErrorCode.NEGATIVE_FEEDBACK_LOOP_DETECTED, models[-1].model_id,
                              "quality falling across RLHF iterations; training breaker open",
                              {"reasons": report.reasons, "qualities": qualities, "baseline": baseline})
            raise L07Error(L07ErrorCode.NEGATIVE_FEEDBACK_LOOP_DETECTED, "negative feedback loop detected",
                           reasons=report.reasons, qualities=qualities, baseline=baseline,
                           last_good_model_id=_last_good(models, tm, baseline))
        return report

    def reset_feedback_breaker(self) -> None:
        """Close the training breaker after a human reviewed the E7402 alert."""
        self.training_blocked = None
        CIRCUIT_BREAKER_STATE.labels(component="training", state="open").set(0)
        CIRCUIT_BREAKER_STATE.labels(component="training", state="closed").set(1)


def _last_good(models: list[ModelArtifact], tm: list[dict[str, Any]], baseline: float) -> str | None:
    """The newest model whose quality reached 0.95 x baseline (the revert target), if any."""
    for m, t in zip(reversed(models), reversed(tm), strict=True):
        if float(t.get("validation_accuracy_after", -1)) >= FEEDBACK_LOOP_RATIO * baseline:
            return m.model_id
    return None
