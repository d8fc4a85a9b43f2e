"""L07 Learning Layer: turns the platform's execution stream into better models.

events -> training examples -> quality filter -> versioned datasets -> LoRA fine-tuning / reward models /
preference optimisation / distillation -> model registry -> validation gates -> signed release to L04.

Importing the package is cheap: torch and transformers load only inside training and inference functions.
"""

from .models import *  # noqa: F401,F403
from .models import __all__ as _model_names

__version__ = "0.1.0"

__all__ = list(_model_names) + ["__version__"]
