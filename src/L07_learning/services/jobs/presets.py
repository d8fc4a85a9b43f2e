"""Job configs from shipped presets (``configs/sft-<name>.yaml``), YAML files or plain dicts, range-checked; and the
recipe a job gets when its submitter names no preset (``select_recipe``: device, model size, dataset size -> preset).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
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
    overrides = dict(overrides or {})
    # The job records which recipe it ran (``l07 train`` prints it), whether chosen for it or named.
    extra = {**(values.pop("extra", None) or {}), **(overrides.pop("extra", None) or {})}
    extra.setdefault("recipe", {"preset": name, "reason": "named by the submitter"})
    return coerce_config({**values, **overrides, "extra": extra})


# --- recipes: the preset a job gets when its submitter names none ------------------------------------------------

TINY_MAX_PARAMETERS = 20_000_000
CPU_SMALL_MAX_PARAMETERS = 600_000_000
CPU_LARGE_DATASET = 2000


@dataclass(frozen=True)
class Recipe:
    """The preset chosen for a job and what chose it (recorded on the job as ``metrics.recipe``)."""

    preset: str
    reason: str
    device: str
    parameters: int
    train_examples: int

    def as_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "reason": self.reason, "device": self.device, "parameters": self.parameters,
                "train_examples": self.train_examples}


def select_recipe(device: str, parameters: int, train_examples: int) -> Recipe:
    """The measured preset for a device, a base model size and a train split size (see each ``configs/sft-*.yaml``).

    - under 20M parameters (test and development models): ``tiny``;
    - a CUDA device: ``gpu`` (the contract's defaults);
    - CPU, up to 600M parameters: ``cpu-small`` (``cpu-small-large``, one epoch, above 2,000 training examples);
    - CPU, larger models: ``cpu-small`` too (no larger CPU recipe was measured; the small-model one learns fastest
      per step of the ones tried).
    """
    size = f"{parameters / 1e6:.1f}M parameters"
    if parameters < TINY_MAX_PARAMETERS:
        return Recipe("tiny", f"{size} < {TINY_MAX_PARAMETERS // 1_000_000}M", device, parameters, train_examples)
    if device.startswith("cuda"):
        return Recipe("gpu", f"{device}, {size}", device, parameters, train_examples)
    if parameters <= CPU_SMALL_MAX_PARAMETERS and train_examples > CPU_LARGE_DATASET:
        return Recipe("cpu-small-large", f"cpu, {size}, {train_examples} training examples > {CPU_LARGE_DATASET}",
                      device, parameters, train_examples)
    why = ("no larger CPU recipe measured" if parameters > CPU_SMALL_MAX_PARAMETERS
           else f"<= {CPU_LARGE_DATASET} examples")
    return Recipe("cpu-small", f"cpu, {size}, {train_examples} training examples ({why})", device, parameters,
                  train_examples)


def count_parameters(model_dir: str | Path) -> int:
    """Parameters of a Hugging Face model folder, from its safetensors headers (no weights read, no torch).

    Falls back to an estimate from ``config.json`` (embeddings + per-layer attention and MLP) without safetensors.
    """
    root = Path(model_dir)
    total = 0
    for f in sorted(root.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__":
                total += math.prod(info.get("shape") or [1])
    if total:
        return total
    cfg = json.loads((root / "config.json").read_text()) if (root / "config.json").is_file() else {}
    cfg = cfg.get("text_config", cfg)
    h, layers = int(cfg.get("hidden_size", 0)), int(cfg.get("num_hidden_layers", 0))
    inter, vocab = int(cfg.get("intermediate_size", 4 * h)), int(cfg.get("vocab_size", 0))
    return vocab * h + layers * (4 * h * h + 3 * h * inter)


def model_depth(model_dir: str | Path) -> int | None:
    """The number of transformer blocks named in ``config.json`` (None when it does not say)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    depth = cfg.get("text_config", cfg).get("num_hidden_layers") or cfg.get("n_layer")
    return int(depth) if depth else None


def recipe_config(recipe: Recipe, overrides: dict[str, Any] | None, model_dir: str | Path) -> JobConfig:
    """The recipe's preset with the submitter's fields on top, fitted to the model and marked with its name.

    ``lora_top_layers`` of the preset is dropped for a model with no more blocks than that (it is then adapted whole);
    the submitter's own value is kept as given. ``extra.recipe`` records the recipe (preset and why).

    Raises:
        L07Error: E7500 for out-of-range overrides.
    """
    overrides = dict(overrides or {})
    path = PRESETS_DIR / f"sft-{recipe.preset}.yaml"
    values = yaml.safe_load(path.read_text()) or {}
    depth = model_depth(model_dir)
    top = values.get("lora_top_layers")
    if top is not None and depth is not None and depth <= top:
        values.pop("lora_top_layers")
    extra = {**(values.pop("extra", None) or {}), **(overrides.pop("extra", None) or {}), "recipe": recipe.as_dict()}
    return coerce_config({**values, **overrides, "extra": extra})
