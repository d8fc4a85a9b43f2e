"""ORM rows for every persistent thing of the contract (§3). Rows never leave ``store/``: repositories map them to
domain models.

Alembic is the source of truth for the schema; ``tests/store/test_store.py`` proves these tables and the migrations agree.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: DateTime(timezone=True), dict: JSON, list: JSON}


EXAMPLE_SEARCH = "l07_example_search"
"""The examples' text search index (migration 0009): on SQLite an FTS5 trigram table of that name (with its shadow
tables and triggers), on PostgreSQL the pg_trgm GIN index ``ix_l07_example_search``. It depends on the backend, so
this metadata does not describe it and schema comparisons leave it out (``described_by_metadata``)."""


# FTS5's trigram tokenizer came with SQLite 3.34 (2020). Python's sqlite3 module is the library aiosqlite drives, so
# the migration (which creates the search table) and the search (which reads it) agree on whether it exists; with an
# older library the search reads the rows instead.
SQLITE_TRIGRAM = sqlite3.sqlite_version_info >= (3, 34, 0)


def described_by_metadata(name: str | None, type_: str, parent_names: dict) -> bool:
    """Alembic's ``include_name``: every schema object except the text search index's."""
    return not (name or "").startswith((EXAMPLE_SEARCH, f"ix_{EXAMPLE_SEARCH}"))


# --- events and ingestion ---------------------------------------------------------------------------------------


class SqlProcessedEvent(Base):
    """Idempotency keys (contract §1.8): (source, id) seen once."""

    __tablename__ = "l07_processed_events"
    source: Mapped[str] = mapped_column(String(512), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(256))
    result: Mapped[str] = mapped_column(String(32), default="processed")
    processed_at: Mapped[datetime] = mapped_column(default=_now, index=True)


class SqlRejectedEvent(Base):
    """Events that failed parsing or validation, with their code and raw payload (contract §1.9)."""

    __tablename__ = "l07_rejected_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str | None] = mapped_column(String(512), nullable=True)
    source: Mapped[str | None] = mapped_column(String(512), nullable=True)
    event_type: Mapped[str | None] = mapped_column(String(256), nullable=True)
    code: Mapped[str] = mapped_column(String(8), index=True)
    reason: Mapped[str] = mapped_column(Text)
    transport: Mapped[str] = mapped_column(String(32), default="inprocess")
    raw_payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=_now, index=True)


class SqlPendingJoin(Base):
    """One execution waiting for its trace or its score (contract §1.7)."""

    __tablename__ = "l07_pending_joins"
    execution_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    trace_event: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    score_events: Mapped[list] = mapped_column(JSON, default=list)
    trace_at: Mapped[datetime | None] = mapped_column(nullable=True)
    score_at: Mapped[datetime | None] = mapped_column(nullable=True)
    first_seen_at: Mapped[datetime] = mapped_column(default=_now)
    status: Mapped[str] = mapped_column(String(32), default="waiting", index=True)
    updated_at: Mapped[datetime] = mapped_column(default=_now, onupdate=_now)


# --- examples --------------------------------------------------------------------------------------------------


class SqlTrainingExample(Base):
    __tablename__ = "l07_training_examples"
    # Not unique: several examples may come from one execution (contract §9); idempotency is on example_id.
    # (status, created_at): counting a window's ACCEPTED examples reads the index only (the console's overview).
    # (status, task_type, agent_id, example_id): the loop counts a policy group's examples, and those not yet in its
    # dataset, from the index only. The text search index (migration 0009) is backend-specific: see EXAMPLE_SEARCH.
    __table_args__ = (Index("ix_l07_training_examples_source_exec", "source_type", "execution_id"),
                      Index("ix_l07_training_examples_status_created", "status", "created_at"),
                      Index("ix_l07_training_examples_group", "status", "task_type", "agent_id", "example_id"))
    example_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    source_type: Mapped[str] = mapped_column(String(32))
    execution_id: Mapped[str | None] = mapped_column(String(512), nullable=True)
    agent_id: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    task_type: Mapped[str] = mapped_column(String(128), index=True)
    domain: Mapped[str] = mapped_column(String(64), default="general")
    status: Mapped[str] = mapped_column(String(16), index=True, default="PENDING")
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    quality_score: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    composite_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    input_text: Mapped[str] = mapped_column(Text)
    output_text: Mapped[str] = mapped_column(Text)
    data: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=_now, index=True)


class SqlRejectedExample(Base):
    """Filter rejections and quarantines with their reason code; secrets are stored masked only."""

    __tablename__ = "l07_rejected_examples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    example_id: Mapped[str] = mapped_column(String(128), index=True)
    decision: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(String(64), index=True)
    code: Mapped[str | None] = mapped_column(String(8), nullable=True, index=True)
    rule: Mapped[str | None] = mapped_column(String(128), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    agent_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=_now, index=True)


class SqlReviewItem(Base):
    __tablename__ = "l07_review_queue"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    example_id: Mapped[str] = mapped_column(String(128), index=True)
    reason: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="OPEN")
    created_at: Mapped[datetime] = mapped_column(default=_now)


class SqlRewardSignal(Base):
    __tablename__ = "l07_reward_signals"
    signal_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    execution_id: Mapped[str | None] = mapped_column(String(512), nullable=True, index=True)
    task_type: Mapped[str] = mapped_column(String(128), default="general")
    quality_score: Mapped[float] = mapped_column(Float)
    # sha256 of the normalised prompt: executions of the same task are paired through it (contract §5.5).
    prompt_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    r_final: Mapped[float | None] = mapped_column(Float, nullable=True)
    processed_by_learning: Mapped[bool] = mapped_column(Boolean, default=False)
    data: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=_now)


class SqlPreferencePair(Base):
    __tablename__ = "l07_preference_pairs"
    pair_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    task_type: Mapped[str] = mapped_column(String(128), default="general")
    source: Mapped[str] = mapped_column(String(32), default="extractor")
    chosen_example_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    rejected_example_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    data: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=_now)


# --- datasets --------------------------------------------------------------------------------------------------


class SqlDataset(Base):
    __tablename__ = "l07_datasets"
    dataset_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    latest_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=_now)
    updated_at: Mapped[datetime] = mapped_column(default=_now, onupdate=_now)


class SqlDatasetVersion(Base):
    __tablename__ = "l07_dataset_versions"
    dataset_id: Mapped[str] = mapped_column(ForeignKey("l07_datasets.dataset_id"), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    parent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    change_type: Mapped[str] = mapped_column(String(8))
    checksum_sha256: Mapped[str] = mapped_column(String(64))
    split_seed: Mapped[int] = mapped_column(Integer, default=42)
    statistics: Mapped[dict] = mapped_column(JSON)
    lineage: Mapped[dict] = mapped_column(JSON)
    manifest: Mapped[dict] = mapped_column(JSON)
    data: Mapped[dict] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=_now)


class SqlDatasetMember(Base):
    __tablename__ = "l07_dataset_members"
    dataset_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    example_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    split: Mapped[str] = mapped_column(String(8))
    position: Mapped[int] = mapped_column(Integer, default=0)
    content_hash: Mapped[str] = mapped_column(String(64))


# --- training jobs ---------------------------------------------------------------------------------------------


class SqlTrainingJob(Base):
    __tablename__ = "l07_training_jobs"
    job_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    job_type: Mapped[str] = mapped_column(String(16), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    config: Mapped[dict] = mapped_column(JSON)
    dataset_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    dataset_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    base_model_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    output_model_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    data: Mapped[dict] = mapped_column(JSON, default=dict)
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(8), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    checkpoint_location: Mapped[str | None] = mapped_column(Text, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(256), nullable=True, unique=True)
    created_by: Mapped[str] = mapped_column(String(256), default="l07")
    created_at: Mapped[datetime] = mapped_column(default=_now, index=True)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(nullable=True)


class SqlJobEvent(Base):
    """Per-step losses, evals and state changes of a job."""

    __tablename__ = "l07_job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=_now)


# --- models ----------------------------------------------------------------------------------------------------


class SqlModel(Base):
    __tablename__ = "l07_models"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_l07_models_name_version"),
        # One ACTIVE production version per model name, enforced by the database (contract §4.2).
        Index(
            "uq_l07_models_one_active",
            "name",
            unique=True,
            postgresql_where=text("serving_state = 'ACTIVE'"),
            sqlite_where=text("serving_state = 'ACTIVE'"),
        ),
    )
    model_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), index=True)
    version: Mapped[str] = mapped_column(String(64))
    model_type: Mapped[str] = mapped_column(String(16), index=True)
    stage: Mapped[str] = mapped_column(String(16), index=True)
    serving_state: Mapped[str] = mapped_column(String(16), default="NONE")
    artifact_path: Mapped[str] = mapped_column(Text)
    checksum: Mapped[str] = mapped_column(String(80))
    signature: Mapped[str] = mapped_column(Text)
    signing_key_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    parent_model_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    training_job_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    dataset_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    dataset_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    validation_status: Mapped[str] = mapped_column(String(16), default="PENDING")
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    data: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    updated_at: Mapped[datetime] = mapped_column(default=_now, onupdate=_now)


class SqlModelStageHistory(Base):
    __tablename__ = "l07_model_stage_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(128), index=True)
    from_stage: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_stage: Mapped[str] = mapped_column(String(16))
    serving_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    actor: Mapped[str] = mapped_column(String(256))
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    approvals: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=_now)


class SqlModelApproval(Base):
    __tablename__ = "l07_model_approvals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(128), index=True)
    to_stage: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(256))
    consumed: Mapped[bool] = mapped_column(Boolean, default=False)
    # The validation report this approval was given for; it counts only while that report is the latest.
    validation_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=_now)


class SqlValidationResult(Base):
    __tablename__ = "l07_validation_results"
    validation_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(128), index=True)
    baseline_model_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    passed: Mapped[bool] = mapped_column(Boolean)
    recommendation: Mapped[str] = mapped_column(String(8))
    verdict: Mapped[str] = mapped_column(String(16))
    regression_detected: Mapped[bool] = mapped_column(Boolean)
    stages: Mapped[dict] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(default=_now)
    completed_at: Mapped[datetime | None] = mapped_column(nullable=True)


class SqlGoldenCase(Base):
    """Registered golden prompts for regression suites."""

    __tablename__ = "l07_golden_cases"
    case_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    suite: Mapped[str] = mapped_column(String(128), index=True)
    task_type: Mapped[str] = mapped_column(String(128), default="general")
    difficulty: Mapped[str] = mapped_column(String(8), default="MEDIUM")
    messages: Mapped[list] = mapped_column(JSON)
    expected: Mapped[str] = mapped_column(Text)
    match_mode: Mapped[str] = mapped_column(String(16), default="exact")
    created_at: Mapped[datetime] = mapped_column(default=_now)


# --- patterns and strategies -------------------------------------------------------------------------------------


class SqlPattern(Base):
    __tablename__ = "l07_patterns"
    pattern_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    agent_type: Mapped[str] = mapped_column(String(256), index=True)
    pattern_type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict] = mapped_column(JSON)
    discovered_at: Mapped[datetime] = mapped_column(default=_now)


class SqlPlanningStrategy(Base):
    __tablename__ = "l07_planning_strategies"
    strategy_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    task_type: Mapped[str] = mapped_column(String(128), index=True)
    data: Mapped[dict] = mapped_column(JSON)
    recommended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=_now)


class SqlPlanningOutcome(Base):
    """Planning decisions with outcomes, the optimiser's raw data (contract §1.4)."""

    __tablename__ = "l07_planning_outcomes"
    plan_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    task_type: Mapped[str] = mapped_column(String(128), index=True)
    strategy_key: Mapped[str] = mapped_column(String(512))
    success: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    data: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=_now)


