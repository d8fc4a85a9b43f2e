"""Per-app state: settings, database, limits, and the services built lazily from them.

Services are created on first use, not at start-up, so that the app starts without importing training libraries
and a test can hand in its own ``Database`` (httpx's ASGI transport runs no lifespan events).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..services.auth import AuthService
from ..settings import Settings
from ..store.db import Database
from .config import ApiConfig
from .ratelimit import RateLimiter

if TYPE_CHECKING:  # imported lazily at run time: these modules pull in heavier dependencies
    from ..services.dataset_curator import DatasetCurator
    from ..services.fine_tuning_engine import FineTuningEngine
    from ..services.model_registry import ModelRegistry
    from ..services.model_validator import ModelValidator


class AppContext:
    """What every request of one app shares.

    Args:
        settings: Layer settings.
        db: The database every service of this app uses.
        config: REST limits and listener.
        owns_db: Dispose ``db`` when the app shuts down (True when the app created it).
    """

    def __init__(self, settings: Settings, db: Database, config: ApiConfig, owns_db: bool = False) -> None:
        self.settings = settings
        self.db = db
        self.config = config
        self.owns_db = owns_db
        self.auth = AuthService(db=db, settings=settings)
        self.limiter = (
            RateLimiter(config.rate_limit_events_per_s, config.rate_limit_burst)
            if config.rate_limit_events_per_s is not None
            else None
        )
        self._services: dict[str, Any] = {}

    @property
    def registry(self) -> "ModelRegistry":
        if "registry" not in self._services:
            from ..services.model_registry import ModelRegistry

            self._services["registry"] = ModelRegistry(db=self.db, settings=self.settings)
        return self._services["registry"]

    @property
    def quality_filter(self) -> Any:
        """One filter per app, so its dedup index and diversity pool persist across requests."""
        if "filter" not in self._services:
            from ..services.example_quality_filter import ExampleQualityFilter

            self._services["filter"] = ExampleQualityFilter(db=self.db, settings=self.settings)
        return self._services["filter"]

    @property
    def curator(self) -> "DatasetCurator":
        if "curator" not in self._services:
            from ..services.dataset_curator import DatasetCurator

            self._services["curator"] = DatasetCurator(db=self.db, settings=self.settings)
        return self._services["curator"]

    @property
    def engine(self) -> "FineTuningEngine":
        if "engine" not in self._services:
            from ..services.fine_tuning_engine import FineTuningEngine

            self._services["engine"] = FineTuningEngine(
                db=self.db, registry=self.registry, curator=self.curator, settings=self.settings
            )
        return self._services["engine"]

    @property
    def validator(self) -> "ModelValidator":
        if "validator" not in self._services:
            from ..services.model_validator import ModelValidator

            self._services["validator"] = ModelValidator(
                db=self.db, registry=self.registry, curator=self.curator, settings=self.settings
            )
        return self._services["validator"]

    async def close(self) -> None:
        """Release what the app opened."""
        if self.owns_db:
            await self.db.dispose()
