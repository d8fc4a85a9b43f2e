"""Per-app state: settings, limits, and the services of one ``LearningService.build()`` (the composition root).

Building the services connects nothing: the database is opened by the first request that needs it, so a test can
hand in its own ``Database`` (httpx's ASGI transport runs no lifespan events).
"""

from __future__ import annotations

from typing import Any

from ..services.dataset_curator import DatasetCurator
from ..services.example_quality_filter import ExampleQualityFilter
from ..services.fine_tuning_engine import FineTuningEngine
from ..services.learning_service import LearningService
from ..services.model_registry import ModelRegistry
from ..services.model_validator import ModelValidator
from ..services.openai_compat.service import OpenAIFineTuning
from ..services.queries import Queries
from ..services.release.deploy import Operations
from ..settings import Settings
from .auth import AuthService
from .config import ApiConfig
from .ratelimit import RateLimiter


class AppContext:
    """What every request of one app shares.

    Args:
        service: The composed services; its database is the one every request uses.
        config: REST limits and listener.
        owns_db: Dispose the service's database when the app shuts down (True when the app created it).
    """

    def __init__(self, service: LearningService, config: ApiConfig, owns_db: bool = False) -> None:
        self.service = service
        self.settings: Settings = service.settings
        self.db: Any = service.db
        self.config = config
        self.owns_db = owns_db
        self.auth = AuthService(service.access)
        self.operations = Operations(service.db, service.validator, service.registry)
        self._fine_tuning: OpenAIFineTuning | None = None
        self.limiter = (
            RateLimiter(config.rate_limit_events_per_s, config.rate_limit_burst)
            if config.rate_limit_events_per_s is not None
            else None
        )

    @property
    def fine_tuning(self) -> OpenAIFineTuning:
        """The OpenAI-compatible files, jobs and models (``/v1``), built on first use."""
        if self._fine_tuning is None:
            self._fine_tuning = OpenAIFineTuning(self.service)
        return self._fine_tuning

    @property
    def registry(self) -> ModelRegistry:
        return self.service.registry

    @property
    def quality_filter(self) -> ExampleQualityFilter:
        """One filter per app, so its dedup index and diversity pool persist across requests."""
        return self.service.filter

    @property
    def curator(self) -> DatasetCurator:
        return self.service.curator

    @property
    def engine(self) -> FineTuningEngine:
        return self.service.sft_engine

    @property
    def validator(self) -> ModelValidator:
        return self.service.validator

    @property
    def queries(self) -> Queries:
        return self.service.queries

    async def close(self) -> None:
        """Stop background operations (each is marked FAILED, interrupted) and release what the app opened."""
        await self.operations.close()
        if self.owns_db:
            await self.db.dispose()
