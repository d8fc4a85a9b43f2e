"""One router per resource; ``ROUTERS`` is the list the app factory includes, in this order."""

from . import (
    audit, datasets, events, examples, health, imports, loop, metrics, models, openai_fine_tuning, outcomes,
    training_jobs,
)

ROUTERS = [
    health.router,
    metrics.router,
    events.router,
    training_jobs.router,
    datasets.router,
    examples.router,
    models.router,
    outcomes.router,
    loop.router,
    audit.router,
    imports.router,
    openai_fine_tuning.router,
]
