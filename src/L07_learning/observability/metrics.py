"""Every Prometheus metric of the layer (contract §7.2), in the package's own registry.

A private ``CollectorRegistry`` (instead of the global default) lets the package be imported under two names
(``L07_learning`` installed, ``src.L07_learning`` from the repo root) in one process without duplicate-metric errors.
Labels that identify single jobs, models or executions are forbidden by the contract's cardinality policy.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

# Ingestion and extraction
EXAMPLES_EXTRACTED = Counter(
    "l07_examples_extracted_total", "Training examples extracted", ["source_type", "domain"], registry=REGISTRY
)
EVENTS_REJECTED = Counter("l07_events_rejected_total", "Consumed events rejected, by error code", ["code"], registry=REGISTRY)
EVENTS_CONSUMED = Counter(
    "l07_events_consumed_total", "Consumed events by kind and result", ["event_kind", "result"], registry=REGISTRY
)
EVENTS_PENDING_JOIN = Gauge("l07_events_pending_join", "Traces or scores waiting for their join partner", registry=REGISTRY)
PENDING_JOINS = Gauge("l07_pending_joins", "Pending joins (contract name)", registry=REGISTRY)
EXTRACTION_LATENCY = Histogram(
    "l07_training_data_extraction_latency_seconds",
    "Latency of extracting one event",
    buckets=(0.1, 0.5, 1, 5, 10, 60),
    registry=REGISTRY,
)

# Filtering and datasets
EXAMPLES_FILTERED = Counter(
    "l07_examples_filtered_total", "Filter decisions", ["decision", "reason", "domain"], registry=REGISTRY
)
DATA_POISONING_DETECTED = Counter(
    "l07_data_poisoning_detected_total", "Poisoned examples quarantined", ["domain"], registry=REGISTRY
)
DATASETS_CREATED = Counter("l07_datasets_created_total", "Dataset versions created", ["change_type"], registry=REGISTRY)
DATASET_SIZE = Gauge("l07_dataset_size_examples", "Examples in the newest dataset version", ["domain"], registry=REGISTRY)
DATASET_QUALITY_MEAN = Gauge(
    "l07_dataset_quality_score_mean", "Mean quality of the newest dataset version", ["domain"], registry=REGISTRY
)
DATASET_QUALITY_STDDEV = Gauge(
    "l07_dataset_quality_score_stddev", "Quality stddev of the newest dataset version", ["domain"], registry=REGISTRY
)

# Training
TRAINING_JOBS = Counter(
    "l07_training_jobs_total", "Training jobs by type and final status", ["job_type", "status"], registry=REGISTRY
)
TRAINING_JOB_DURATION = Histogram(
    "l07_training_job_duration_seconds",
    "Wall time of finished training jobs",
    ["job_type", "status"],
    buckets=(10, 60, 300, 1800, 3600, 21600),
    registry=REGISTRY,
)
TRAINING_LOSS = Gauge("l07_training_loss", "Latest training loss", ["job_type", "base_model"], registry=REGISTRY)
VALIDATION_LOSS = Gauge("l07_validation_loss", "Latest validation loss", ["job_type", "base_model"], registry=REGISTRY)
VALIDATION_ACCURACY = Gauge(
    "l07_validation_accuracy", "Latest validation accuracy (0-100)", ["job_type", "base_model"], registry=REGISTRY
)
TRAINING_TOKENS = Counter("l07_training_tokens_total", "Tokens trained on", ["job_type"], registry=REGISTRY)
THROUGHPUT = Gauge("l07_throughput_examples_per_second", "Training throughput", ["job_type"], registry=REGISTRY)

# Registry, validation, deployment
MODELS_REGISTERED = Counter("l07_models_registered_total", "Models registered", ["model_type"], registry=REGISTRY)
VALIDATION_PASS_RATE = Gauge(
    "l07_validation_pass_rate", "Pass rate of the latest validation suite (0-1)", ["test_suite"], registry=REGISTRY
)
MODELS_DEPLOYED = Counter(
    "l07_models_deployed_total", "Stage promotions", ["stage", "success"], registry=REGISTRY
)
MODEL_ROLLBACKS = Counter("l07_model_rollback_total", "Rollbacks", ["reason"], registry=REGISTRY)
MODEL_BASELINE_QUALITY = Gauge(
    "l07_model_baseline_quality_score", "Baseline score in the latest validation", ["base_model"], registry=REGISTRY
)
MODEL_IMPROVEMENT = Gauge(
    "l07_model_quality_improvement_percent", "Candidate improvement over baseline", ["base_model"], registry=REGISTRY
)

# Behaviour patterns and planning strategies
PATTERN_TRACES_REJECTED = Counter(
    "l07_pattern_traces_rejected_total", "Traces the pattern miner could not use, by reason", ["reason"], registry=REGISTRY
)
PATTERNS_DISCOVERED = Counter(
    "l07_patterns_discovered_total", "Significant behaviour patterns found", ["polarity"], registry=REGISTRY
)
STRATEGY_RECOMMENDATIONS = Counter(
    "l07_strategy_recommendations_total", "Planning-strategy recommendations published", registry=REGISTRY
)

# RLHF
REWARD_SIGNALS_DROPPED = Counter(
    "l07_reward_signals_dropped_total", "Reward signals left out of a batch, by reason", ["reason"], registry=REGISTRY
)
RLHF_ALERTS = Counter("l07_rlhf_alerts_total", "RLHF guard alerts (E7301, E7305, E7306, E7402)", ["code"], registry=REGISTRY)
REWARD_MODEL_ACCURACY = Gauge(
    "l07_reward_model_pairwise_accuracy", "Held-out pairwise accuracy of the latest reward model", registry=REGISTRY
)

# Reliability
ERRORS = Counter("l07_errors_total", "Errors by code", ["error_code", "error_type"], registry=REGISTRY)
CIRCUIT_BREAKER_STATE = Gauge(
    "l07_circuit_breaker_state", "1 when the breaker is in that state", ["component", "state"], registry=REGISTRY
)
OUTBOX_PENDING = Gauge("l07_outbox_pending", "Published events not yet acknowledged by every sink", registry=REGISTRY)
LOOP_BREAKER_TRIPS = Counter(
    "l07_loop_breaker_trips_total", "Loop policies paused by their circuit breaker", ["policy"], registry=REGISTRY
)

# Production feedback (per model *name*: ids are forbidden labels). Set from the stored outcome series each time the
# watch looks at a model (every loop tick for the ACTIVE ones) or a reader asks for its outcomes.
MODEL_OUTCOME_SAMPLES = Gauge(
    "l07_model_outcome_samples", "Scored executions of the model's current version", ["model_name"], registry=REGISTRY
)
MODEL_OUTCOME_QUALITY = Gauge(
    "l07_model_outcome_quality_mean", "Mean L06 quality score of the model's current version", ["model_name"],
    registry=REGISTRY,
)
MODEL_OUTCOME_ERROR_RATE = Gauge(
    "l07_model_outcome_error_rate", "Error rate (error or timeout) of the model's current version", ["model_name"],
    registry=REGISTRY,
)
MODEL_WATCH_QUALITY_RATIO = Gauge(
    "l07_model_watch_quality_ratio", "Latest watch window: candidate mean quality / predecessor's", ["model_name"],
    registry=REGISTRY,
)
MODEL_WATCH_ERROR_RATE_DELTA = Gauge(
    "l07_model_watch_error_rate_delta", "Latest watch window: candidate error rate - predecessor's", ["model_name"],
    registry=REGISTRY,
)

# HTTP
HTTP_REQUESTS = Counter(
    "l07_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=REGISTRY
)
HTTP_LATENCY = Histogram(
    "l07_http_request_duration_seconds", "HTTP request latency", ["method", "route"], registry=REGISTRY
)


def render() -> bytes:
    """The registry in Prometheus text format."""
    return generate_latest(REGISTRY)

# Serving (``l07 serve-model``)
SERVING_TOKENS = Counter(
    "l07_serving_tokens_total", "Tokens processed by the served model", ["kind"], registry=REGISTRY
)
SERVING_LATENCY = Histogram(
    "l07_serving_request_latency_seconds", "Chat completion latency, request received to last token",
    ["stream"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=REGISTRY,
)
SERVING_BATCH_SIZE = Histogram(
    "l07_serving_batch_size", "Requests decoded together in one forward batch", buckets=(1, 2, 4, 8, 16, 32),
    registry=REGISTRY,
)
SERVING_TOKENS_PER_S = Gauge(
    "l07_serving_tokens_per_second", "Completion tokens per second of the latest forward batch", registry=REGISTRY
)
