"""OpenAI's ``dpo`` fine-tuning method on `l07 serve`, driven through the real API (files, jobs, events) with the
`openai` client: a preference JSONL trains a real DPO policy on exactly its pairs, through the quality filter;
invalid hyperparameters and malformed files answer in OpenAI's error shape with E7xxx codes.

The model is the RLHF tests' tiny word-level Llama (``factories/rlhf.build_word_model``) and the file their
support-desk preferences: helpful answers preferred over dismissive ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from L07_learning.api import create_app
from L07_learning.api.config import ApiConfig
from L07_learning.store.db import Database
from L07_learning.tests.api.test_api import auth, make_keys
from L07_learning.tests.factories.openai_files import jsonl
from L07_learning.tests.factories.rlhf import TOPICS, build_word_model, make_pairs

BASE = "http://l07.test"
HYPERPARAMETERS = {"beta": 0.1, "n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 100,
                   # L07 extensions (RLHFConfig fields) that keep the tiny run to seconds and its guards out of the way.
                   "max_length": 64, "reward_training_epochs": 1, "max_new_tokens": 8, "max_kl_divergence": 5.0}


def preference_line(prompt: str, chosen: str, rejected: str) -> dict[str, Any]:
    return {"input": {"messages": [{"role": "user", "content": prompt}]},
            "preferred_output": [{"role": "assistant", "content": chosen}],
            "non_preferred_output": [{"role": "assistant", "content": rejected}]}


@pytest.fixture(scope="module")
def word_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_word_model(tmp_path_factory.mktemp("dpo") / "word-tiny")


@pytest.fixture
async def stack(settings, sqlite_db: Database,  # type: ignore[no-untyped-def]
                word_model: Path) -> AsyncIterator[dict[str, Any]]:
    app = create_app(settings=settings, db=sqlite_db, config=ApiConfig())
    service = app.state.l07.service
    base = await service.registry.register_base(str(word_model), name="word-tiny")
    keys = await make_keys(sqlite_db, settings)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)
    client = openai.AsyncOpenAI(base_url=f"{BASE}/v1", api_key=keys["trainer"], http_client=http, max_retries=0)
    yield {"service": service, "base": base, "keys": keys, "http": http, "client": client}
    await http.aclose()


def _margin(model: Any, tokenizer: Any, pairs: list[Any]) -> float:
    """Mean over the pairs of log p(chosen) - log p(rejected): what DPO raises (relative to the reference)."""
    import torch

    from L07_learning.pipelines.rlhf.common import format_prompt

    total = 0.0
    with torch.no_grad():
        for pair in pairs:
            prompt_ids = tokenizer(format_prompt(tokenizer, pair.prompt), add_special_tokens=False)["input_ids"]
            logps = []
            for answer in (pair.chosen, pair.rejected):
                answer_ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
                logits = model(input_ids=torch.tensor([prompt_ids + answer_ids])).logits[0]
                logp = logits[len(prompt_ids) - 1:-1].log_softmax(-1)
                logps.append(float(logp.gather(-1, torch.tensor(answer_ids)[:, None]).sum()))
            total += logps[0] - logps[1]
    return total / len(pairs)


@pytest.mark.slow  # a worker process imports torch and trains a reward model and a DPO policy (about 30 s on 2 cores)
async def test_dpo_job_trains_a_policy_on_the_uploaded_preference_pairs(stack: dict[str, Any]) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from L07_learning.services.registry.loading import resolve_model_dirs

    service, client = stack["service"], stack["client"]
    pairs = make_pairs(TOPICS[:20], per_topic=1, seed=0)
    body = jsonl([preference_line(p.prompt, p.chosen, p.rejected) for p in pairs]) + b"not json\n"
    uploaded = await client.files.create(file=("support-prefs.jsonl", body), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(
        model="word-tiny", training_file=uploaded.id, suffix="polite", seed=7,
        method={"type": "dpo", "dpo": {"hyperparameters": HYPERPARAMETERS}})
    assert job.status == "queued" and job.method is not None and job.method.type == "dpo"
    params = job.method.dpo.hyperparameters  # type: ignore[union-attr]
    assert (params.beta, params.n_epochs, params.batch_size, params.learning_rate_multiplier) == (0.1, 3, 4, 100)

    started = time.monotonic()
    worker = asyncio.create_task(service.sft_engine.run_worker_once())
    while (job := await client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() - started < 300, job
        await asyncio.sleep(0.5)
    await worker
    events = [e async for e in client.fine_tuning.jobs.list_events(job.id, limit=50)]
    messages = [e.message for e in reversed(events)]
    assert job.status == "succeeded", (job.error, messages[-5:])
    print(f"dpo job {time.monotonic() - started:.1f} s")

    # Every line through the quality filter: 20 pairs accepted, the broken line refused with its line number.
    assert any("20 lines accepted, 0 filtered (none), 1 refused" in m for m in messages)
    assert any(m.startswith("Training file line 21 refused: E7015") for m in messages)
    assert any("each with its preference pair" in m and "(RLHF)" in m for m in messages)
    assert any("fine-tuned model " + str(job.fine_tuned_model) in m for m in messages)

    # The DPO loss fell (it starts at ln 2, the policy equal to its reference).
    losses = [e.data["train_loss"] for e in reversed(events)  # type: ignore[index]
              if e.type == "metrics" and (e.data or {}).get("phase") == "policy" and "train_loss" in e.data]
    print(f"policy loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps")
    assert len(losses) >= 2 and losses[-1] < losses[0] - 0.05

    # The registered policy is the job's fine_tuned_model; trained on exactly the file's pairs.
    policy = await service.registry.get_model(job.fine_tuned_model)
    assert policy.name == "word-tiny-ft-polite" and policy.parent_model_id == stack["base"].model_id
    l07_job = await service.sft_engine.get_job_status(policy.training_job_id)
    assert l07_job.config["extra"]["preference_pairs"] == "stored"
    assert l07_job.config["extra"]["rlhf"]["algorithm"] == "dpo" and l07_job.config["extra"]["rlhf"]["seed"] == 7
    dataset = await service.curator.get_dataset(l07_job.dataset_id, l07_job.dataset_version)
    assert sorted(e.output_text for e in dataset.examples) == sorted(p.chosen for p in pairs)
    assert all(e.metadata["import"]["file"] == "support-prefs.jsonl" for e in dataset.examples)

    # The weights changed (LoRA B starts at zero) and the chosen-over-rejected margin rose on the file's pairs.
    model_dir, adapter_dir = await resolve_model_dirs(service.registry, job.fine_tuned_model)
    weights = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    assert sum(float(v.abs().sum()) for k, v in weights.items() if "lora_B" in k) > 0
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir).eval()
    with tuned.disable_adapter():
        before = _margin(tuned, tokenizer, pairs)
    after = _margin(tuned, tokenizer, pairs)
    print(f"chosen-rejected log-prob margin {before:.3f} -> {after:.3f}")
    assert after > before + 1.0


@pytest.mark.parametrize(("hyperparameters", "param"), [
    ({"beta": 0}, "hyperparameters.beta"),
    ({"beta": "high"}, "hyperparameters.beta"),
    ({"n_epochs": 50}, "hyperparameters.n_epochs"),
    ({"batch_size": 0}, "hyperparameters.batch_size"),
    ({"learning_rate_multiplier": -1}, "hyperparameters.learning_rate_multiplier"),
    ({"learning_rate_multiplier": 1000}, "hyperparameters.learning_rate_multiplier"),  # 5e-2 > RLHFConfig's 1e-2
    ({"temperature": 0.5}, "hyperparameters.temperature"),
    ({"algorithm": "ppo"}, "hyperparameters.algorithm"),  # the method is DPO
])
async def test_invalid_dpo_hyperparameters_are_refused_in_openais_error_shape(
        stack: dict[str, Any], hyperparameters: dict[str, Any], param: str) -> None:
    client, http = stack["client"], stack["http"]
    pairs = make_pairs(TOPICS[:3], per_topic=1)
    uploaded = await client.files.create(file=("p.jsonl", jsonl([preference_line(p.prompt, p.chosen, p.rejected)
                                                                  for p in pairs])), purpose="fine-tune")
    r = await http.post("/v1/fine_tuning/jobs", headers=auth(stack["keys"]["trainer"]), json={
        "model": "word-tiny", "training_file": uploaded.id,
        "method": {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "E7500", param)
    assert error["message"].startswith("E7500: ")
    assert (await client.fine_tuning.jobs.list()).data == []  # nothing was stored


async def test_a_malformed_preference_file_fails_the_dpo_job_with_each_lines_reason(stack: dict[str, Any]) -> None:
    client = stack["client"]
    good = make_pairs(TOPICS[:1], per_topic=1)[0]
    lines = [
        b"{not json\n",
        jsonl([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]),
        jsonl([{**preference_line(good.prompt, good.chosen, good.rejected), "non_preferred_output": []}]),
        jsonl([{**preference_line(good.prompt, good.chosen, good.rejected),
                "preferred_output": [{"role": "user", "content": good.chosen}]}]),
    ]
    uploaded = await client.files.create(file=("broken.jsonl", b"".join(lines)), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(model="word-tiny", training_file=uploaded.id,
                                               method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}})
    assert job.status == "failed" and job.error is not None and job.fine_tuned_model is None
    assert (job.error.code, job.error.param) == ("invalid_training_file", "training_file")
    events = [e.message for e in (await client.fine_tuning.jobs.list_events(job.id)).data]
    assert any("0 lines accepted, 0 filtered (none), 4 refused" in m for m in events)
    for line, code in ((1, "E7015"), (2, "E7010"), (3, "E7010"), (4, "E7110")):
        assert any(m.startswith(f"Training file line {line} refused: {code}") for m in events), (line, events)

    with pytest.raises(openai.BadRequestError) as err:
        await client.fine_tuning.jobs.create(model="word-tiny", training_file=uploaded.id,
                                             method={"type": "reinforcement"})
    assert err.value.param == "method.type" and "'supervised' or 'dpo'" in err.value.message
