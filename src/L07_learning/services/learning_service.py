"""The orchestrator: one object that runs the whole loop, from an event to a released model.

Every component is optional; a missing one is built from settings on ``initialize()``, so ``LearningService()``
works on the embedded default (SQLite in ``~/.l07``). The CLI, the REST API and the demo all call these methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..events.outbox_relay import OutboxRelay
from ..events.publisher import EventPublisher
from ..events.sinks import sinks_from_settings
from ..models.dataset import Dataset
from ..models.error_codes import L07Error, L07ErrorCode
from ..models.model_artifact import ModelStage, ModelType
from ..models.training_example import TrainingExample
from ..models.training_job import JobConfig, TrainingJob
from ..models.validation import Recommendation, ValidationResult
from ..settings import Settings, get_settings
from ..store.db import Database, get_database
from .release.gateway import CANARY_CONFIG, register_with_gateway

log = logging.getLogger(__name__)

# Contract §4.3 `maximum_dataset_size`; the curator downsamples above it (E7024).
MAX_DATASET_SIZE = 100_000


class LearningService:
    """Main entry point of L07 (contract §0).

    Args:
        extractor: ``TrainingDataExtractor``.
        filter: ``ExampleQualityFilter``.
        curator: ``DatasetCurator``.
        registry: ``ModelRegistry``.
        sft_engine: ``FineTuningEngine``.
        validator: ``ModelValidator``.
        rlhf_engine: ``RLHFEngine``, kept for callers that pass one (RLHF jobs also run through the job runner).
        settings: Settings (default ``get_settings()``).
        db: Database (default: the settings' URL).
    """

    def __init__(self, extractor: Any = None, filter: Any = None, curator: Any = None, registry: Any = None,  # noqa: A002 - the brief's name
                 sft_engine: Any = None, validator: Any = None, rlhf_engine: Any = None, *,
                 settings: Settings | None = None, db: Database | None = None) -> None:
        self.settings = settings or get_settings()
        self.db = db
        self.extractor = extractor
        self.filter = filter
        self.curator = curator
        self.registry = registry
        self.sft_engine = sft_engine
        self.validator = validator
        self.rlhf_engine = rlhf_engine
        self.publisher = EventPublisher()
        self.relay: OutboxRelay | None = None
        self._relay_stop: asyncio.Event | None = None
        self._relay_task: asyncio.Task | None = None
        self._initialized = False

    # ------------------------------------------------------------------------------------------------ lifecycle
    async def initialize(self, start_relay: bool = True) -> None:
        """Open the database (SQLite upgrades itself), build missing components, start the outbox relay, and
        re-register STAGING/PRODUCTION models with L04 when it runs in this process."""
        if self._initialized:
            return
        if self.db is None:
            self.db = get_database(self.settings.database_url)
        await self.db.connect()
        from .dataset_curator import DatasetCurator
        from .example_quality_filter import ExampleQualityFilter
        from .fine_tuning_engine import FineTuningEngine
        from .model_registry import ModelRegistry
        from .model_validator import ModelValidator
        from .training_data_extractor import TrainingDataExtractor

        s, db = self.settings, self.db
        self.extractor = self.extractor or TrainingDataExtractor(db=db, settings=s)
        self.filter = self.filter or ExampleQualityFilter(db=db, settings=s)
        self.curator = self.curator or DatasetCurator(db=db, settings=s)
        self.registry = self.registry or ModelRegistry(db=db, settings=s)
        self.sft_engine = self.sft_engine or FineTuningEngine(db=db, registry=self.registry, curator=self.curator, settings=s)
        self.validator = self.validator or ModelValidator(db=db, registry=self.registry, curator=self.curator, settings=s)
        self.relay = OutboxRelay(db, sinks_from_settings(s))
        if start_relay:
            self._relay_stop = asyncio.Event()
            self._relay_task = asyncio.create_task(self.relay.serve(self._relay_stop, poll_s=1.0))
        await self._reregister_with_gateway()
        self._initialized = True

    async def cleanup(self) -> None:
        """Stop the relay and the embedded worker, close connections; finishes within 2 seconds.

        A job the embedded worker was running is left to be resumed from its checkpoint by the next worker.
        """
        if self.sft_engine is not None and hasattr(self.sft_engine, "stop_background_worker"):
            await self.sft_engine.stop_background_worker(timeout=0.8)
        if self._relay_task is not None and self._relay_stop is not None:
            self._relay_stop.set()
            try:
                await asyncio.wait_for(self._relay_task, timeout=0.5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._relay_task.cancel()
        # Each step is bounded so cleanup() stays within its 2 s budget even when a broker or the database hangs.
        with contextlib.suppress(asyncio.TimeoutError):
            if self.relay is not None:
                await asyncio.wait_for(self.relay.close(), timeout=0.3)
        with contextlib.suppress(asyncio.TimeoutError):
            if self.db is not None:
                await asyncio.wait_for(self.db.dispose(), timeout=0.3)
        self._initialized = False

    async def _ensure(self) -> None:
        if not self._initialized:
            await self.initialize()

    # ------------------------------------------------------------------------------------------------- data path
    async def process_event(self, event: Any) -> None:
        """Extract, filter and persist what one event yields (an example once its join partner is there)."""
        await self.process_events([event])

    async def process_events(self, events: list[Any], transport: str = "inprocess") -> dict[str, Any]:
        """Ingest a batch through the single ingestion path, then filter the examples it produced.

        Returns:
            The ingestion summary plus ``examples_accepted``.
        """
        await self._ensure()
        from .ingestion.pipeline import ingest_and_filter

        result, accepted = await ingest_and_filter(events, transport, db=self.db, settings=self.settings,
                                                   quality_filter=self.filter)
        out = result.summary.to_dict()
        out["examples_accepted"] = len(accepted)
        return out

    async def filter_examples(self, examples: list[TrainingExample]) -> list[TrainingExample]:
        """Run the quality filter; returns only ACCEPTed examples, in input order."""
        await self._ensure()
        return await self.filter.filter(list(examples))

    async def create_training_dataset(self, name: str, examples: list[TrainingExample] | None = None,
                                      min_examples: int = 1000, split_ratios: dict[str, float] | None = None) -> Dataset:
        """Build a versioned dataset from ``examples``, or from the stored ACCEPTED pool when none are given.

        Below ``min_examples`` the dataset is still created, flagged ``below_minimum`` and E7020 is logged as a
        warning (contract §4.3); zero examples raise E7020.
        """
        await self._ensure()
        if examples is None:
            from ..store.repositories.examples import ExampleRepository

            async with self.db.session() as s:
                examples = await ExampleRepository(s).list(status="ACCEPTED", limit=MAX_DATASET_SIZE)
        if not examples:
            raise L07Error(L07ErrorCode.INSUFFICIENT_EXAMPLES, f"no examples to build dataset {name!r}", name=name)
        kwargs: dict[str, Any] = {"min_examples": min_examples}
        if split_ratios is not None:
            kwargs["split_ratios"] = split_ratios
        # The curator flags `below_minimum` and logs E7020 as a warning when the dataset is small (contract §4.3).
        dataset = await self.curator.create_dataset(name, list(examples), **kwargs)
        return dataset

    # -------------------------------------------------------------------------------------------------- training
    async def train_model(self, dataset_id: str, config: JobConfig | None = None,
                          base_model_id: str | None = None) -> TrainingJob:
        """Submit an SFT job (returns at once, PENDING). Without ``base_model_id`` the default base is used."""
        await self._ensure()
        if base_model_id is None:
            base_model_id = (await self.registry.ensure_base_model()).model_id
        return await self.sft_engine.start_training(dataset_id, base_model_id, config or JobConfig())

    # ------------------------------------------------------------------------------------------------ deployment
    async def deploy_model(self, model_id: str) -> ValidationResult:
        """Validate, then DEVELOPMENT -> STAGING on DEPLOY with ``model_ready_for_deployment`` in the same
        transaction; REJECT moves the model to REJECTED; REVIEW leaves it for a reviewer.

        Returns:
            The validation result (the contract's ``None`` plus the report a caller needs).

        Raises:
            L07Error: E7203 when validation rejects the model (failing stages in ``details``).
        """
        await self._ensure()
        result = await self.validator.validate_model(model_id)
        model = await self.registry.get_model(model_id)
        if result.recommendation is Recommendation.REJECT:
            failing = [k for k, v in result.stages.items() if v.outcome.value == "FAIL"]
            await self.registry.promote_model(model_id, ModelStage.REJECTED.value, actor="l07-validator",
                                              events=[("learning.model_deployment_failed", {
                                                  "model_id": model_id, "version": model.version,
                                                  "stage": model.stage.value,
                                                  "error_code": L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED.value,
                                                  "error_message": f"validation rejected the model: {', '.join(failing)}",
                                                  "rolled_back_to": None, "failed_at": _now_iso()})])
            raise L07Error(L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED,
                           f"validation rejected model {model_id}; failing stages: {', '.join(failing)}",
                           model_id=model_id, failing_stages=failing, validation_id=result.validation_id)
        if result.recommendation is Recommendation.REVIEW:
            log.warning("model needs a reviewer before STAGING", extra={"model_id": model_id})
            return result
        release = await self._release_event(model_id, result)
        await self.registry.promote_model(model_id, ModelStage.STAGING.value, actor="l07-validator",
                                          events=[("learning.model_ready_for_deployment", release)])
        staged = await self.registry.get_model(model_id)
        register_with_gateway(staged, int(staged.config.get("max_seq_length", 2048)))
        if self.relay is not None:
            await self.relay.run_once()
        return result

    async def _release_event(self, model_id: str, result: ValidationResult) -> dict[str, Any]:
        model = await self.registry.get_model(model_id, verify=True)
        base_name = model.base_model_name
        if model.model_type is ModelType.LORA_ADAPTER and model.parent_model_id and not base_name:
            base_name = (await self.registry.get_model(model.parent_model_id)).name
        bench = result.stages.get("benchmark")
        lat = result.stages.get("latency")
        return {
            "model_id": model.model_id,
            "model_type": model.model_type.value,
            "base_model": base_name,
            "artifact_url": _as_url(model.artifact_path),
            "artifact_checksum": model.checksum,
            "artifact_signature": model.signature,
            "signing_key_version": model.signing_key_version,
            "validation_status": "APPROVED" if result.passed else "CONDITIONAL",
            "validation_id": result.validation_id,
            "canary_config": dict(CANARY_CONFIG),
            "performance_metrics": {
                "accuracy": bench.metrics.get("candidate_accuracy") if bench else None,
                "latency_p99_ms": (lat.metrics.get("candidate") or {}).get("p99_ms") if lat else None,
                "improvement_vs_baseline": bench.metrics.get("relative_accuracy_change") if bench else None,
            },
            "training_lineage": {
                "training_job_id": model.training_job_id, "dataset_id": model.dataset_id,
                "dataset_version": model.dataset_version, "base_model": base_name,
                "parent_model_id": model.parent_model_id,
            },
        }

    async def _reregister_with_gateway(self) -> None:
        for stage in (ModelStage.STAGING, ModelStage.PRODUCTION):
            for m in await self.registry.list_models(status=stage.value):
                register_with_gateway(m, int(m.config.get("max_seq_length", 2048)))


def _as_url(path: str) -> str:
    return path if "://" in path else f"file://{path}"


def _now_iso() -> str:
    from ..models._base import utcnow

    return utcnow().isoformat()
