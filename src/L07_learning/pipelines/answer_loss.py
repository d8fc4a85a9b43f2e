"""TRL's SFTTrainer with a loss that projects through the LM head only at answer tokens, on the CPU.

TRL's fused LM head scores only the positions with a label on Triton devices; elsewhere it scores every position
(prompt and padding included) so tile shapes stay fixed for compilers. On a CPU nothing recompiles, and with short
answers after long prompts most of that projection is wasted: measured on the demo's SmolLM2-135M batches (8
examples, ~114 tokens each, 40% answer), a training step took 13.8 s with TRL's head and 9.0 s with this one, with the
same losses to three decimals. The loss is the same token-mean negative log-likelihood TRL computes.

When every row of a batch starts with the same tokens (an agent's system prompt and tool schemas, often most of each
row), the backbone runs that prefix once and the rows' remainders attend to its keys and values
(:func:`shared_prefix_length`, :meth:`AnswerLossSFTTrainer._hidden`). The result is the same computation: the prefix's
activations are identical in every row, and autograd sums the gradient of the one shared copy over the rows exactly
as it would have summed the copies'. Measured on the loop tests' tool-choice batches (8 rows of ~340 tokens, 230
shared), see ``tests/services/jobs/test_shared_prefix.py`` for the equivalence.

Everywhere this shortcut does not apply (a GPU, several processes, another loss type, logit scaling or soft-capping,
a caller asking for the outputs), the trainer defers to TRL unchanged.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from trl import SFTTrainer

# Config attributes that change logits after the LM head; TRL's head applies them, this one does not.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")
# Collator fields that are not model inputs.
_NOT_MODEL_INPUTS = ("labels", "completion_mask", "assistant_masks")
# A shorter common prefix saves less than its extra forward call costs.
MIN_SHARED_PREFIX = 128


def _checkpointing(model: Any) -> bool:
    """Activation checkpointing recomputes layers without a cache, so the shared prefix cannot be used."""
    flag = getattr(model, "is_activation_checkpointing", None)
    return bool(flag if flag is not None else getattr(model, "is_gradient_checkpointing", False))


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> int:
    """How many leading tokens every row of the batch has in common (unpadded), leaving each row at least one token
    of its own; 0 for a single row."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0)
    if attention_mask is not None:
        same &= attention_mask.bool().all(dim=0)
    differs = (~same).nonzero()
    length = int(differs[0, 0]) if len(differs) else input_ids.shape[1]
    return min(length, input_ids.shape[1] - 1)


class AnswerLossSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose training and evaluation loss skip the LM head at positions without a label (CPU only)."""

    def _answer_only_head(self, model: Any) -> Any | None:
        """The causal LM to run by parts, or None when TRL's own loss must run."""
        if (self.accelerator.num_processes > 1 or self.compute_loss_func is not None
                or self.label_smoother is not None or self.args.loss_type != "nll" or self.aux_loss_enabled):
            return None
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        if causal_lm.device.type != "cpu":
            return None
        config = causal_lm.config.get_text_config()
        if any(getattr(config, name, None) not in (None, 1.0) for name in _LOGIT_TRANSFORMS):
            return None
        if causal_lm.base_model is causal_lm or causal_lm.get_output_embeddings() is None:
            return None  # no separate backbone and head to run by parts
        return causal_lm

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        causal_lm = None if return_outputs else self._answer_only_head(model)
        if causal_lm is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        kwargs = {k: v for k, v in inputs.items() if k not in _NOT_MODEL_INPUTS}
        hidden = self._hidden(causal_lm, kwargs)[:, :-1]
        targets = inputs["labels"][:, 1:]
        mask = targets != -100
        logits = causal_lm.get_output_embeddings()(hidden[mask]).float()
        total = F.cross_entropy(logits, targets[mask], reduction="sum")
        count = mask.sum() if num_items_in_batch is None else num_items_in_batch
        return total / torch.as_tensor(count, device=total.device).clamp(min=1)

    @staticmethod
    def _hidden(causal_lm: Any, kwargs: dict[str, Any], min_prefix: int = MIN_SHARED_PREFIX) -> torch.Tensor:
        """The backbone's last hidden states for the batch, the rows' common prefix computed once."""
        backbone = causal_lm.base_model
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        prefix = 0
        if ids is not None and set(kwargs) <= {"input_ids", "attention_mask"} and not _checkpointing(causal_lm):
            prefix = shared_prefix_length(ids, mask)
        if prefix < min_prefix:
            return backbone(**kwargs, use_cache=False).last_hidden_state
        rows, length = ids.shape
        head = backbone(input_ids=ids[:1, :prefix], use_cache=True)
        cache = head.past_key_values
        cache.batch_repeat_interleave(rows)  # differentiable: the rows' gradients flow back into the one prefix
        positions = torch.arange(prefix, length, device=ids.device).unsqueeze(0).expand(rows, -1)
        # transformers 5 names the argument ``cache`` (``past_key_values`` before)
        key = "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"
        tail = backbone(input_ids=ids[:, prefix:], attention_mask=mask, position_ids=positions, use_cache=True,
                        **{key: cache}).last_hidden_state
        return torch.cat([head.last_hidden_state.expand(rows, -1, -1), tail], dim=1)
