"""The L07 error-code table (contract §6 and §6.1) and the one exception every L07 failure raises.

The table is the single source of truth for each code's severity, retry policy and HTTP status; the REST error
handler, retry logic and CLI all read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class L07ErrorCode(str, Enum):
    """Every E7xxx code of the contract (Appendix B plus the proposed additions of §6.1)."""

    TRACE_MISSING_FIELDS = "E7010"
    QUALITY_SCORE_NOT_FOUND = "E7011"
    MALFORMED_STEP_STRUCTURE = "E7012"
    DIFFICULTY_COMPUTATION_ERROR = "E7013"
    STORAGE_WRITE_FAILURE = "E7014"
    EXECUTION_TRACE_PARSE_ERROR = "E7015"
    AGENT_METADATA_INCOMPLETE = "E7016"
    TASK_CONTEXT_INVALID = "E7017"
    INSUFFICIENT_EXAMPLES = "E7020"
    QUALITY_SIGNAL_UNAVAILABLE = "E7021"
    DIVERSITY_COMPUTATION_FAILURE = "E7022"
    ANOMALY_DETECTOR_ERROR = "E7023"
    DATASET_SIZE_EXPLOSION = "E7024"
    CLASS_IMBALANCE_SEVERE = "E7025"
    MISSING_DOMAIN_CLASSIFICATION = "E7026"
    DIFFICULTY_ESTIMATION_FAILURE = "E7027"
    GPU_OUT_OF_MEMORY = "E7030"
    DATASET_LOADING_FAILURE = "E7031"
    BASE_MODEL_LOADING_FAILURE = "E7032"
    TRAINING_DIVERGENCE = "E7033"
    CHECKPOINT_SAVE_FAILURE = "E7034"
    VALIDATION_FAILURE = "E7035"
    LORA_ADAPTER_CONFIG_INVALID = "E7036"
    TOKENIZATION_ERROR = "E7037"
    TRAINING_TIMEOUT = "E7038"
    OPTIMIZER_INITIALIZATION_ERROR = "E7039"
    EVENT_STREAM_DISCONNECTION = "E7040"
    DATASET_TABLE_WRITE_ERROR = "E7041"
    ARTIFACT_UPLOAD_FAILURE = "E7042"
    EXECUTION_HISTORY_QUERY_TIMEOUT = "E7043"
    EVALUATION_RESULTS_QUERY_FAILED = "E7044"
    ARTIFACT_VERSIONING_ERROR = "E7045"
    TRAINING_DATA_CONTAMINATION_DETECTED = "E7100"
    SUSPICIOUS_EXTRACTION_PATTERN = "E7101"
    BACKDOOR_PATTERN_DETECTED = "E7102"
    PRIVILEGE_ESCALATION_PATTERN_DETECTED = "E7103"
    FINE_TUNING_QUOTA_EXCEEDED = "E7104"
    MODEL_INVERSION_ATTACK_DETECTED = "E7105"
    DATA_VALIDATION_SCHEMA_MISMATCH = "E7110"
    SECRET_DETECTED_IN_TRAINING_DATA = "E7111"
    PII_DETECTED_IN_TRAINING_DATA = "E7112"
    MALWARE_SIGNATURE_DETECTED = "E7113"
    MODEL_ARTIFACT_SIGNING_FAILED = "E7200"
    MODEL_SIGNATURE_VERIFICATION_FAILED = "E7201"
    MODEL_REGISTRY_UNAVAILABLE = "E7202"
    MODEL_DEPLOYMENT_VALIDATION_FAILED = "E7203"
    MODEL_REGRESSION_DETECTED = "E7204"
    CANARY_DEPLOYMENT_FAILURE = "E7205"
    A_B_TEST_SIMULATION_ERROR = "E7206"
    MODEL_ARTIFACT_CORRUPTION_DETECTED = "E7207"
    MODEL_INCOMPATIBILITY_WITH_GATEWAY = "E7208"
    MODEL_SIZE_EXCEEDS_LIMIT = "E7209"
    REWARD_MODEL_TRAINING_FAILURE = "E7300"
    REWARD_MODEL_OVERFITTING = "E7301"
    REWARD_SIGNAL_NOISE_HIGH = "E7302"
    PPO_TRAINING_INSTABILITY = "E7303"
    PPO_SAMPLE_EFFICIENCY_LOW = "E7304"
    REWARD_HACKING_DETECTED = "E7305"
    POLICY_DIVERGENCE_THRESHOLD_EXCEEDED = "E7306"
    TRAINING_JOB_TIMEOUT = "E7400"
    CHECKPOINT_RECOVERY_FAILED = "E7401"
    NEGATIVE_FEEDBACK_LOOP_DETECTED = "E7402"
    MODEL_QUALITY_BELOW_MINIMUM = "E7403"
    TRAINING_DATA_QUALITY_DECLINING = "E7404"
    GPU_RESOURCE_EXHAUSTION = "E7405"
    MODEL_SERVING_LATENCY_DEGRADATION = "E7406"
    MODEL_INFERENCE_ERROR_RATE_HIGH = "E7407"
    DISK_SPACE_EXHAUSTED = "E7408"
    METRICS_EXPORT_FAILURE = "E7409"
    HYPERPARAMETER_CONFIG_INVALID = "E7500"
    CURRICULUM_SCHEDULE_INVALID = "E7501"
    COST_BENEFIT_ANALYSIS_NEGATIVE = "E7502"
    TRAINING_DATA_INSUFFICIENT_DIVERSITY = "E7503"
    BASE_MODEL_VERSION_OBSOLETE = "E7504"
    L06_QUALITY_SCORE_SCHEMA_MISMATCH = "E7505"
    L02_TRACE_SCHEMA_INCOMPATIBLE = "E7506"
    DISTILLATION_STUDENT_ACCURACY_LOW = "E7600"
    DISTILLATION_TEMPERATURE_INVALID = "E7601"
    KNOWLEDGE_TRANSFER_FAILED = "E7602"
    QUANTIZATION_ACCURACY_LOSS = "E7603"
    ADAPTER_LOADING_FAILURE = "E7604"
    ADAPTER_INCOMPATIBILITY = "E7605"
    TRAINING_COST_THRESHOLD_EXCEEDED = "E7700"
    GPU_HOUR_QUOTA_EXCEEDED = "E7701"
    COST_ESTIMATION_INACCURATE = "E7702"
    ROI_INSUFFICIENT_FOR_DEPLOYMENT = "E7703"
    METRICS_CARDINALITY_EXPLOSION = "E7800"
    MONITORING_DASHBOARD_UNAVAILABLE = "E7801"
    ALERT_DELIVERY_FAILURE = "E7802"
    TRACE_EXPORT_FAILURE = "E7803"
    AUDIT_LOG_WRITE_FAILURE = "E7804"
    KUBERNETES_API_ERROR = "E7900"
    CONTAINER_STARTUP_FAILURE = "E7901"
    PERSISTENT_VOLUME_MOUNT_FAILURE = "E7902"
    NETWORK_CONNECTIVITY_ERROR = "E7903"
    SERVICE_ACCOUNT_PERMISSION_ERROR = "E7904"
    CONFIGURATION_NOT_FOUND = "E7905"
    UNHANDLED_EXCEPTION = "E7910"
    TRACE_LIMIT_EXCEEDED = "E7018"
    DATASET_NOT_FOUND = "E7028"
    SPLIT_RATIOS_INVALID = "E7029"
    EVENT_AUTHENTICITY_FAILED = "E7115"
    MODEL_NOT_FOUND = "E7250"
    STAGE_TRANSITION_NOT_ALLOWED = "E7251"
    STAGE_APPROVAL_MISSING = "E7252"
    TRAINING_JOB_NOT_FOUND = "E7410"

    @property
    def spec(self) -> "ErrorSpec":
        return ERROR_TABLE[self]


@dataclass(frozen=True)
class ErrorSpec:
    """One row of the contract's error table.

    Attributes:
        code: The enum member.
        severity: ``W`` warning, ``E`` error, ``C`` critical.
        message: Default human-readable meaning.
        retry: The contract's retry column (``Y``, ``1x``, ``D``, ``N`` with notes).
        http_status: Status the REST API answers with.
    """

    code: L07ErrorCode
    severity: str
    message: str
    retry: str
    http_status: int

    @property
    def name(self) -> str:
        return self.code.name

    @property
    def retryable(self) -> bool:
        """Automatic retry (``Y``) or one adjusted retry (``1x``) is allowed."""
        return self.retry.startswith("Y") or self.retry.startswith("1")


_ROWS: tuple[ErrorSpec, ...] = (
    ErrorSpec(L07ErrorCode.TRACE_MISSING_FIELDS, "W", "consumed event is missing a required field", "N", 400),
    ErrorSpec(L07ErrorCode.QUALITY_SCORE_NOT_FOUND, "W", "no L06 score within the join window", "Y (wait, then pending)", 500),
    ErrorSpec(L07ErrorCode.MALFORMED_STEP_STRUCTURE, "W", "a trace step has an invalid structure", "N", 400),
    ErrorSpec(L07ErrorCode.DIFFICULTY_COMPUTATION_ERROR, "W", "difficulty could not be computed; 0.5 used", "D", 500),
    ErrorSpec(L07ErrorCode.STORAGE_WRITE_FAILURE, "E", "writing an example to L01/DB failed", "Y (3)", 500),
    ErrorSpec(L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, "W", "event or trace JSON unparseable", "N", 400),
    ErrorSpec(L07ErrorCode.AGENT_METADATA_INCOMPLETE, "W", "agent metadata missing; defaults used", "D", 500),
    ErrorSpec(L07ErrorCode.TASK_CONTEXT_INVALID, "W", "task context invalid; {} used", "D", 500),
    ErrorSpec(L07ErrorCode.INSUFFICIENT_EXAMPLES, "E", "below the minimum; training blocked under the training minimum", "N", 500),
    ErrorSpec(L07ErrorCode.QUALITY_SIGNAL_UNAVAILABLE, "W", "example has no score; REVIEW only", "D", 500),
    ErrorSpec(L07ErrorCode.DIVERSITY_COMPUTATION_FAILURE, "W", "diversity check skipped", "D", 500),
    ErrorSpec(L07ErrorCode.ANOMALY_DETECTOR_ERROR, "W", "outlier detection skipped", "D", 500),
    ErrorSpec(L07ErrorCode.DATASET_SIZE_EXPLOSION, "W", "above the maximum size; stratified downsampling", "D", 500),
    ErrorSpec(L07ErrorCode.CLASS_IMBALANCE_SEVERE, "W", "one class > 90%", "D", 500),
    ErrorSpec(L07ErrorCode.MISSING_DOMAIN_CLASSIFICATION, "W", "domain set to general", "D", 500),
    ErrorSpec(L07ErrorCode.DIFFICULTY_ESTIMATION_FAILURE, "W", "difficulty set to 0.5", "D", 500),
    ErrorSpec(L07ErrorCode.GPU_OUT_OF_MEMORY, "E", "out of memory during training", "Y (≤ 3, halve batch)", 500),
    ErrorSpec(L07ErrorCode.DATASET_LOADING_FAILURE, "E", "dataset missing or schema invalid; job fails", "N", 500),
    ErrorSpec(L07ErrorCode.BASE_MODEL_LOADING_FAILURE, "E", "base model could not load", "1×", 500),
    ErrorSpec(L07ErrorCode.TRAINING_DIVERGENCE, "E", "loss rising or NaN", "1× (LR × 0.5)", 500),
    ErrorSpec(L07ErrorCode.CHECKPOINT_SAVE_FAILURE, "E", "checkpoint write failed", "Y (alternate path)", 500),
    ErrorSpec(L07ErrorCode.VALIDATION_FAILURE, "E", "training-time validation metrics below threshold", "N", 500),
    ErrorSpec(L07ErrorCode.LORA_ADAPTER_CONFIG_INVALID, "E", "rank, alpha or target_modules invalid", "N (400 at submission)", 400),
    ErrorSpec(L07ErrorCode.TOKENIZATION_ERROR, "E", "tokenizer/model mismatch or bad data", "N", 500),
    ErrorSpec(L07ErrorCode.TRAINING_TIMEOUT, "E", "exceeded max duration; checkpoint kept", "N", 500),
    ErrorSpec(L07ErrorCode.OPTIMIZER_INITIALIZATION_ERROR, "E", "optimizer init failed; AdamW default used", "D", 500),
    ErrorSpec(L07ErrorCode.EVENT_STREAM_DISCONNECTION, "E", "lost the event stream; alert after 5 min", "Y (5, cap 5 min)", 500),
    ErrorSpec(L07ErrorCode.DATASET_TABLE_WRITE_ERROR, "E", "dataset table write failed", "Y (3)", 500),
    ErrorSpec(L07ErrorCode.ARTIFACT_UPLOAD_FAILURE, "E", "artifact upload failed", "Y (3)", 500),
    ErrorSpec(L07ErrorCode.EXECUTION_HISTORY_QUERY_TIMEOUT, "E", "history query timed out", "Y (smaller range)", 500),
    ErrorSpec(L07ErrorCode.EVALUATION_RESULTS_QUERY_FAILED, "E", "score query failed; cached scores used", "Y", 500),
    ErrorSpec(L07ErrorCode.ARTIFACT_VERSIONING_ERROR, "E", "version conflict or failure", "Y (next sequential version)", 409),
    ErrorSpec(L07ErrorCode.TRAINING_DATA_CONTAMINATION_DETECTED, "C", "malicious patterns in data; quarantine and alert security", "N", 500),
    ErrorSpec(L07ErrorCode.SUSPICIOUS_EXTRACTION_PATTERN, "W", "model-extraction-like query pattern", "N", 500),
    ErrorSpec(L07ErrorCode.BACKDOOR_PATTERN_DETECTED, "C", "backdoor trigger in data; halt training", "N", 500),
    ErrorSpec(L07ErrorCode.PRIVILEGE_ESCALATION_PATTERN_DETECTED, "C", "privilege escalation in data", "N", 500),
    ErrorSpec(L07ErrorCode.FINE_TUNING_QUOTA_EXCEEDED, "E", "requester over quota", "N", 402),
    ErrorSpec(L07ErrorCode.MODEL_INVERSION_ATTACK_DETECTED, "W", "inversion-like queries", "N", 500),
    ErrorSpec(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "E", "example or event fails schema or range validation", "N", 400),
    ErrorSpec(L07ErrorCode.SECRET_DETECTED_IN_TRAINING_DATA, "C", "credential found; quarantine and rotate it", "N", 500),
    ErrorSpec(L07ErrorCode.PII_DETECTED_IN_TRAINING_DATA, "W", "PII found; redact or quarantine", "N", 500),
    ErrorSpec(L07ErrorCode.MALWARE_SIGNATURE_DETECTED, "C", "malware pattern in trace", "N", 500),
    ErrorSpec(L07ErrorCode.MODEL_ARTIFACT_SIGNING_FAILED, "E", "signing failed (key access)", "Y", 500),
    ErrorSpec(L07ErrorCode.MODEL_SIGNATURE_VERIFICATION_FAILED, "E", "signature invalid; possible tampering", "N", 500),
    ErrorSpec(L07ErrorCode.MODEL_REGISTRY_UNAVAILABLE, "E", "registry/DB unreachable", "Y", 503),
    ErrorSpec(L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED, "E", "pre-deployment validation failed", "N", 500),
    ErrorSpec(L07ErrorCode.MODEL_REGRESSION_DETECTED, "E", "worse than baseline; deployment blocked", "N", 500),
    ErrorSpec(L07ErrorCode.CANARY_DEPLOYMENT_FAILURE, "E", "canary failed; automatic rollback", "N", 500),
    ErrorSpec(L07ErrorCode.A_B_TEST_SIMULATION_ERROR, "E", "offline A/B replay failed; REVIEW", "N", 500),
    ErrorSpec(L07ErrorCode.MODEL_ARTIFACT_CORRUPTION_DETECTED, "E", "checksum mismatch; restore from backup", "N", 500),
    ErrorSpec(L07ErrorCode.MODEL_INCOMPATIBILITY_WITH_GATEWAY, "E", "L04 cannot load the format", "N", 500),
    ErrorSpec(L07ErrorCode.MODEL_SIZE_EXCEEDS_LIMIT, "E", "too large; distil, quantize or ship as LoRA", "N", 500),
    ErrorSpec(L07ErrorCode.REWARD_MODEL_TRAINING_FAILURE, "E", "reward model training failed", "Y (new hyperparameters)", 500),
    ErrorSpec(L07ErrorCode.REWARD_MODEL_OVERFITTING, "W", "train−val gap too large", "D", 500),
    ErrorSpec(L07ErrorCode.REWARD_SIGNAL_NOISE_HIGH, "W", "noisy reward or zero variance", "D", 500),
    ErrorSpec(L07ErrorCode.PPO_TRAINING_INSTABILITY, "E", "PPO unstable", "1× (lower LR, higher KL)", 500),
    ErrorSpec(L07ErrorCode.PPO_SAMPLE_EFFICIENCY_LOW, "W", "needs too many samples", "D", 500),
    ErrorSpec(L07ErrorCode.REWARD_HACKING_DETECTED, "C", "policy games the reward; quarantine", "N", 500),
    ErrorSpec(L07ErrorCode.POLICY_DIVERGENCE_THRESHOLD_EXCEEDED, "E", "KL > max; previous checkpoint used", "1×", 500),
    ErrorSpec(L07ErrorCode.TRAINING_JOB_TIMEOUT, "E", "job over max duration", "N", 500),
    ErrorSpec(L07ErrorCode.CHECKPOINT_RECOVERY_FAILED, "E", "resume failed; restart from scratch", "1×", 500),
    ErrorSpec(L07ErrorCode.NEGATIVE_FEEDBACK_LOOP_DETECTED, "C", "quality falling across models; breaker opens", "N", 500),
    ErrorSpec(L07ErrorCode.MODEL_QUALITY_BELOW_MINIMUM, "C", "deployed model under minimum; rollback", "N", 500),
    ErrorSpec(L07ErrorCode.TRAINING_DATA_QUALITY_DECLINING, "W", "mean example quality falling", "D", 500),
    ErrorSpec(L07ErrorCode.GPU_RESOURCE_EXHAUSTION, "E", "no capacity; job queued", "Y", 500),
    ErrorSpec(L07ErrorCode.MODEL_SERVING_LATENCY_DEGRADATION, "W", "serving latency over target", "D", 500),
    ErrorSpec(L07ErrorCode.MODEL_INFERENCE_ERROR_RATE_HIGH, "W", "inference errors over threshold", "D", 500),
    ErrorSpec(L07ErrorCode.DISK_SPACE_EXHAUSTED, "E", "artifact storage full", "N", 500),
    ErrorSpec(L07ErrorCode.METRICS_EXPORT_FAILURE, "W", "metrics export failed; training continues", "Y", 500),
    ErrorSpec(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID, "E", "out of range (API: 400; config file: defaults used)", "N", 400),
    ErrorSpec(L07ErrorCode.CURRICULUM_SCHEDULE_INVALID, "E", "default easy→hard schedule used", "D", 400),
    ErrorSpec(L07ErrorCode.COST_BENEFIT_ANALYSIS_NEGATIVE, "W", "cost exceeds benefit; request rejected", "N", 500),
    ErrorSpec(L07ErrorCode.TRAINING_DATA_INSUFFICIENT_DIVERSITY, "W", "data too uniform", "D", 500),
    ErrorSpec(L07ErrorCode.BASE_MODEL_VERSION_OBSOLETE, "W", "newer base model available", "D", 500),
    ErrorSpec(L07ErrorCode.L06_QUALITY_SCORE_SCHEMA_MISMATCH, "E", "L06 schema version not supported", "N", 400),
    ErrorSpec(L07ErrorCode.L02_TRACE_SCHEMA_INCOMPATIBLE, "E", "L02 schema version not supported", "N", 400),
    ErrorSpec(L07ErrorCode.DISTILLATION_STUDENT_ACCURACY_LOW, "W", "student below its share of teacher accuracy", "Y (longer schedule)", 500),
    ErrorSpec(L07ErrorCode.DISTILLATION_TEMPERATURE_INVALID, "E", "temperature invalid; 4.0 used", "D", 500),
    ErrorSpec(L07ErrorCode.KNOWLEDGE_TRANSFER_FAILED, "E", "student did not learn", "1×", 500),
    ErrorSpec(L07ErrorCode.QUANTIZATION_ACCURACY_LOSS, "W", "accuracy loss from quantization; INT8 used", "D", 500),
    ErrorSpec(L07ErrorCode.ADAPTER_LOADING_FAILURE, "E", "LoRA adapter missing or unreadable", "N", 500),
    ErrorSpec(L07ErrorCode.ADAPTER_INCOMPATIBILITY, "E", "adapter rank or dimensions do not match the base", "N", 500),
    ErrorSpec(L07ErrorCode.TRAINING_COST_THRESHOLD_EXCEEDED, "E", "over the approved budget", "N", 402),
    ErrorSpec(L07ErrorCode.GPU_HOUR_QUOTA_EXCEEDED, "E", "monthly GPU-hour quota exceeded", "N", 402),
    ErrorSpec(L07ErrorCode.COST_ESTIMATION_INACCURATE, "W", "actual cost far from the estimate", "D", 500),
    ErrorSpec(L07ErrorCode.ROI_INSUFFICIENT_FOR_DEPLOYMENT, "W", "ROI under the threshold", "N", 500),
    ErrorSpec(L07ErrorCode.METRICS_CARDINALITY_EXPLOSION, "W", "too many label values", "D", 500),
    ErrorSpec(L07ErrorCode.MONITORING_DASHBOARD_UNAVAILABLE, "W", "dashboard unreachable", "Y", 500),
    ErrorSpec(L07ErrorCode.ALERT_DELIVERY_FAILURE, "W", "alert not delivered", "Y", 500),
    ErrorSpec(L07ErrorCode.TRACE_EXPORT_FAILURE, "W", "OTel export failed", "Y", 500),
    ErrorSpec(L07ErrorCode.AUDIT_LOG_WRITE_FAILURE, "E", "audit write failed; the audited operation MUST NOT commit", "Y", 500),
    ErrorSpec(L07ErrorCode.KUBERNETES_API_ERROR, "E", "K8s call failed", "Y", 500),
    ErrorSpec(L07ErrorCode.CONTAINER_STARTUP_FAILURE, "E", "training container/worker did not start", "Y", 500),
    ErrorSpec(L07ErrorCode.PERSISTENT_VOLUME_MOUNT_FAILURE, "E", "volume mount failed", "Y", 500),
    ErrorSpec(L07ErrorCode.NETWORK_CONNECTIVITY_ERROR, "E", "network failure", "Y", 500),
    ErrorSpec(L07ErrorCode.SERVICE_ACCOUNT_PERMISSION_ERROR, "E", "missing permission", "N", 403),
    ErrorSpec(L07ErrorCode.CONFIGURATION_NOT_FOUND, "E", "required configuration missing", "N", 500),
    ErrorSpec(L07ErrorCode.UNHANDLED_EXCEPTION, "E", "unexpected error; stack trace logged", "N", 500),
    ErrorSpec(L07ErrorCode.TRACE_LIMIT_EXCEEDED, "E", "more than 1000 steps, or parsing longer than 5000 ms", "N", 400),
    ErrorSpec(L07ErrorCode.DATASET_NOT_FOUND, "E", "unknown dataset_id", "N", 404),
    ErrorSpec(L07ErrorCode.SPLIT_RATIOS_INVALID, "E", "ratios out of range or not summing to 1", "N", 400),
    ErrorSpec(L07ErrorCode.EVENT_AUTHENTICITY_FAILED, "E", "source not allowed, or event signature invalid", "N", 400),
    ErrorSpec(L07ErrorCode.MODEL_NOT_FOUND, "E", "unknown model_id", "N", 404),
    ErrorSpec(L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED, "E", "transition not in §4.2", "N", 409),
    ErrorSpec(L07ErrorCode.STAGE_APPROVAL_MISSING, "E", "the required approvals are not recorded", "N", 409),
    ErrorSpec(L07ErrorCode.TRAINING_JOB_NOT_FOUND, "E", "unknown job_id", "N", 404),
)

ERROR_TABLE: dict[L07ErrorCode, ErrorSpec] = {row.code: row for row in _ROWS}


class L07Error(Exception):
    """The single exception type raised by the layer.

    Args:
        code: An ``L07ErrorCode`` or its string form (``"E7250"``).
        message: Human-readable detail; defaults to the table's meaning.
        **context: Structured details (ids, field names, allowed values) kept in ``details``.
    """

    def __init__(self, code: L07ErrorCode | str, message: str | None = None, **context: Any) -> None:
        self.code = L07ErrorCode(code)
        self.spec = ERROR_TABLE[self.code]
        self.message = message or self.spec.message
        self.details: dict[str, Any] = context
        super().__init__(f"{self.code.value} {self.code.name}: {self.message}")

    @property
    def context(self) -> dict[str, Any]:
        return self.details

    @property
    def retryable(self) -> bool:
        return self.spec.retryable

    @property
    def http_status(self) -> int:
        return self.spec.http_status

    def to_dict(self) -> dict[str, Any]:
        """The API's error body: ``{code, message, detail}``."""
        return {"code": self.code.value, "name": self.code.name, "message": self.message, "detail": self.details}
