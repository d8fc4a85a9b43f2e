"""The SFT pipeline: loss masking, LoRA target resolution, real training on a tiny model, generation, 2-process DDP,
and (slow) real fine-tuning of the SmolLM2 base model that beats the base on held-out exact match.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from L07_learning.models import JobConfig, L07Error
from L07_learning.tests import paths
from L07_learning.tests.factories.sft import tool_rows

CACHE = Path(os.environ.get("L07_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "l07" / "models")))
FAST = dict(learning_rate=1e-3, batch_size=8, lora_rank=8, lora_alpha=16, max_seq_length=256,
            gradient_checkpointing=False, validation_batch_size=16)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from L07_learning.pipelines.base_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0, cache_dir=CACHE)


def test_tiny_model_is_small_llama_with_chat_template(tiny_model: Path) -> None:
    from safetensors import safe_open

    config = json.loads((tiny_model / "config.json").read_text())
    assert config["model_type"] == "llama"
    with safe_open(str(tiny_model / "model.safetensors"), "pt") as f:
        params = sum(f.get_tensor(k).numel() for k in f.keys())
    assert 100_000 < params < 5_000_000
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


def test_loss_is_computed_on_the_assistant_answer_only(tiny_model: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from L07_learning.pipelines.sft_pipeline import tokenize_row

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    rows = tool_rows(2, seed=5)
    ds = Dataset.from_list([tokenize_row(r, tok) for r in rows])
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(tiny_model)), processing_class=tok, train_dataset=ds,
        args=SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, report_to="none", use_cpu=True,
                       max_length=256, bf16=False))
    items = [trainer.train_dataset[i] for i in range(2)]
    for row, item in zip(rows, items):
        ids, labels = item["input_ids"], item["labels"]
        trained = [i for i, lab in zip(ids, labels) if lab != -100]
        # Exactly the answer and its end-of-turn marker carry loss; the system prompt and question do not.
        assert tok.decode(trained) == row[-1]["content"] + "<|im_end|>\n"
        assert row[1]["content"] in tok.decode([i for i, lab in zip(ids, labels) if lab == -100])
    batch = trainer.data_collator(items)
    for b, item in enumerate(items):
        n = len(item["input_ids"])
        row_labels = batch["labels"][b].tolist()
        assert row_labels[:n] == item["labels"] and all(x == -100 for x in row_labels[n:])  # padding never trains


def test_target_modules_resolve_per_architecture(tiny_model: Path, tmp_path: Path) -> None:
    from L07_learning.pipelines.lora_targets import resolve_target_modules

    assert resolve_target_modules(["q_proj", "v_proj"], tiny_model) == ["q_proj", "v_proj"]
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert resolve_target_modules(["q_proj", "v_proj"], gpt2) == ["c_attn"]
    with pytest.raises(L07Error) as err:
        resolve_target_modules(["q_proj", "no_such_proj"], tiny_model)
    assert err.value.code.value == "E7036" and err.value.details["unknown"] == ["no_such_proj"]


def test_run_sft_trains_the_adapter_and_loss_falls(tiny_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from L07_learning.pipelines.sft_pipeline import SFTCallbacks, latest_checkpoint, run_sft

    rows = tool_rows(40, seed=1)
    steps: list[dict] = []
    evals: list[dict] = []
    checkpoints: list[int] = []
    result = run_sft(
        tiny_model, rows[:32], rows[32:], JobConfig(epochs=2, target_modules=["all-linear"], **FAST),
        tmp_path / "adapter", tmp_path / "ckpt",
        callbacks=SFTCallbacks(on_step=steps.append, on_eval=evals.append,
                               on_checkpoint=lambda p, s: checkpoints.append(s)),
        measure_generation=False)
    m = result.metrics
    assert not result.cancelled and m["global_step"] == 8 and len(steps) == 8
    assert [e["epoch"] for e in evals] == [0.0, 1.0, 2.0]  # before training, then each epoch
    assert m["eval_loss"] < m["initial_eval_loss"]
    assert m["eval_loss"] == evals[-1]["eval_loss"]  # the last epoch's evaluation measured the final weights
    assert m["tokens_seen"] > 0 and m["tokens_per_second"] > 0
    assert checkpoints == [4, 8] and latest_checkpoint(tmp_path / "ckpt").name == "checkpoint-8"
    weights = load_file(str(Path(result.adapter_dir) / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.abs().max() > 0 for v in lora_b)  # peft initialises B to zero


def test_lora_top_layers_adapts_only_the_blocks_nearest_the_output(tiny_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from L07_learning.pipelines.sft_pipeline import run_sft

    rows = tool_rows(16, seed=4)
    result = run_sft(tiny_model, rows, [], JobConfig(epochs=1, lora_top_layers=1, target_modules=["all-linear"], **FAST),
                     tmp_path / "a", tmp_path / "c", measure_generation=False)
    keys = list(load_file(str(Path(result.adapter_dir) / "adapter_model.safetensors")))
    assert keys and all(".layers.1." in k for k in keys)  # the tiny model has blocks 0 and 1
    with pytest.raises(L07Error) as err:
        run_sft(tiny_model, rows, [], JobConfig(epochs=1, lora_top_layers=3, **FAST), tmp_path / "b", tmp_path / "d",
                measure_generation=False)
    assert err.value.code.value == "E7036"


def test_cancel_callback_stops_within_one_step(tiny_model: Path, tmp_path: Path) -> None:
    from L07_learning.pipelines.sft_pipeline import SFTCallbacks, run_sft

    steps: list[dict] = []
    result = run_sft(tiny_model, tool_rows(64, seed=2), [], JobConfig(epochs=1, **FAST), tmp_path / "a", tmp_path / "c",
                     callbacks=SFTCallbacks(on_step=steps.append, should_cancel=lambda: len(steps) >= 2),
                     measure_generation=False)
    assert result.cancelled and result.adapter_dir is None
    assert result.metrics["global_step"] <= 3 < result.metrics["total_steps"]  # requested after step 2


def test_generation_is_greedy_deterministic_and_applies_the_adapter(tiny_model: Path, tmp_path: Path) -> None:
    from L07_learning.pipelines.generation import generate
    from L07_learning.pipelines.sft_pipeline import run_sft

    rows = tool_rows(16, seed=4)
    adapter = run_sft(tiny_model, rows, [], JobConfig(epochs=2, **FAST), tmp_path / "a", tmp_path / "c",
                      measure_generation=False).adapter_dir
    prompts = [r[:-1] for r in rows[:4]] + ["hello"]
    first = generate(tiny_model, prompts, max_new_tokens=6, batch_size=3)
    again = generate(tiny_model, prompts, max_new_tokens=6, batch_size=5)
    assert [r.text for r in first] == [r.text for r in again]
    assert all(0 < r.new_tokens <= 6 and r.latency_s > 0 for r in first)
    with_adapter = generate(tiny_model, prompts, max_new_tokens=6, adapter_dir=adapter)
    assert len(with_adapter) == len(prompts)
    with pytest.raises(L07Error) as err:
        generate(tiny_model, prompts, max_new_tokens=2, adapter_dir=tmp_path / "missing")
    assert err.value.code.value == "E7604"


def test_two_process_gloo_data_parallel_ends_with_identical_weights(tiny_model: Path, tmp_path: Path) -> None:
    import torch

    script = Path(__file__).with_name("ddp_sft_rank.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(paths.SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(tiny_model), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys() and rank0
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(v.abs().max() > 0 for k, v in rank0.items() if "lora_B" in k)  # both ranks trained, in step


@pytest.mark.slow
def test_gguf_conversion_matches_transformers_own_loader(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from L07_learning.pipelines.base_model import DEFAULT_BASE_NAME, smollm2_gguf_path
    from L07_learning.pipelines.gguf_convert import convert_llama_gguf

    gguf = smollm2_gguf_path()
    ours = convert_llama_gguf(gguf, tmp_path / "converted", DEFAULT_BASE_NAME)
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    converted = load_file(str(ours / "model.safetensors"))
    expected = {k: v for k, v in reference.state_dict().items() if k != "lm_head.weight"}  # tied to the embedding
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)
    config, ref_config = AutoConfig.from_pretrained(str(ours)), reference.config
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
                "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(config, key) == getattr(ref_config, key), key
    text = "<|im_start|>user\nRoute ticket 8474 to billing<|im_end|>\n"
    assert AutoTokenizer.from_pretrained(str(ours))(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)(text)["input_ids"]


@pytest.mark.slow
def test_real_base_model_learns_tool_selection(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct + LoRA on 120 tool-selection examples: held-out exact match by generation beats the base."""
    from safetensors.torch import load_file

    from L07_learning.pipelines.base_model import default_base_model_dir
    from L07_learning.pipelines.sft_pipeline import run_sft

    base = default_base_model_dir(CACHE)
    rows = tool_rows(180, seed=1)
    # Measured on 2 shared cores: 1 epoch over 200 examples (q/v only) reached eval loss 0.75 but only 30% exact match;
    # two epochs with all attention projections give the mapping enough updates.
    config = JobConfig(epochs=2, early_stopping_patience=0, warmup_ratio=0.05,
                       **{**FAST, "validation_batch_size": 20,
                          "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    result = run_sft(base, rows[:120], rows[120:140], config, tmp_path / "adapter", tmp_path / "ckpt",
                     test_rows=rows[140:180])
    print(json.dumps({k: v for k, v in result.metrics.items() if k not in ("loss_curve", "evals")}))
    m = result.metrics
    assert m["eval_loss"] < m["initial_eval_loss"]
    assert m["base_accuracy"] <= 0.2 and m["eval_accuracy"] >= m["base_accuracy"] + 0.5, m
    weights = load_file(str(Path(result.adapter_dir) / "adapter_model.safetensors"))
    assert all(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)


def test_answer_only_head_gives_trls_loss_and_gradients(tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from L07_learning.pipelines.answer_loss import AnswerLossSFTTrainer
    from L07_learning.pipelines.sft_pipeline import tokenize_row

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    rows = tool_rows(6, seed=3)
    ds = Dataset.from_list([tokenize_row(r, tok) for r in rows])
    trainer = AnswerLossSFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(tiny_model)), processing_class=tok, train_dataset=ds,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        args=SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, report_to="none", use_cpu=True,
                       max_length=256, bf16=False))
    model = trainer.model
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # a trained-looking adapter, so every LoRA weight gets a gradient
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < answer_tokens < batch["labels"].numel() / 2  # most positions are prompt or padding

    def loss_and_grads(compute, **kw):  # type: ignore[no-untyped-def]
        model.zero_grad()
        loss = compute(trainer, model, dict(batch), **kw)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    for kw in ({}, {"num_items_in_batch": torch.tensor(answer_tokens * 2)}):
        ours, ours_grads = loss_and_grads(AnswerLossSFTTrainer.compute_loss, **kw)
        trl_loss, trl_grads = loss_and_grads(SFTTrainer.compute_loss, **kw)
        assert ours == pytest.approx(trl_loss, rel=1e-5)
        assert all(torch.allclose(ours_grads[n], trl_grads[n], rtol=1e-4, atol=1e-7) for n in trl_grads)
        assert any(g.abs().sum() > 0 for g in ours_grads.values())