# --- publishing, audit, auth -----------------------------------------------------------------------------------


class SqlOutboxEvent(Base):
    """Transactional outbox: written with the state change, delivered by the relay until acknowledged."""

    __tablename__ = "l07_outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    event_type: Mapped[str] = mapped_column(String(256), index=True)
    subject: Mapped[str | None] = mapped_column(String(256), nullable=True)
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class SqlOutboxDelivery(Base):
    """Per-sink acknowledgement of an outbox event, so a retried event is never delivered twice to one sink."""

    __tablename__ = "l07_outbox_deliveries"
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    sink: Mapped[str] = mapped_column(String(64), primary_key=True)
    delivered_at: Mapped[datetime] = mapped_column(default=_now)


class SqlAuditLog(Base):
    """Append-only audit log (contract §7.4)."""

    __tablename__ = "l07_audit_log"
    audit_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    timestamp: Mapped[datetime] = mapped_column(default=_now, index=True)
    actor_type: Mapped[str] = mapped_column(String(32), default="service")
    actor_id: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(128), index=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    result: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    error_code: Mapped[str | None] = mapped_column(String(8), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    ip_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(512), nullable=True)
    # Hash chain (store/audit_chain.py): position, the previous row's hash, and this row's hash over its content.
    seq: Mapped[int] = mapped_column(Integer, unique=True, index=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


class SqlAuditChainHead(Base):
    """The audit chain's head (one row): the last position and hash, and the anchor left by a retention purge.

    Appending locks this row, so concurrent writers extend the chain one after the other and never fork it."""

    __tablename__ = "l07_audit_chain"
    chain_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    anchor_seq: Mapped[int] = mapped_column(Integer, default=0)
    anchor_hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=_now)


