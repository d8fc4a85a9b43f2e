"""One router per resource; ``ROUTERS`` is the list the app factory includes, in this order."""

from . import audit, datasets, events, health, loop, metrics, models, training_jobs

ROUTERS = [
    health.router,
    metrics.router,
    events.router,
    training_jobs.router,
    datasets.router,
    models.router,
    loop.router,
    audit.router,
]
