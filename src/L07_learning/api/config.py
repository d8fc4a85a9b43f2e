"""Settings of the REST service itself (environment prefix ``L07_API_``), kept beside the API that reads them."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiConfig(BaseSettings):
    """Limits and listener of ``l07 serve``. Every field can be set as ``L07_API_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="L07_API_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Listen address of `l07 serve`")
    port: int = Field(default=8707, ge=1, le=65535, description="Listen port of `l07 serve`")
    max_request_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413"
    )
    max_batch_events: int = Field(default=1000, ge=1, description="Most events in one batch request")
    rate_limit_events_per_s: float | None = Field(
        default=500.0, gt=0, description="Sustained events per second per API key on ingestion; None turns it off"
    )
    rate_limit_burst: int = Field(default=5000, ge=1, description="Events a key may send at once before throttling")
    # Both default to closed: metrics name models, domains and error rates, and the schema maps every endpoint.
    public_metrics: bool = Field(
        default=False, description="Serve GET /metrics without a key (default: a key whose role may read metrics)"
    )
    public_docs: bool = Field(
        default=False, description="Serve /docs, /redoc and /openapi.json without a key (default: /openapi.json for "
                                   "any valid key; the browsable pages are off)"
    )

    @model_validator(mode="after")
    def _burst_fits_batch(self) -> "ApiConfig":
        # A batch larger than the bucket could never be admitted, so Retry-After would be a lie.
        if self.rate_limit_events_per_s is not None and self.rate_limit_burst < self.max_batch_events:
            raise ValueError("rate_limit_burst must be at least max_batch_events")
        return self