class SqlApiKey(Base):
    """REST API keys, stored only as hashes, each bound to one role."""

    __tablename__ = "l07_api_keys"
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    attributes: Mapped[dict] = mapped_column(JSON, default=dict)
    # Producer keys only: the sources and event kinds the key may send (services/ingestion/provenance.py).
    sources: Mapped[list | None] = mapped_column(JSON, nullable=True)
    kinds: Mapped[list | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class SqlProducerKey(Base):
    """Producer public keys (ECDSA P-256) that sign consumed events, each bound to sources and kinds (§1.9, §7.4)."""

    __tablename__ = "l07_producer_keys"
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    public_key_pem: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    sources: Mapped[list] = mapped_column(JSON)
    kinds: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


# --- the autonomous loop (contract §9) ------------------------------------------------------------------------------


class SqlLoopPolicy(Base):
    """Stored state of one loop policy: its dataset, its last run, its circuit breaker (contract §4.4)."""

    __tablename__ = "l07_loop_policies"
    policy: Mapped[str] = mapped_column(String(128), primary_key=True)
    dataset_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    dataset_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dataset_at: Mapped[datetime | None] = mapped_column(nullable=True)
    examples_at_last_run: Mapped[int] = mapped_column(Integer, default=0)
    last_run_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    last_run_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_verdict: Mapped[str | None] = mapped_column(String(16), nullable=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    breaker_state: Mapped[str] = mapped_column(String(8), default="CLOSED")
    breaker_opened_at: Mapped[datetime | None] = mapped_column(nullable=True)
    breaker_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=_now)
    updated_at: Mapped[datetime] = mapped_column(default=_now, onupdate=_now)


class SqlLoopRun(Base):
    """One triggered run: dataset version -> job -> model -> verdict, with the time each stage took."""

    __tablename__ = "l07_loop_runs"
    __table_args__ = (UniqueConstraint("policy", "dataset_id", "dataset_version", name="uq_l07_loop_runs_dataset"),)
    run_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    policy: Mapped[str] = mapped_column(String(128), index=True)
    job_type: Mapped[str] = mapped_column(String(16))
    dataset_id: Mapped[str] = mapped_column(String(128))
    dataset_version: Mapped[str] = mapped_column(String(64))
    examples: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    verdict: Mapped[str | None] = mapped_column(String(16), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(8), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    timings: Mapped[dict] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(default=_now, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class SqlLoopBudget(Base):
    """Compute spent by the loop's jobs per UTC day (wall seconds on CPU and on GPU)."""

    __tablename__ = "l07_loop_budget"
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    cpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(default=_now, onupdate=_now)


class SqlLoopSchedule(Base):
    """Last run of each schedule, so a restarted or new leader does not run it again before it is due."""

    __tablename__ = "l07_loop_schedules"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_run_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_result: Mapped[dict] = mapped_column(JSON, default=dict)
    last_holder: Mapped[str | None] = mapped_column(String(256), nullable=True)


class SqlLease(Base):
    """Named leases (leader election): held by ``holder`` until ``expires_at`` unless renewed."""

    __tablename__ = "l07_leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(256))
    expires_at: Mapped[datetime] = mapped_column()
    acquired_at: Mapped[datetime] = mapped_column(default=_now)


# --- background operations (contract §9 "Release path") -----------------------------------------------------------


class SqlOperation(Base):
    """A validation or deployment run in the background of one process and polled by its requester; ``heartbeat_at``
    is refreshed while it runs, so one whose process died is recognised and marked FAILED."""

    __tablename__ = "l07_operations"
    operation_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    model_id: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    requested_by: Mapped[str] = mapped_column(String(256))
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    result: Mapped[dict] = mapped_column(JSON, default=dict)
    error_code: Mapped[str | None] = mapped_column(String(8), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    owner: Mapped[str] = mapped_column(String(256))
    heartbeat_at: Mapped[datetime] = mapped_column(default=_now)
    created_at: Mapped[datetime] = mapped_column(default=_now, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


# --- production feedback (revision 0006): outcomes per model, release watches, incidents, component breakers -------


class SqlModelOutcome(Base):
    """One execution's outcome and the model that served it (contract §9 "Production feedback"), joined by
    ``execution_id`` from whichever arrives first: the model (``model.response_logged`` or a trace's
    ``metadata.model_id``) or the L06 score. ``completed_at`` is set once both are known and never changes, so the
    watch's windows are stable."""

    __tablename__ = "l07_model_outcomes"
    __table_args__ = (Index("ix_l07_model_outcomes_model_completed", "model_id", "completed_at"),)
    execution_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    # The registered model id when the reported name resolves to one, else the name as reported (external models).
    model_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    model_ref: Mapped[str | None] = mapped_column(String(256), nullable=True)
    model_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    task_type: Mapped[str | None] = mapped_column(String(128), nullable=True)
    served_at: Mapped[datetime | None] = mapped_column(nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    total_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    quality_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    failure: Mapped[str | None] = mapped_column(String(32), nullable=True)
    is_error: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    scored_at: Mapped[datetime | None] = mapped_column(nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(default=_now)


class SqlModelWatch(Base):
    """The watch of one model released to PRODUCTION ACTIVE against its predecessor (contract §4.2): how many
    evaluation windows were tested, the last verdict, and who claimed the rollback (at most one process does)."""

    __tablename__ = "l07_model_watches"
    model_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(256), index=True)
    baseline_model_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    policy: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default="WATCHING")
    started_at: Mapped[datetime] = mapped_column()
    windows_evaluated: Mapped[int] = mapped_column(Integer, default=0)
    last_result: Mapped[dict] = mapped_column(JSON, default=dict)
    # The canary phase (L04 shifts a share of traffic for a while first): RUNNING, PASSED, FAILED, INCONCLUSIVE.
    canary_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    canary: Mapped[dict] = mapped_column(JSON, default=dict)
    claimed_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=_now, onupdate=_now)


class SqlIncident(Base):
    """A production incident: an automatic rollback (or a failed one) with the statistics that caused it."""

    __tablename__ = "l07_incidents"
    incident_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(128), index=True)
    model_name: Mapped[str] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(32))
    error_code: Mapped[str] = mapped_column(String(8))
    rolled_back_to: Mapped[str | None] = mapped_column(String(128), nullable=True)
    policy: Mapped[str | None] = mapped_column(String(128), nullable=True)
    actor: Mapped[str] = mapped_column(String(256))
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=_now, index=True)


class SqlComponentBreaker(Base):
    """The circuit breaker of one component (training, validation, deployment; contract §4.4), shared by every
    process through the database."""

    __tablename__ = "l07_component_breakers"
    component: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(12), default="CLOSED")
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    trips: Mapped[int] = mapped_column(Integer, default=0)
    opened_at: Mapped[datetime | None] = mapped_column(nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_failure_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_success_at: Mapped[datetime | None] = mapped_column(nullable=True)
    probe_started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=_now)



