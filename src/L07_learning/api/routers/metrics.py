"""Prometheus scrape endpoint: the package registry (contract §7.2 metrics plus HTTP request metrics)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from ...observability.metrics import render
from ..deps import MetricsAccess
from ..errors import error_responses

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    name="metrics.scrape",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                     "description": "Prometheus text format"}, **error_responses(401, 403)},
)
async def scrape(_: MetricsAccess) -> Response:
    """Every L07 metric in Prometheus text exposition format. Needs a key whose role may read metrics (every role
    but producer and inference) unless ``L07_API_PUBLIC_METRICS=true``."""
    return Response(content=render(), media_type=CONTENT_TYPE_LATEST)
