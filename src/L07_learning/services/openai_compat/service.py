"""``OpenAIFineTuning``: the files, jobs and models of the OpenAI-compatible API, composed from one
``LearningService``'s parts."""

from __future__ import annotations

from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelStage
from ..learning_service import LearningService
from ..importers.run import Importer
from ..registry.base_models import find_base
from . import shapes
from .files import FileStore
from .jobs import FineTuningJobs

HIDDEN_STAGES = (ModelStage.ARCHIVED, ModelStage.REJECTED)


class OpenAIFineTuning:
    """What ``/v1`` serves on ``l07 serve``."""

    def __init__(self, service: LearningService) -> None:
        self.registry = service.registry
        self.files = FileStore(service.db, service.settings)
        # The same importer ``POST /api/v1/imports`` uses: one filter, so lines seen by either are deduplicated.
        self.importer = Importer(service.db, service.filter)
        self.jobs = FineTuningJobs(service.db, self.files, self.importer, service.curator, service.sft_engine,
                                   service.registry)

    async def models(self) -> dict[str, Any]:
        models = [m for m in await self.registry.list_models() if m.stage not in HIDDEN_STAGES]
        return {"object": "list", "data": [shapes.model_object(m) for m in models], "has_more": False}

    async def model(self, model: str) -> dict[str, Any]:
        """A model by id, or the newest usable base model of that name (404 E7250 otherwise)."""
        try:
            found = await self.registry.get_model(model)
        except L07Error as exc:
            if exc.code is not L07ErrorCode.MODEL_NOT_FOUND:
                raise
            found = await find_base(self.registry, model)
        if found is None or found.stage in HIDDEN_STAGES:
            raise L07Error(L07ErrorCode.MODEL_NOT_FOUND, f"no model {model!r}", param="model",
                           openai_code="model_not_found")
        return shapes.model_object(found)
