"""The models of a distillation: the teacher loaded for inference, and the student derived from it (contract §5.7).

A student is the teacher's own Hugging Face config made smaller (fewer layers, optionally narrower) by
:func:`student_config`, and initialised from the teacher where shapes allow by :func:`derive_student`. Services call
:func:`student_config` at submission to reject a student that is not smaller than its teacher, before any job runs.

Heavy libraries are imported inside functions: this module may be imported without torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ...models.error_codes import L07Error, L07ErrorCode
from ..generation import load_model

log = logging.getLogger(__name__)


class StudentSpec(BaseModel):
    """How to derive a student from the teacher's configuration.

    Attributes:
        num_layers: Decoder layers of the student.
        hidden_size: Student width; default the teacher's. A narrower student gets its embeddings by projecting the
            teacher's onto their top principal directions; its layers start fresh.
        intermediate_size: MLP width; default the teacher's when the width is the teacher's, else scaled with it.
        num_attention_heads: Default: the teacher's head size is kept and the head count follows the width.
        num_key_value_heads: Default: the teacher's query/key-value group ratio is kept where it divides.
        layer_indices: Teacher layers copied into the student (same width only); default evenly spaced, first and
            last included.
        init_from_teacher: Copy teacher weights where shapes allow (otherwise a seeded random initialisation).
    """

    model_config = ConfigDict(extra="forbid")

    num_layers: int = Field(default=4, ge=1, le=128)
    hidden_size: int | None = Field(default=None, ge=8)
    intermediate_size: int | None = Field(default=None, ge=8)
    num_attention_heads: int | None = Field(default=None, ge=1)
    num_key_value_heads: int | None = Field(default=None, ge=1)
    layer_indices: list[int] | None = None
    init_from_teacher: bool = True


def count_parameters(model: Any) -> int:
    """Distinct parameters of a model (tied embedding and output head counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_teacher(model_dir: str | Path, adapter_dir: str | Path | None = None) -> tuple[Any, Any]:
    """Load the teacher for inference; a LoRA adapter is merged into the base weights.

    Merging makes the teacher one plain model, so its logits come from a single forward without the adapter's
    extra matmuls and the code below never has to know whether the teacher was an adapter.

    Returns:
        ``(tokenizer, model)`` in eval mode, tokenizer left-padded for generation.

    Raises:
        L07Error: E7032 when the model cannot load, E7604 when the adapter cannot.
    """
    tokenizer, model = load_model(model_dir, adapter_dir, device=default_device())
    if adapter_dir is not None:
        model = model.merge_and_unload()
        model.eval()
    return tokenizer, model


def _even_layers(n_teacher: int, n_student: int) -> list[int]:
    if n_student == 1:
        return [0]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def student_config(teacher_config: Any, spec: StudentSpec) -> Any:
    """The teacher's config shrunk to ``spec`` (defaults follow the teacher's head size and grouping).

    Raises:
        L07Error: E7500 when the student would not be smaller than the teacher, or heads do not divide.
    """
    config = teacher_config.__class__.from_dict(teacher_config.to_dict())
    t_hidden = teacher_config.hidden_size
    t_heads = teacher_config.num_attention_heads
    head_dim = getattr(teacher_config, "head_dim", None) or t_hidden // t_heads
    hidden = spec.hidden_size or t_hidden
    if hidden > t_hidden or spec.num_layers > teacher_config.num_hidden_layers:
        raise L07Error(
            L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID,
            f"a student must be smaller than its teacher ({teacher_config.num_hidden_layers} layers,"
            f" width {t_hidden}); got {spec.num_layers} layers, width {hidden}",
        )
    heads = spec.num_attention_heads or max(1, hidden // head_dim)
    if hidden % heads:
        raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID, f"hidden_size {hidden} not divisible by {heads} heads")
    t_kv = getattr(teacher_config, "num_key_value_heads", None) or t_heads
    group = max(1, t_heads // t_kv)
    kv = spec.num_key_value_heads or (heads // group if heads % group == 0 and heads >= group else heads)
    if heads % kv:
        raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID, f"{heads} heads not divisible by {kv} key-value heads")
    intermediate = spec.intermediate_size or (
        teacher_config.intermediate_size if hidden == t_hidden
        else int(round(teacher_config.intermediate_size * hidden / t_hidden))
    )
    config.num_hidden_layers = spec.num_layers
    config.hidden_size = hidden
    config.intermediate_size = intermediate
    config.num_attention_heads = heads
    config.num_key_value_heads = kv
    if hasattr(config, "head_dim"):
        config.head_dim = hidden // heads
    for attr in ("layer_types",):  # per-layer lists must shrink with the layer count
        value = getattr(config, attr, None)
        if isinstance(value, list):
            setattr(config, attr, value[: spec.num_layers])
    return config


def derive_student(
    teacher_dir: str | Path,
    spec: StudentSpec,
    out_dir: str | Path,
    seed: int = 42,
    adapter_dir: str | Path | None = None,
    teacher: tuple[Any, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Build a student from the teacher's configuration and save it (weights + tokenizer) to ``out_dir``.

    Initialisation where shapes allow (``spec.init_from_teacher``):

    * same width: token embeddings, output head and final norm are copied, and student layer ``i`` is a copy of
      teacher layer ``layer_indices[i]`` (evenly spaced, first and last included), tensor by tensor wherever the
      shapes agree (so a student with a narrower MLP still inherits the attention weights);
    * narrower width ``d``: the embedding matrix ``E`` (vocab x D) is projected onto its top-``d`` right singular
      vectors, ``E @ V[:, :d]`` (the best rank-``d`` linear summary of the teacher's token geometry); the output head
      likewise when untied. Layers start from the seeded random initialisation, since no teacher tensor fits.

    Args:
        teacher_dir: Teacher model folder.
        spec: Student shape.
        out_dir: Where the student is saved.
        seed: Seed of the random initialisation of whatever is not copied.
        adapter_dir: Teacher's LoRA adapter (merged first).
        teacher: An already loaded ``(tokenizer, model)`` teacher, to avoid loading it twice.

    Returns:
        The student folder and a description of the initialisation (layers copied, tensors copied, method).

    Raises:
        L07Error: E7500 when the spec is not smaller than the teacher or inconsistent.
    """
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer, teacher_model = teacher or load_teacher(teacher_dir, adapter_dir)
    config = student_config(teacher_model.config, spec)
    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_config(config)
    info: dict[str, Any] = {"method": "random", "layer_indices": [], "tensors_copied": 0, "tensors_total": 0}
    s_state = student.state_dict()
    info["tensors_total"] = len(s_state)
    if spec.init_from_teacher:
        t_state = teacher_model.state_dict()
        n_t = teacher_model.config.num_hidden_layers
        indices = spec.layer_indices or _even_layers(n_t, spec.num_layers)
        if len(indices) != spec.num_layers or any(not 0 <= i < n_t for i in indices):
            raise L07Error(
                L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID,
                f"layer_indices must name {spec.num_layers} teacher layers in [0, {n_t}); got {indices}",
            )
        new_state: dict[str, Any] = {}
        same_width = config.hidden_size == teacher_model.config.hidden_size
        for name, tensor in s_state.items():
            source = name
            if ".layers." in name:
                prefix, rest = name.split(".layers.", 1)
                idx, tail = rest.split(".", 1)
                source = f"{prefix}.layers.{indices[int(idx)]}.{tail}"
            t_tensor = t_state.get(source)
            if t_tensor is not None and t_tensor.shape == tensor.shape:
                new_state[name] = t_tensor.detach().float().cpu().clone()
            elif t_tensor is not None and not same_width and name.endswith(("embed_tokens.weight", "lm_head.weight")):
                new_state[name] = _project_rows(t_tensor.detach().cpu(), tensor.shape[1])
        student.load_state_dict(new_state, strict=False)
        if getattr(config, "tie_word_embeddings", False):
            student.tie_weights()
        info.update(
            method="teacher_layers" if same_width else "teacher_embedding_svd",
            layer_indices=indices if same_width else [],
            tensors_copied=len(new_state),
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    info.update(teacher_parameters=count_parameters(teacher_model), student_parameters=count_parameters(student))
    log.info("student derived: %s", info)
    return out, info


def _project_rows(matrix: Any, width: int) -> Any:
    """Project each row of ``matrix`` onto its top-``width`` right singular vectors."""
    import torch

    _, _, vh = torch.linalg.svd(matrix.float(), full_matrices=False)
    return (matrix.float() @ vh[:width].T).contiguous()
