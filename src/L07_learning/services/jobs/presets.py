"""Job configs from shipped presets (``configs/sft-<name>.yaml``), YAML files or plain dicts, range-checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.training_job import JobConfig

PRESETS_DIR = Path(__file__).resolve().parents[2] / "configs"


def coerce_config(config: JobConfig | dict[str, Any] | None) -> JobConfig:
    """A ``JobConfig`` from a model, a dict or None (defaults).

    Raises:
        L07Error: E7500 naming each out-of-range field.
    """
    if config is None:
        return JobConfig()
    if isinstance(config, JobConfig):
        return config
    try:
        return JobConfig(**config)
    except ValidationError as exc:
        problems = [{"field": ".".join(str(p) for p in e["loc"]), "error": e["msg"]} for e in exc.errors()]
        raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID,
                       "; ".join(f"{p['field']}: {p['error']}" for p in problems), problems=problems) from exc


def list_presets() -> list[str]:
    """Names of the shipped JobConfig presets (``configs/sft-<name>.yaml``)."""
    return sorted(p.stem[len("sft-"):] for p in PRESETS_DIR.glob("sft-*.yaml"))


def load_preset(name: str, overrides: dict[str, Any] | None = None) -> JobConfig:
    """A ``JobConfig`` from a shipped preset (e.g. ``cpu-small``) or a YAML file path, plus overrides.

    Raises:
        L07Error: E7905 unknown preset, E7500 out-of-range values.
    """
    path = Path(name)
    if not path.is_file():
        path = PRESETS_DIR / f"sft-{name}.yaml"
    if not path.is_file():
        raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND, f"no preset {name!r}; known: {list_presets()}")
    values = yaml.safe_load(path.read_text()) or {}
    return coerce_config({**values, **(overrides or {})})
