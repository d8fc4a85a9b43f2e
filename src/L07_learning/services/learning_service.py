"""The orchestrator and the composition root: one object that runs the whole loop, from an event to a released model.

``LearningService.build(settings, db)`` constructs the database and every engine with its collaborators; the REST API,
the CLI and the demo all start from it. ``LearningService()`` still works on the embedded default (SQLite in
``~/.l07``): what it was not given is built on ``initialize()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from ..events.outbox_relay import OutboxRelay
from ..events.redis_stream import RedisStreamSource
from ..events.sinks import sinks_from_settings
from ..events.sources import FileSource
from ..models.dataset import Dataset
from ..models.error_codes import L07Error, L07ErrorCode
from ..models.model_artifact import ModelStage
from ..models.training_example import TrainingExample
from ..models.training_job import JobConfig, TrainingJob
from ..models.validation import ValidationResult
from ..settings import Settings, get_settings
from ..store.db import Database
from .access import AccessService
from .dataset_curator import DatasetCurator
from .distillation_engine import DistillationEngine
from .example_quality_filter import Decision, ExampleQualityFilter
from .filtering.redaction import redact_raw
from .fine_tuning_engine import FineTuningEngine
from .ingestion.pipeline import IngestionPipeline, ingest_and_filter, run_source
from .model_registry import ModelRegistry
from .model_validator import ModelValidator
from .pattern_extractor import PatternExtractor
from .queries import Queries
from .release import deploy
from .release.gateway import register_with_gateway
from .rlhf_engine import RLHFEngine
from .strategy_optimizer import StrategyOptimizer
from .training_data_extractor import TrainingDataExtractor

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

    def __init__(self, extractor: TrainingDataExtractor | None = None,
                 filter: ExampleQualityFilter | None = None,  # noqa: A002 - the brief's name
                 curator: DatasetCurator | None = None, registry: ModelRegistry | None = None,
                 sft_engine: FineTuningEngine | None = None, validator: ModelValidator | None = None,
                 rlhf_engine: RLHFEngine | None = None, *,
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
        self.distillation_engine: DistillationEngine | None = None
        self.patterns: PatternExtractor | None = None
        self.strategies: StrategyOptimizer | None = None
        self.ingestion: IngestionPipeline | None = None
        self.queries: Queries | None = None
        self.access: AccessService | None = None
        self.relay: OutboxRelay | None = None
        self._relay_stop: asyncio.Event | None = None
        self._relay_task: asyncio.Task | None = None
        self._initialized = False

    @classmethod
    def build(cls, settings: Settings | None = None, db: Database | None = None) -> "LearningService":
        """The composition root: the database (from ``settings.database_url`` unless given) and every engine, each
        handed the collaborators it uses. Nothing connects yet; the first query or ``initialize()`` does.
        """
        service = cls(settings=settings, db=db)
        service._compose()
        return service

    def _compose(self) -> None:
        s = self.settings
        if self.db is None:
            self.db = Database(s.database_url or "", auto_migrate=bool(s.auto_migrate))
        db = self.db
        self.extractor = self.extractor or TrainingDataExtractor(db=db, settings=s)
        self.filter = self.filter or ExampleQualityFilter(db=db, settings=s)
        self.curator = self.curator or DatasetCurator(db=db, settings=s)
        self.registry = self.registry or ModelRegistry(db=db, settings=s)
        self.sft_engine = self.sft_engine or FineTuningEngine(db=db, registry=self.registry, curator=self.curator, settings=s)
        self.validator = self.validator or ModelValidator(db=db, registry=self.registry, curator=self.curator, settings=s)
        self.rlhf_engine = self.rlhf_engine or RLHFEngine(db=db, registry=self.registry, settings=s, validator=self.validator)
        self.distillation_engine = self.distillation_engine or DistillationEngine(
            db=db, registry=self.registry, curator=self.curator, settings=s)
        self.patterns = self.patterns or PatternExtractor(db=db, settings=s)
        self.strategies = self.strategies or StrategyOptimizer(db=db, settings=s)
        self.ingestion = self.ingestion or IngestionPipeline(db, s)
        self.queries = self.queries or Queries(db)
        self.access = self.access or AccessService(db)

    # ------------------------------------------------------------------------------------------------ lifecycle
    async def initialize(self, start_relay: bool = True) -> None:
        """Open the database (SQLite upgrades itself), build missing components, start the outbox relay, and
        re-register STAGING/PRODUCTION models with L04 when it runs in this process."""
        if self._initialized:
            return
        self._compose()
        await self.db.connect()
        self.relay = OutboxRelay(self.db, sinks_from_settings(self.settings))
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
        result, accepted = await ingest_and_filter(events, transport, db=self.db, settings=self.settings,
                                                   quality_filter=self.filter)
        out = result.summary.to_dict()
        out["examples_accepted"] = len(accepted)
        return out

    async def ingest_path(self, path: str | Path, batch_size: int = 1000) -> dict[str, Any]:
        """Ingest CloudEvents from a JSONL file or a folder of them, each batch then through the quality filter.

        Returns:
            The ingestion summary plus ``examples_accepted``.
        """
        await self._ensure()
        return await self._run_filtered(FileSource(path, batch_size=batch_size))

    @staticmethod
    def stream_source(redis_url: str, stream: str, group: str, consumer: str | None = None,
                      **options: Any) -> RedisStreamSource:
        """A Redis Streams consumer-group source for ``consume`` (``options``: ``RedisStreamSource``'s keywords);
        its dead letters are stored redacted."""
        options.setdefault("redact", redact_raw)
        return RedisStreamSource(redis_url, stream, group, consumer, **options)

    async def consume(self, source: RedisStreamSource) -> dict[str, Any]:
        """Ingest from ``source`` until it stops, each batch through the quality filter, acknowledging each batch
        after its commit. Returns the ingestion summary plus ``examples_accepted``."""
        await self._ensure()
        return await self._run_filtered(source)

    async def _run_filtered(self, source: Any) -> dict[str, Any]:
        filtered = _FilteredIngestion(self)
        out = (await run_source(source, filtered)).to_dict()  # type: ignore[arg-type]
        out["examples_accepted"] = filtered.accepted
        return out

    async def filter_examples(self, examples: list[TrainingExample]) -> list[TrainingExample]:
        """Run the quality filter; returns only ACCEPTed examples, in input order."""
        await self._ensure()
        return await self.filter.filter(list(examples))

    async def filter_pending(self, batch_size: int = 1000) -> dict[str, int]:
        """Drain the stored PENDING backlog (examples ingested before every door filtered) through the quality
        filter, oldest first, ``batch_size`` at a time.

        Returns:
            Decisions counted by ``ACCEPT``, ``REVIEW``, ``REJECT`` and ``QUARANTINE``, plus ``batches``.
        """
        await self._ensure()
        counts: Counter[str] = Counter({d.value: 0 for d in Decision})
        seen: set[str] = set()
        batches = 0
        while True:
            batch = await self.queries.examples(status="PENDING", limit=batch_size)
            if not batch or {e.example_id for e in batch} <= seen:
                break  # nothing left, or only examples the filter could not decide (they stay PENDING)
            seen.update(e.example_id for e in batch)
            report = await self.filter.filter_detailed(batch)
            counts.update(d.decision.value for d in report.decisions)
            batches += 1
        return {**counts, "batches": batches}

    async def create_training_dataset(self, name: str, examples: list[TrainingExample] | None = None,
                                      min_examples: int = 1000, split_ratios: dict[str, float] | None = None) -> Dataset:
        """Build a versioned dataset from ``examples``, or from the stored ACCEPTED pool when none are given.

        Below ``min_examples`` the dataset is still created, flagged ``below_minimum`` and E7020 is logged as a
        warning (contract §4.3); zero examples raise E7020.
        """
        await self._ensure()
        if examples is None:
            examples = await self.queries.examples(status="ACCEPTED", limit=MAX_DATASET_SIZE)
        if not examples:
            raise L07Error(L07ErrorCode.INSUFFICIENT_EXAMPLES, f"no examples to build dataset {name!r}", name=name)
        kwargs: dict[str, Any] = {"min_examples": min_examples}
        if split_ratios is not None:
            kwargs["split_ratios"] = split_ratios
        # The curator flags `below_minimum` and logs E7020 as a warning when the dataset is small (contract §4.3).
        dataset = await self.curator.create_dataset(name, list(examples), **kwargs)
        return dataset

    # -------------------------------------------------------------------------------------------------- training
    async def train_model(self, dataset_id: str, config: JobConfig | dict[str, Any] | None = None,
                          base_model_id: str | None = None) -> TrainingJob:
        """Submit an SFT job (returns at once, PENDING). Without ``base_model_id`` the default base is used; without a
        ``JobConfig`` the measured recipe (``jobs/presets.select_recipe``) under the dict's fields."""
        await self._ensure()
        if base_model_id is None:
            base_model_id = (await self.registry.ensure_base_model()).model_id
        return await self.sft_engine.start_training(dataset_id, base_model_id, config)

    # ------------------------------------------------------------------------------------------------ deployment
    async def deploy_model(self, model_id: str) -> ValidationResult:
        """Validate, then DEVELOPMENT -> STAGING on DEPLOY with ``model_ready_for_deployment`` in the same
        transaction, flushed through the outbox at once; REJECT moves the model to REJECTED; REVIEW leaves it for a
        reviewer. The one release path (``services/release/deploy.py``), shared with the CLI and REST.

        Returns:
            The validation result (the contract's ``None`` plus the report a caller needs).

        Raises:
            L07Error: E7203 when validation rejects the model (failing stages in ``details``).
        """
        await self._ensure()
        return await deploy.deploy_model(model_id, validator=self.validator, registry=self.registry, relay=self.relay)

    async def _reregister_with_gateway(self) -> None:
        for stage in (ModelStage.STAGING, ModelStage.PRODUCTION):
            for m in await self.registry.list_models(status=stage.value):
                register_with_gateway(m, int(m.config.get("max_seq_length", 2048)))


class _FilteredIngestion:
    """What ``run_source`` drives for ``ingest_path`` and ``consume``: every batch goes through ``ingest_and_filter``,
    the path ``process_events`` and ``POST /api/v1/events`` take, so no door leaves examples PENDING."""

    def __init__(self, service: LearningService) -> None:
        self.service = service
        self.accepted = 0

    async def ingest(self, raw_events: Any, transport: str, **_: Any) -> Any:
        s = self.service
        result, accepted = await ingest_and_filter(raw_events, transport, db=s.db, settings=s.settings,
                                                   quality_filter=s.filter)
        self.accepted += len(accepted)
        return result