# --- OpenAI-compatible fine-tuning (revision 0007; contract §9) --------------------------------------------------


class SqlFineTuningFile(Base):
    """A file uploaded through ``POST /v1/files``: its bytes live under the L07 home (``path``, mode 0600); the
    report of its import through the quality filter is kept once it has been read for a job."""

    __tablename__ = "l07_ft_files"
    file_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(256), index=True)
    created_at: Mapped[datetime] = mapped_column(default=_now, index=True)
    import_format: Mapped[str | None] = mapped_column(String(32), nullable=True)
    import_report: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class SqlFineTuningJob(Base):
    """An OpenAI fine-tuning job: the request as sent, and the L07 dataset and training job it became (``job_id``
    is None when its files gave nothing to train on; ``status`` and ``error`` then say why)."""

    __tablename__ = "l07_ft_jobs"
    ft_job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_by: Mapped[str] = mapped_column(String(256), index=True)
    created_at: Mapped[datetime] = mapped_column(default=_now, index=True)
    model: Mapped[str] = mapped_column(String(256))
    base_model_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    method: Mapped[dict] = mapped_column(JSON, default=dict)
    hyperparameters: Mapped[dict] = mapped_column(JSON, default=dict)
    seed: Mapped[int] = mapped_column(Integer, default=42)
    dataset_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class SqlFineTuningEvent(Base):
    """What a fine-tuning job's files became (lines accepted, filtered with reasons, refused with codes), in the
    job's event list next to the training job's own events."""

    __tablename__ = "l07_ft_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ft_job_id: Mapped[str] = mapped_column(String(64), index=True)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=_now)

TABLES = sorted(Base.metadata.tables)
