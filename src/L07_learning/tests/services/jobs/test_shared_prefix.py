"""Training on agent conversations runs the rows' shared prefix (system prompt and tool schemas) once: the loss and
every LoRA gradient equal those of running each row whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from L07_learning.pipelines.answer_loss import AnswerLossSFTTrainer, shared_prefix_length

CACHE = os.environ.get("L07_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "l07" / "models"))


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from L07_learning.pipelines.base_model import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0, cache_dir=CACHE)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0,
                                             init_lora_weights=False, task_type="CAUSAL_LM"))
    model.train()
    return model


def _batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    prefix = torch.randint(10, 1000, (40,), generator=gen)
    rows = [torch.cat([prefix, torch.randint(10, 1000, (n,), generator=gen)]) for n in (9, 5, 12)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1  # right padding, as the collator pads
    return {"input_ids": ids, "attention_mask": mask}


def _loss_and_grads(model, batch, min_prefix):  # type: ignore[no-untyped-def]
    model.zero_grad()
    causal_lm = model.get_base_model()
    hidden = AnswerLossSFTTrainer._hidden(causal_lm, dict(batch), min_prefix=min_prefix)
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1])
    targets = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads, hidden.detach()


def test_shared_prefix_gives_the_same_loss_hidden_states_and_gradients(lora_model) -> None:  # type: ignore[no-untyped-def]
    batch = _batch()
    assert shared_prefix_length(batch["input_ids"], batch["attention_mask"]) == 40
    whole_loss, whole_grads, whole_hidden = _loss_and_grads(lora_model, batch, min_prefix=10_000)
    shared_loss, shared_grads, shared_hidden = _loss_and_grads(lora_model, batch, min_prefix=8)
    real = batch["attention_mask"].bool()
    assert torch.allclose(whole_hidden[real], shared_hidden[real], atol=1e-4)
    assert shared_loss == pytest.approx(whole_loss, rel=1e-5)
    assert whole_grads.keys() == shared_grads.keys() and len(whole_grads) > 0
    for name, grad in whole_grads.items():
        assert torch.allclose(grad, shared_grads[name], atol=1e-5, rtol=1e-4), name


def test_rows_without_a_long_common_prefix_run_whole() -> None:
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 9, 9]])
    assert shared_prefix_length(ids, torch.ones_like(ids)) == 2
    assert shared_prefix_length(ids[:1], None) == 0
    same = torch.tensor([[5, 6, 7], [5, 6, 7]])
    assert shared_prefix_length(same, None) == 2  # each row keeps a token of its own
