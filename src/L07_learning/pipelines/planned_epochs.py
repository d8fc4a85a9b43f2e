"""Training on a planned stream: the curriculum's epochs, in the planner's order, fed to the Trainer as they are.

The curriculum planner (``services/curriculum_planner.py``) decides, before the job's child starts, which training
examples each epoch holds and in which order (``JobConfig.use_curriculum`` / ``curriculum``). The job spec carries
that plan as ``train_order``: one list of indices into ``train_rows`` per epoch. Here it becomes one stream.

Why one pass with a sequential sampler: Hugging Face's Trainer shuffles its training set every epoch
(``train_sampling_strategy="random"``) and runs every epoch over the same set, so neither the order nor the staged
subsets (easy, then easy+medium, then all) would survive. The planned epochs are concatenated into one dataset that
the Trainer reads once (``num_train_epochs=1``) with ``train_sampling_strategy="sequential"``; any shuffling the job
asked for (``JobConfig.shuffle``) was already applied by the planner inside each stage, with the job's seed.
Evaluation and checkpoints keep their per-epoch meaning: a callback asks for them at the step that ends each planned
epoch when the job's strategy is ``epoch``. Resuming from a checkpoint skips the batches already trained, as the
Trainer does for any sequential sampler, so a resumed job sees the rest of the same stream.

Only ``models/`` is imported at module level; transformers inside functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..models.error_codes import L07Error, L07ErrorCode


@dataclass
class PlannedStream:
    """The planned epochs flattened: ``rows`` in training order and the cumulative example count at each epoch end."""

    rows: list[Any]
    epoch_sizes: list[int]

    @property
    def epoch_ends(self) -> list[int]:
        ends, total = [], 0
        for size in self.epoch_sizes:
            total += size
            ends.append(total)
        return ends

    def end_steps(self, examples_per_step: int) -> list[int]:
        """The optimizer step that trains the last example of each planned epoch."""
        return [math.ceil(end / examples_per_step) for end in self.epoch_ends]

    def summary(self) -> dict[str, Any]:
        return {"planned_epochs": len(self.epoch_sizes), "epoch_sizes": list(self.epoch_sizes),
                "stream_examples": len(self.rows), "sampler": "sequential"}


def planned_stream(rows: Sequence[Any], order: Sequence[Sequence[int]]) -> PlannedStream:
    """The rows of ``order`` (one list of indices per epoch) as one stream.

    Raises:
        L07Error: E7031 when the plan is empty or names an index outside ``rows`` (a spec that does not belong to
            its rows must not train on something else).
    """
    if not order or not any(order):
        raise L07Error(L07ErrorCode.DATASET_LOADING_FAILURE, "the curriculum plan holds no training example")
    stream: list[Any] = []
    for epoch, indices in enumerate(order):
        for i in indices:
            if not isinstance(i, int) or not 0 <= i < len(rows):
                raise L07Error(L07ErrorCode.DATASET_LOADING_FAILURE,
                               f"curriculum plan epoch {epoch} names example {i!r}; the train split has {len(rows)}",
                               epoch=epoch, index=i)
            stream.append(rows[i])
    return PlannedStream(rows=stream, epoch_sizes=[len(e) for e in order])


def follow_plan(args: Any, stream: PlannedStream, world_size: int = 1) -> Any:
    """Set ``args`` (a ``TrainingArguments``) to read ``stream`` once, in order; return the epoch-end callback."""
    from transformers import TrainerCallback

    eval_each_epoch = str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "epoch"
    save_each_epoch = str(getattr(args.save_strategy, "value", args.save_strategy)) == "epoch"
    args.num_train_epochs = 1
    args.train_sampling_strategy = "sequential"
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, world_size)
    ends = set(stream.end_steps(per_step)[:-1])  # the Trainer itself evaluates and saves at the end of its one pass

    class _EpochEnds(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):  # type: ignore[no-untyped-def]
            if state.global_step in ends:
                control.should_evaluate = control.should_evaluate or eval_each_epoch
                control.should_save = control.should_save or save_each_epoch
            return control

    return _EpochEnds()
