"""A small PPO loop of our own (contract §8 #27: TRL 1.16 ships no PPO trainer and no value-head model).

One iteration: sample answers from the LoRA policy for a rollout of prompts; score them with the reward model;
per-token rewards are ``−kl_penalty_coeff · (log π − log π_ref)`` plus the reward-model score on the last answer
token; advantages by GAE (``gae_gamma``, ``gae_lambda``), whitened; then ``optimization_epochs`` passes over
mini-batches of the clipped surrogate (``clip_ratio``), a value loss for a linear value head on the policy's last
hidden state, and an entropy bonus (``entropy_coeff``). The reference is the same network with the adapter off.

The ``PolicyGuard`` of ``guard`` runs every ``guard_every_steps`` iterations (KL budget, reward hacking); the
loop stops early when the mean rollout reward has not improved for ``early_stopping_patience`` iterations.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from ...models.reward_signal import RLHFConfig
from .guard import PolicyGuard
from .reward_model import RewardScorer

log = logging.getLogger(__name__)

VALUE_LOSS_COEFF = 0.5
"""Weight of the value loss against the policy loss (the usual PPO choice)."""
MAX_GRAD_NORM = 1.0
PLATEAU_MIN_DELTA = 1e-3
"""A rollout reward must beat the best so far by this much to count as progress."""


def _rollout(policy: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int):  # type: ignore[no-untyped-def]
    """Sample answers; returns (ids, attention_mask, response_mask over shifted positions, prompt width, texts)."""
    import torch

    device = next(policy.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    finally:
        tokenizer.padding_side = side
    with torch.no_grad():
        ids = policy.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, top_k=0, top_p=1.0,
                              temperature=1.0, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id)
    width = enc["input_ids"].shape[1]
    new = ids[:, width:]
    # Keep each answer up to and including its first EOS; what follows is padding from generate().
    is_eos = new == tokenizer.eos_token_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    keep = ~after_eos
    attn = torch.cat([enc["attention_mask"], keep.long()], dim=1)
    resp = torch.zeros_like(ids[:, 1:], dtype=torch.bool)
    resp[:, width - 1 :] = keep
    texts = tokenizer.batch_decode(new.masked_fill(~keep, tokenizer.pad_token_id), skip_special_tokens=True)
    return ids, attn, resp, texts


def _forward(policy: Any, value_head: Any, ids: Any, attn: Any) -> tuple[Any, Any, Any]:
    """Per-position log-probs of the next token, entropies and values (shifted: position j predicts token j+1)."""
    out = policy(input_ids=ids, attention_mask=attn, output_hidden_states=True)
    logits = out.logits[:, :-1].float()
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    values = value_head(out.hidden_states[-1][:, :-1].float()).squeeze(-1)
    return logp, entropy, values


def _masked_mean(x: Any, mask: Any) -> Any:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def _gae(rewards: Any, values: Any, mask: Any, gamma: float, lam: float) -> tuple[Any, Any]:
    """Generalised advantage estimation over the masked (answer) positions of each row."""
    import torch

    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], device=rewards.device)
    next_value = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t].float()
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = m * (delta + gamma * lam * last) + (1 - m) * last
        adv[:, t] = last * m
        next_value = m * values[:, t] + (1 - m) * next_value
    return adv, adv + values


def run_ppo(
    policy: Any,
    tokenizer: Any,
    scorer: RewardScorer,
    formatted_prompts: Sequence[str],
    config: RLHFConfig,
    *,
    guard: PolicyGuard | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run PPO on ``policy`` (a PeftModel whose disabled adapter is the reference).

    Args:
        policy: The LoRA policy (trainable adapter).
        tokenizer: Its tokenizer (pad token set).
        scorer: Reward model.
        formatted_prompts: Training prompts, already chat-formatted.
        config: ``rollout_size``, ``mini_batch_size``, ``optimization_epochs``, learning rates, GAE, clip, entropy
            and KL coefficients, ``early_stopping_patience``; iterations = ``max_steps`` or ``epochs`` passes over
            the prompts.
        guard: Checked every ``guard_every_steps`` iterations; a True answer stops the loop.
        progress: Called after each iteration.
        should_stop: Polled after each iteration (cancellation).

    Returns:
        ``{iterations, loss_curve, reward_curve, kl_curve, stopped, cancelled}``.
    """
    import torch

    torch.manual_seed(config.seed)
    device = next(policy.parameters()).device
    hidden = policy.get_base_model().config.get_text_config().hidden_size
    value_head = torch.nn.Linear(hidden, 1).to(device)
    torch.nn.init.zeros_(value_head.weight)
    torch.nn.init.zeros_(value_head.bias)
    policy_params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([
        {"params": policy_params, "lr": config.learning_rate_policy},
        {"params": value_head.parameters(), "lr": config.learning_rate_value_fn},
    ])
    prompts = list(formatted_prompts)
    rollout = min(config.rollout_size, len(prompts))
    iterations = config.max_steps or config.epochs * math.ceil(len(prompts) / rollout)
    curves: dict[str, list[float]] = {"loss_curve": [], "reward_curve": [], "kl_curve": []}
    best, since_best, stopped, cancelled, cursor = -math.inf, 0, "completed", False, 0
    it = 0
    for it in range(1, iterations + 1):
        batch = [prompts[(cursor + i) % len(prompts)] for i in range(rollout)]
        cursor = (cursor + rollout) % len(prompts)
        policy.eval()
        ids, attn, resp, texts = _rollout(policy, tokenizer, batch, config.max_new_tokens)
        scores = torch.tensor(scorer.score_formatted(batch, texts), device=device)
        with torch.no_grad():
            old_logp, _, old_values = _forward(policy, value_head, ids, attn)
            with policy.disable_adapter():
                ref_logp, _, _ = _forward(policy, value_head, ids, attn)
        mask = resp.float()
        kl_tok = (old_logp - ref_logp) * mask
        rewards = -config.kl_penalty_coeff * kl_tok
        last_idx = (resp.long().cumsum(1) * resp.long()).argmax(1)  # last answer position of each row
        rewards[torch.arange(len(batch), device=device), last_idx] += scores
        adv, returns = _gae(rewards, old_values * mask, mask, config.gae_gamma, config.gae_lambda)
        mean_adv, std_adv = _masked_mean(adv, mask), torch.sqrt(_masked_mean((adv - _masked_mean(adv, mask)) ** 2, mask))
        adv = (adv - mean_adv) / (std_adv + 1e-8) * mask

        policy.train()
        losses = []
        for _ in range(config.optimization_epochs):
            order = torch.randperm(len(batch), device=device)
            for start in range(0, len(batch), config.mini_batch_size):
                mb = order[start : start + config.mini_batch_size]
                logp, entropy, values = _forward(policy, value_head, ids[mb], attn[mb])
                m = mask[mb]
                ratio = (logp - old_logp[mb]).exp()
                pg = torch.max(-adv[mb] * ratio,
                               -adv[mb] * ratio.clamp(1 - config.clip_ratio, 1 + config.clip_ratio))
                loss = (_masked_mean(pg, m) + VALUE_LOSS_COEFF * _masked_mean((values - returns[mb]) ** 2, m)
                        - config.entropy_coeff * _masked_mean(entropy, m))
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy_params + list(value_head.parameters()), MAX_GRAD_NORM)
                opt.step()
                losses.append(loss.item())
        mean_reward = float(scores.mean())
        mean_kl = float(kl_tok.sum() / mask.sum().clamp(min=1))
        curves["loss_curve"].append(sum(losses) / len(losses))
        curves["reward_curve"].append(mean_reward)
        curves["kl_curve"].append(mean_kl)
        log.info("ppo iteration %d: reward %.3f kl %.4f loss %.4f", it, mean_reward, mean_kl, curves["loss_curve"][-1])
        if progress is not None:
            progress({"phase": "policy", "step": it, "max_steps": iterations, "loss": curves["loss_curve"][-1],
                      "reward": mean_reward, "kl": mean_kl})
        if should_stop is not None and should_stop():
            cancelled, stopped = True, "cancelled"
            break
        if guard is not None and it % guard.every == 0 and guard.check(it):
            stopped = guard.stopped_reason
            break
        if mean_reward > best + PLATEAU_MIN_DELTA:
            best, since_best = mean_reward, 0
        else:
            since_best += 1
            if config.early_stopping_patience and since_best >= config.early_stopping_patience:
                stopped = "plateau"
                break
    policy.eval()
    return {"iterations": it, "stopped": stopped, "cancelled": cancelled, **curves}
