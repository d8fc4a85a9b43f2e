"""The RLHF job kind, worker side: preference pairs from the dataset for ``pipelines/rlhf_pipeline.py`` and the
registration of what the child trained through ``RLHFEngine`` (public API: ``services/rlhf_engine.py``).
"""

from __future__ import annotations

import json
from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.reward_signal import PreferencePair, RLHFConfig
from ...models.training_example import TrainingExample
from ...models.training_job import JobConfig, TrainingJob
from ...pipelines.rlhf.common import GuardAlert, PolicyResult, RewardTrainResult
from ...store.repositories.rewards import RewardRepository
from ..filtering.redaction import redact_for_storage
from ..ingestion.rewards import answer_scores, build_preference_pairs
from ..rlhf_engine import RLHFEngine
from .context import RunnerContext, job_config
from .register import Provenance


def rlhf_config_of(config: JobConfig) -> RLHFConfig:
    """The RLHF settings of a job: ``JobConfig.extra["rlhf"]`` (learning rate and seed default from the job)."""
    raw = dict(config.extra.get("rlhf") or {})
    raw.setdefault("seed", config.seed)
    return RLHFConfig.model_validate(raw)


def preference_pairs(examples: list[TrainingExample], cfg: RLHFConfig) -> list[PreferencePair]:
    """Pairs of answers to one goal, better over worse by the job's ``reward_mode`` (``answer_scores``): L06's q in
    ``pipeline`` mode, spec Q2's quality/latency/cost composite in ``multi_objective`` mode; margins on that scale.

    Raises:
        L07Error: E7110 in ``multi_objective`` mode for an example without latency / cost metrics.
    """
    scores = answer_scores(examples, cfg.reward_mode, cfg.reward_latency_target_ms, cfg.reward_token_budget)
    return build_preference_pairs([e.model_copy(update={"quality_score": scores[e.example_id]}) for e in examples])


async def stored_pairs(examples: list[TrainingExample], ctx: RunnerContext) -> list[PreferencePair]:
    """The pairs stored with ``examples`` when they were imported (each accepted preferred answer and the
    non-preferred one of its line)."""
    async with ctx.db.session() as session:
        return await RewardRepository(session).pairs_for_examples([e.example_id for e in examples])


async def prepare(job: TrainingJob, config: JobConfig, ctx: RunnerContext) -> dict[str, Any]:
    """Job spec: verified base / SFT / reward model folders and the preference pairs of the dataset version.

    ``config.extra``: ``rlhf`` (RLHFConfig dict), optional ``reward_model_id`` (else the job trains one first),
    ``sft_model_id`` and ``preference_pairs``. Pairs come from the train split, held-out pairs from the val and test
    splits: built by the §5.5 rules (ranked by ``rlhf.reward_mode``), or with ``preference_pairs: "stored"`` the
    pairs imported with those examples.

    Raises:
        L07Error: E7020 when the dataset yields fewer than 2 training pairs or no held-out pair.
    """
    cfg = rlhf_config_of(config)
    dataset = await ctx.curator.get_dataset(job.dataset_id, job.dataset_version)
    held_out = dataset.split_examples("val") + dataset.split_examples("test")
    if config.extra.get("preference_pairs") == "stored":
        train = await stored_pairs(dataset.split_examples("train"), ctx)
        val = await stored_pairs(held_out, ctx)
    else:
        train = preference_pairs(dataset.split_examples("train"), cfg)
        val = preference_pairs(held_out, cfg)
    if len(train) < 2 or not val:
        raise L07Error(L07ErrorCode.INSUFFICIENT_EXAMPLES,
                       f"dataset {job.dataset_id} yields {len(train)} training and {len(val)} held-out preference pairs",
                       train_pairs=len(train), val_pairs=len(val))
    extra = config.extra
    reward_id = extra.get("reward_model_id")
    sft_id = extra.get("sft_model_id")
    return {
        "base_model_dir": str(await ctx.registry.local_path(job.base_model_id)),
        "reward_model_dir": str(await ctx.registry.local_path(reward_id)) if reward_id else None,
        "sft_adapter_dir": str(await ctx.registry.local_path(sft_id)) if sft_id else None,
        "train_pairs": [p.model_dump(mode="json") for p in train],
        "val_pairs": [p.model_dump(mode="json") for p in val],
        "rlhf": cfg.model_dump(mode="json"),
        "output_dir": str(ctx.workdir / "rlhf"),
    }


async def register(job: TrainingJob, result: dict[str, Any], ctx: RunnerContext) -> str | None:
    """Register the job's reward model (when it trained one) and policy, with lineage to the job and dataset."""
    config = job_config(job)
    cfg = rlhf_config_of(config)
    engine = RLHFEngine(db=ctx.db, registry=ctx.registry, settings=ctx.settings)
    base = await ctx.registry.get_model(job.base_model_id)
    spec = json.loads((ctx.workdir / "spec.json").read_text())
    pairs = [PreferencePair.model_validate(p) for p in spec["train_pairs"] + spec["val_pairs"]]
    async with ctx.db.session() as session:
        await RewardRepository(session, redact=redact_for_storage).add_pairs(pairs)
    provenance = Provenance.of(job)
    reward_id = config.extra.get("reward_model_id")
    if result.get("reward_model"):
        rm = result["reward_model"]
        rm_result = RewardTrainResult(**{**rm, "alerts": [GuardAlert(**a) for a in rm["alerts"]]})
        reward_id = await engine.register_reward_model(rm_result, base, pairs, cfg, None, provenance)
        for alert in rm_result.alerts:
            await engine.alert(L07ErrorCode(alert.code), reward_id, alert.message, alert.details)
    policy = result["policy"]
    fields = {k: v for k, v in policy.items() if k != "reward_gain"}  # a derived property, not a field
    pr = PolicyResult(**{**fields, "alerts": [GuardAlert(**a) for a in policy["alerts"]]})
    model_id = await engine.register_policy(pr, base, reward_id, config.extra.get("sft_model_id"), pairs, cfg,
                                            config.model_name, provenance)
    await engine.after_policy(model_id, pr.alerts, validate=False)
    return model_id
