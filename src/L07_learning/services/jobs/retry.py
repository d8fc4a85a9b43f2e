"""The retry policy of contract §4.1: which failures are retried, how often, with what change, after what wait.

OOM -> half the batch with more accumulation; NaN -> half the learning rate, once; a crashed or unreachable process
-> the same config after a backoff. Every other failure is final.
"""

from __future__ import annotations

from ...events.outbox_relay import backoff_seconds
from ...models.error_codes import L07ErrorCode
from ...models.training_job import JobConfig, TrainingJob

MAX_RETRIES = 3
# Per-cause retry limits (contract §4.1); the total is capped by MAX_RETRIES.
RETRY_LIMITS = {
    L07ErrorCode.GPU_OUT_OF_MEMORY: 3,
    L07ErrorCode.TRAINING_DIVERGENCE: 1,
    L07ErrorCode.BASE_MODEL_LOADING_FAILURE: 1,
    L07ErrorCode.CHECKPOINT_SAVE_FAILURE: 3,
    L07ErrorCode.CONTAINER_STARTUP_FAILURE: 3,
    L07ErrorCode.NETWORK_CONNECTIVITY_ERROR: 3,
}


def retry_config(code: L07ErrorCode, config: JobConfig, job: TrainingJob, attempts: dict[str, int]) -> JobConfig | None:
    """The adjusted config for the next attempt, or None when the contract says fail.

    Args:
        attempts: Retries already made in this run, by error code value.
    """
    limit = RETRY_LIMITS.get(code)
    if limit is None or job.retry_count >= MAX_RETRIES or attempts.get(code.value, 0) >= limit:
        return None
    if code == L07ErrorCode.GPU_OUT_OF_MEMORY:
        if config.batch_size <= 1:
            return None
        return config.model_copy(update={
            "batch_size": config.batch_size // 2,
            "gradient_accumulation_steps": min(config.gradient_accumulation_steps + 2, 8)})
    if code == L07ErrorCode.TRAINING_DIVERGENCE:
        return config.model_copy(update={"learning_rate": max(config.learning_rate * 0.5, 1e-6)})
    return config


def backoff(code: L07ErrorCode, attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): none when the config changed, else backoff."""
    if code in (L07ErrorCode.GPU_OUT_OF_MEMORY, L07ErrorCode.TRAINING_DIVERGENCE):
        return 0.0
    return backoff_seconds(attempt - 1)
