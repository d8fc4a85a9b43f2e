"""Real models for validation tests: a tiny model that answers text, a damaged copy of it, and a golden suite.

The golden suite is the base model's own greedy answers, recorded before a release (as a team records the current
model's answers), so the same weights pass every case and damaged weights fail the regression stage.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from L07_learning.models import ModelArtifact, ModelType
from L07_learning.store.db import Database
from L07_learning.store.repositories.golden import GoldenCaseRepository

# The tiny model never emits an end-of-turn token, so every answer runs to the cap: the golden suite must be recorded
# with the cap the validator generates with.
GOLDEN_MAX_NEW_TOKENS = 12
# Damage that flips the tiny model's greedy answers, so the validator REJECTs on the regression stage.
DAMAGE_SCALE = 2.0


def chatty(src: Path, dst: Path) -> Path:
    """The tiny random model answers only whitespace; suppressing it (in its generation config) makes it answer text."""
    from transformers import GenerationConfig

    shutil.copytree(src, dst)
    config = GenerationConfig.from_pretrained(str(dst)) if (dst / "generation_config.json").exists() else GenerationConfig()
    config.suppress_tokens = [0, 1, 2, 198, 216, 260, 284]
    config.save_pretrained(str(dst))
    return dst


def chatty_tiny_model(tmp_path: Path) -> Path:
    """A freshly built tiny model (seed 0) that answers text, under ``tmp_path``."""
    from L07_learning.pipelines.base_model import build_tiny_model

    return chatty(build_tiny_model(tmp_path / "tiny", seed=0), tmp_path / "chatty")


def damage(src: Path, dst: Path, scale: float = DAMAGE_SCALE) -> Path:
    """A copy of ``src`` with Gaussian noise of ``scale`` x each tensor's spread added to every weight."""
    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(src, dst)
    model = AutoModelForCausalLM.from_pretrained(str(src))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * (p.std() + 1e-6))
    model.save_pretrained(str(dst))
    return dst


async def record_golden_suite(db: Database, model_dir: Path, *suites: str, cases: int = 6,
                              max_new_tokens: int = GOLDEN_MAX_NEW_TOKENS) -> None:
    """Store ``model_dir``'s greedy answers to ``cases`` prompts as the golden suite of each of ``suites``."""
    from L07_learning.pipelines.evaluation_pipeline import EvalCase, evaluate_model

    prompts = [EvalCase(case_id=f"g{i}", messages=[{"role": "user", "content": f"Which tool handles request {i}?"}],
                        expected="") for i in range(cases)]
    recorded = evaluate_model(model_dir, prompts, max_new_tokens=max_new_tokens, latency_requests=0, latency_warmup=0,
                              safety_prompts=0)
    async with db.session() as s:
        for suite in suites:
            await GoldenCaseRepository(s).add_many(suite, [
                {"case_id": f"{suite}-{c.case_id}", "messages": c.messages, "expected": r.got}
                for c, r in zip(prompts, recorded.cases)])


async def register_release_candidates(registry, base_dir: Path, tmp_path: Path, prefix: str, *,  # type: ignore[no-untyped-def]
                                      intact_has_baseline: bool = True) -> tuple[str, str, str]:
    """Register ``base_dir`` as a base model, an intact candidate (the same weights) and a damaged fine-tune of the
    base, each candidate with a golden suite of the base's answers. Returns (base id, intact id, damaged id).

    Without ``intact_has_baseline`` the intact candidate is a first release (no parent, so nothing to compare with):
    the gates that compare the p99 latencies of two runs of the same weights are noise at the tiny model's
    millisecond scale, so only a candidate without a baseline gets DEPLOY every time at the default gates.
    """
    base_id = await registry.register_model(ModelArtifact(name=f"{prefix}-base", model_type=ModelType.BASE),
                                            source_dir=str(base_dir))
    intact_id = await registry.register_model(
        ModelArtifact(name=f"{prefix}-intact", model_type=ModelType.FINE_TUNED,
                      parent_model_id=base_id if intact_has_baseline else None),
        source_dir=str(base_dir))
    damaged_id = await registry.register_model(
        ModelArtifact(name=f"{prefix}-damaged", model_type=ModelType.FINE_TUNED, parent_model_id=base_id),
        source_dir=str(damage(base_dir, tmp_path / f"{prefix}-damaged")))
    await record_golden_suite(registry.db, base_dir, f"{prefix}-intact", f"{prefix}-damaged")
    return base_id, intact_id, damaged_id
