"""Resolve ``JobConfig.target_modules`` against a model's architecture (contract §8 #14).

The contract's defaults (``q_proj``, ``v_proj``) are Llama-style names. Other architectures name the same projections
differently (GPT-2 fuses q/k/v into ``c_attn``), so requested names are mapped per architecture. Names that do not
resolve are refused with E7036; nothing is silently dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..models.error_codes import L07Error, L07ErrorCode

_LLAMA_STYLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Linear layers LoRA can wrap, per ``config.model_type``.
ARCHITECTURE_MODULES: dict[str, tuple[str, ...]] = {
    "llama": _LLAMA_STYLE,
    "mistral": _LLAMA_STYLE,
    "qwen2": _LLAMA_STYLE,
    "qwen3": _LLAMA_STYLE,
    "gemma": _LLAMA_STYLE,
    "gemma2": _LLAMA_STYLE,
    "olmo": _LLAMA_STYLE,
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "gptj": ("q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "bloom": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "falcon": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}

# Llama-style names -> the module that holds the same projection in another architecture.
ALIASES: dict[str, dict[str, str]] = {
    "gpt2": {"q_proj": "c_attn", "k_proj": "c_attn", "v_proj": "c_attn", "o_proj": "c_proj",
             "up_proj": "c_fc", "down_proj": "c_proj"},
    "gpt_neox": {"q_proj": "query_key_value", "k_proj": "query_key_value", "v_proj": "query_key_value",
                 "o_proj": "dense", "up_proj": "dense_h_to_4h", "down_proj": "dense_4h_to_h"},
    "bloom": {"q_proj": "query_key_value", "k_proj": "query_key_value", "v_proj": "query_key_value",
              "o_proj": "dense", "up_proj": "dense_h_to_4h", "down_proj": "dense_4h_to_h"},
    "falcon": {"q_proj": "query_key_value", "k_proj": "query_key_value", "v_proj": "query_key_value",
               "o_proj": "dense", "up_proj": "dense_h_to_4h", "down_proj": "dense_4h_to_h"},
    "phi3": {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj",
             "up_proj": "gate_up_proj"},
    "phi": {"o_proj": "dense", "up_proj": "fc1", "down_proj": "fc2"},
    "gptj": {"o_proj": "out_proj", "up_proj": "fc_in", "down_proj": "fc_out"},
    "opt": {"o_proj": "out_proj", "up_proj": "fc1", "down_proj": "fc2"},
}


def model_type_of(model_dir: str | Path) -> str:
    """``config.model_type`` of a model folder.

    Raises:
        L07Error: E7032 when the folder has no readable ``config.json``.
    """
    path = Path(model_dir) / "config.json"
    try:
        return str(json.loads(path.read_text())["model_type"])
    except (OSError, ValueError, KeyError) as exc:
        raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE, f"no usable config.json in {model_dir}: {exc}") from exc


def linear_module_names(model_dir: str | Path) -> tuple[str, ...]:
    """Leaf names of the model's ``nn.Linear``-like modules: from the table, else by building it on the meta device."""
    model_type = model_type_of(model_dir)
    if model_type in ARCHITECTURE_MODULES:
        return ARCHITECTURE_MODULES[model_type]
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if type(module).__name__ in {"Linear", "Conv1D"} and not name.endswith("lm_head")
    }
    return tuple(sorted(names))


def resolve_target_modules(requested: list[str], model_dir: str | Path) -> list[str]:
    """Map requested LoRA target names onto the modules this architecture has.

    ``all-linear`` is passed through (peft resolves it). Each other name must either exist in the model or have an
    alias for the architecture.

    Raises:
        L07Error: E7036 naming every requested module that does not resolve.
    """
    if requested == ["all-linear"]:
        return requested
    model_type = model_type_of(model_dir)
    available = set(linear_module_names(model_dir))
    aliases = ALIASES.get(model_type, {})
    resolved: list[str] = []
    unknown: list[str] = []
    for name in requested:
        target = name if name in available else aliases.get(name)
        if target is None or target not in available:
            unknown.append(name)
        elif target not in resolved:
            resolved.append(target)
    if unknown:
        raise L07Error(
            L07ErrorCode.LORA_ADAPTER_CONFIG_INVALID,
            f"target_modules {unknown} do not exist in a {model_type} model; available: {sorted(available)}",
            model_type=model_type, unknown=unknown, available=sorted(available),
        )
    return resolved
