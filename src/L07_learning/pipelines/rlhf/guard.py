"""The RLHF policy guard: KL to the reference (E7306) and reward hacking (E7305), checked while a policy trains.

Held-out validation here is the policy's agreement with L06's judgements on held-out pairs: the share of pairs where
the policy gives the chosen answer a higher mean token log-probability than the rejected one.

Only ``models/`` is imported at module level; torch is imported inside functions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ...models.error_codes import L07ErrorCode
from ...models.reward_signal import RLHFConfig
from .common import GuardAlert, Triplet, format_prompt, greedy_answers
from .reward_model import RewardScorer

log = logging.getLogger(__name__)


def _completion_batch(tokenizer: Any, prompts: Sequence[str], completions: Sequence[str],
                      device: str):  # type: ignore[no-untyped-def]
    """Right-padded prompt+completion ids and a mask over the positions that predict completion tokens."""
    import torch

    eos = tokenizer.eos_token or ""
    rows, masks = [], []
    for p, c in zip(prompts, completions, strict=True):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(c + eos, add_special_tokens=False)["input_ids"]
        rows.append(p_ids + c_ids)
        masks.append([0] * len(p_ids) + [1] * len(c_ids))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    comp = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        comp[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
    return ids.to(device), attn.to(device), comp.to(device)


class PolicyGuard:
    """Measures a policy against its reference and stops training on KL overrun (E7306) or reward hacking (E7305).

    ``measure()`` returns ``{kl, validation_accuracy, mean_reward, chosen_logprob}``:

    * ``kl``: mean per-token KL(policy ‖ reference) over the full vocabulary, on the answer tokens of held-out pairs;
    * ``validation_accuracy``: share of held-out pairs where the policy's mean answer log-probability ranks the
      chosen answer above the rejected one (agreement with L06);
    * ``mean_reward``: reward-model score of the policy's greedy answers to held-out prompts;
    * ``chosen_logprob``: mean per-token log-probability of the held-out chosen answers.

    ``check()`` records a measurement; on a KL overrun it restores the last good adapter weights ("previous
    checkpoint") and asks to stop; when reward is above its starting value while validation accuracy fell by more
    than the tolerance, it flags reward hacking and asks to stop.
    """

    def __init__(self, policy: Any, tokenizer: Any, scorer: RewardScorer, val_pairs: Sequence[Triplet],
                 val_prompts: Sequence[str], config: RLHFConfig) -> None:
        self.policy, self.tokenizer, self.scorer, self.config = policy, tokenizer, scorer, config
        self.val_pairs = list(val_pairs)
        self.val_prompts = [format_prompt(tokenizer, p) for p in val_prompts]
        self.every = config.guard_every_steps
        self.history: list[dict[str, float]] = []
        self.alerts: list[GuardAlert] = []
        self.stopped_reason = "completed"
        self.baseline: dict[str, float] | None = None
        self._good_state: dict[str, Any] | None = None
        self._good_step = 0

    # -- measurements -------------------------------------------------------------------------------------------
    def _token_logprobs(self, prompts: Sequence[str], completions: Sequence[str]) -> tuple[Any, Any, Any]:
        import torch

        device = next(self.policy.parameters()).device
        ids, attn, comp = _completion_batch(self.tokenizer, prompts, completions, device)
        with torch.no_grad():
            logits = self.policy(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
            with self.policy.disable_adapter():
                ref_logits = self.policy(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        mask = comp[:, 1:]
        return logits.log_softmax(-1), ref_logits.log_softmax(-1), (ids[:, 1:], mask)

    def measure(self) -> dict[str, float]:
        """One measurement of the current policy (see class docstring)."""
        was_training = self.policy.training
        self.policy.eval()
        try:
            prompts = [format_prompt(self.tokenizer, p.prompt) for p in self.val_pairs]
            kl_sum, kl_tokens, mean_lp = 0.0, 0, {}
            for key in ("chosen", "rejected"):
                logp, ref_logp, (targets, mask) = self._token_logprobs(prompts, [getattr(p, key) for p in self.val_pairs])
                kl = (logp.exp() * (logp - ref_logp)).sum(-1)
                kl_sum += float((kl * mask).sum())
                kl_tokens += int(mask.sum())
                tok_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                mean_lp[key] = ((tok_lp * mask).sum(-1) / mask.sum(-1).clamp(min=1)).tolist()
            agree = sum(c > r for c, r in zip(mean_lp["chosen"], mean_lp["rejected"], strict=True))
            answers = greedy_answers(self.policy, self.tokenizer, self.val_prompts, self.config.max_new_tokens)
            rewards = self.scorer.score_formatted(self.val_prompts, answers)
        finally:
            if was_training:
                self.policy.train()
        return {
            "kl": kl_sum / max(1, kl_tokens),
            "validation_accuracy": agree / max(1, len(self.val_pairs)),
            "mean_reward": sum(rewards) / max(1, len(rewards)),
            # DPO's known failure: it can lower the chosen answers' likelihood along with the rejected ones'.
            "chosen_logprob": sum(mean_lp["chosen"]) / max(1, len(mean_lp["chosen"])),
        }

    # -- guard ----------------------------------------------------------------------------------------------------
    def start(self) -> dict[str, float]:
        """Measure the starting policy (the baseline) and remember its weights as the first good state."""
        self.baseline = self.measure()
        self._snapshot(0)
        return self.baseline

    def _snapshot(self, step: int) -> None:
        self._good_state = {n: p.detach().clone() for n, p in self.policy.named_parameters() if p.requires_grad}
        self._good_step = step

    def _restore(self) -> None:
        import torch

        assert self._good_state is not None
        with torch.no_grad():
            for n, p in self.policy.named_parameters():
                if n in self._good_state:
                    p.copy_(self._good_state[n])

    def check(self, step: int) -> bool:
        """Measure at ``step``; returns True when training must stop."""
        assert self.baseline is not None, "call start() first"
        m = self.measure()
        m["step"] = float(step)
        self.history.append(m)
        log.info("guard step %d: kl %.4f val_acc %.3f reward %.3f", step, m["kl"], m["validation_accuracy"],
                 m["mean_reward"])
        if m["kl"] > self.config.max_kl_divergence:
            self._restore()
            self.alerts.append(GuardAlert(
                L07ErrorCode.POLICY_DIVERGENCE_THRESHOLD_EXCEEDED.value,
                f"mean KL {m['kl']:.4f} > {self.config.max_kl_divergence}; weights of step {self._good_step} restored",
                step, {"kl": m["kl"], "max_kl_divergence": self.config.max_kl_divergence,
                       "restored_step": self._good_step}))
            self.stopped_reason = "kl_exceeded"
            return True
        reward_up = m["mean_reward"] > self.baseline["mean_reward"]
        val_down = m["validation_accuracy"] < self.baseline["validation_accuracy"] - self.config.validation_tolerance
        if reward_up and val_down:
            self.alerts.append(GuardAlert(
                L07ErrorCode.REWARD_HACKING_DETECTED.value,
                "reward rose while held-out validation fell",
                step, {"baseline": self.baseline, "now": m}))
            self.stopped_reason = "reward_hacking"
            return True
        self._snapshot(step)
        return False
