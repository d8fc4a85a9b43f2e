"""``l07 models export``: an adapter merged into its base and registered as a signed FINE_TUNED model with lineage,
a GGUF file llama.cpp reads (weights, tokenizer, chat template), an Ollama Modelfile in the tool-call format, and the
exports listed with URI and sha256 in ``model_ready_for_deployment``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from L07_learning.models.error_codes import L07Error
from L07_learning.models.model_artifact import ModelArtifact, ModelStage, ModelType
from L07_learning.models.tool_calls import TOOL_PREAMBLE
from L07_learning.models.validation import Recommendation, ValidationResult, Verdict
from L07_learning.pipelines.base_model import build_tiny_model
from L07_learning.services.model_registry import ModelRegistry
from L07_learning.services.release.deploy import release_event
from L07_learning.services.release.export import export_model
from L07_learning.store.db import Database
from L07_learning.tests.api.test_api import client_for, keys  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def tiny_with_adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny Llama and a LoRA adapter for it with random (non-zero) weights, so merging changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("export-models")
    base = build_tiny_model(root / "base")
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
                                      init_lora_weights=False))
    model.save_pretrained(str(root / "adapter"))
    return base, root / "adapter"


async def _register(db: Database, settings, tiny_with_adapter) -> tuple[ModelRegistry, str, str]:  # type: ignore[no-untyped-def]
    registry = ModelRegistry(db=db, settings=settings)
    base_dir, adapter_dir = tiny_with_adapter
    base_id = await registry.register_model(ModelArtifact(name="tiny-base", model_type=ModelType.BASE),
                                            source_dir=str(base_dir))
    adapter_id = await registry.register_model(
        ModelArtifact(name="field-ops", model_type=ModelType.LORA_ADAPTER, parent_model_id=base_id,
                      base_model_name="tiny-base", dataset_id="ds-1", dataset_version="1.0.0"),
        source_dir=str(adapter_dir))
    return registry, base_id, adapter_id


def _logits(model_dir: str | Path, adapter_dir: str | Path | None = None) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 504, 3458, 314, 2]])).logits.numpy()


async def test_hf_export_registers_the_merged_model_as_fine_tuned_with_lineage_and_its_own_signature(
    sqlite_db: Database, settings, tiny_with_adapter,  # type: ignore[no-untyped-def]
) -> None:
    registry, base_id, adapter_id = await _register(sqlite_db, settings, tiny_with_adapter)
    result = await export_model(registry, adapter_id, "hf", actor="tester")

    merged = await registry.get_model(result["model_id"])
    assert merged.model_type is ModelType.FINE_TUNED and merged.parent_model_id == adapter_id
    assert merged.base_model_name == "tiny-base" and merged.dataset_id == "ds-1"
    assert merged.signature and merged.checksum != (await registry.get_model(adapter_id)).checksum
    assert (await registry.verify(merged.model_id)).ok
    lineage = await registry.lineage(merged.model_id)
    assert lineage.parent_model_id == adapter_id
    assert [p.model_id for p in lineage.parents] == [adapter_id]
    assert [p.model_id for p in lineage.parents[0].parents] == [base_id]

    # The merged weights compute what base + adapter compute, and not what the base alone does.
    path = await registry.local_path(merged.model_id)
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in Path(path).iterdir()}
    np.testing.assert_allclose(_logits(path), _logits(*tiny_with_adapter), atol=1e-4)
    assert not np.allclose(_logits(path), _logits(tiny_with_adapter[0]), atol=1e-3)
    [hf] = result["artifacts"]
    assert hf["format"] == "hf" and hf["uri"].startswith("file://") and hf["sha256"] == merged.checksum.removeprefix("sha256:")

    again = await export_model(registry, adapter_id, "hf")
    assert again["reused"] and again["model_id"] == merged.model_id


async def test_ollama_export_holds_a_gguf_llama_cpp_reads_and_a_modelfile_in_the_tool_call_format(
    sqlite_db: Database, settings, tiny_with_adapter,  # type: ignore[no-untyped-def]
) -> None:
    from gguf import GGMLQuantizationType, GGUFReader, dequantize
    from safetensors.numpy import load_file

    registry, _, adapter_id = await _register(sqlite_db, settings, tiny_with_adapter)
    result = await export_model(registry, adapter_id, "ollama", quant="q8_0")
    by_format = {a["format"]: a for a in result["artifacts"]}
    assert set(by_format) == {"hf", "gguf", "ollama"} and by_format["gguf"]["quant"] == "q8_0"
    folder = Path(await registry.local_path(result["model_id"]))
    for fmt, name in (("gguf", "model.gguf"), ("ollama", "Modelfile")):
        assert by_format[fmt]["uri"].endswith(f"/{name}")
        assert by_format[fmt]["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()

    reader = GGUFReader(str(folder / "model.gguf"))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "llama" and field("llama.block_count") == 2
    assert field("llama.attention.head_count") == 4 and field("llama.attention.head_count_kv") == 2
    assert field("tokenizer.ggml.model") == "gpt2" and len(field("tokenizer.ggml.tokens")) == 49152
    assert field("tokenizer.ggml.tokens")[field("tokenizer.ggml.eos_token_id")] == "<|im_end|>"
    assert "<|im_start|>" in field("tokenizer.chat_template") and len(field("tokenizer.ggml.merges")) > 40000
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 * 9 + 2  # 9 per block, embedding and final norm (the output head is tied)
    assert tensors["blk.0.ffn_down.weight"].tensor_type is GGMLQuantizationType.Q8_0
    assert tensors["blk.0.attn_norm.weight"].tensor_type is GGMLQuantizationType.F32
    merged = load_file(str(folder / "model.safetensors"))
    down = dequantize(tensors["blk.1.ffn_down.weight"].data, GGMLQuantizationType.Q8_0)
    np.testing.assert_allclose(down, merged["model.layers.1.mlp.down_proj.weight"], atol=2e-3)

    modelfile = (folder / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "PARAMETER temperature 0" in modelfile
    head, tail = TOOL_PREAMBLE.replace("{{", "{").replace("}}", "}").split("{tools}")
    assert head in modelfile and tail in modelfile  # the very preamble the model was trained on
    for piece in ("<tool_call>\n{\"name\": \"{{ $c.Function.Name }}\", \"arguments\": {{ $c.Function.Arguments }}}",
                  "<tool_response>\n{{ $m.Content }}\n</tool_response>", "You are a helpful AI assistant named SmolLM"):
        assert piece in modelfile
    template = modelfile.split('"""')[1]
    opened = sum(template.count("{{ " + k) for k in ("if ", "range "))
    assert opened == template.count("{{ end }}")  # every block the Go template opens is closed

    # gguf and hf requests are covered by the ollama export; another quantisation is a new export.
    assert (await export_model(registry, adapter_id, "gguf", quant="q8_0"))["model_id"] == result["model_id"]
    f16 = await export_model(registry, adapter_id, "gguf", quant="f16")
    assert not f16["reused"] and f16["model_id"] != result["model_id"]


def test_gguf_tokenizer_metadata_equals_the_official_smollm2_conversion(tiny_with_adapter, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Tokens, types, merges, special ids, BOS behaviour and chat template as llama.cpp's own converter wrote them
    for SmolLM2 (the packaged GGUF), so llama.cpp tokenises and templates our exports as it does that model."""
    from gguf import GGUFReader

    from L07_learning.pipelines.base_model import smollm2_gguf_path
    from L07_learning.pipelines.gguf_export import write_gguf

    ours = GGUFReader(str(write_gguf(tiny_with_adapter[0], tmp_path / "tiny.gguf", "f16")))
    official = GGUFReader(str(smollm2_gguf_path()))
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
                "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"):
        assert ours.fields[key].contents() == official.fields[key].contents(), key
    # L07's tokenizer (transformers' GGUF conversion) splits digits in runs, as GPT-2 does; the pre-tokenizer says so.
    assert ours.fields["tokenizer.ggml.pre"].contents() == "gpt-2"


async def test_the_release_event_lists_every_exported_artifact_with_uri_and_sha256(
    sqlite_db: Database, settings, tiny_with_adapter,  # type: ignore[no-untyped-def]
) -> None:
    registry, _, adapter_id = await _register(sqlite_db, settings, tiny_with_adapter)
    passed = ValidationResult(model_id=adapter_id, passed=True, recommendation=Recommendation.DEPLOY,
                              verdict=Verdict.APPROVED)
    assert (await release_event(registry, adapter_id, passed))["exported_artifacts"] == []
    hf = await export_model(registry, adapter_id, "hf")
    gguf = await export_model(registry, adapter_id, "gguf", quant="f16")
    event = await release_event(registry, adapter_id, passed)
    listed = {(a["model_id"], a["format"], a["uri"], a["sha256"]) for a in event["exported_artifacts"]}
    expected = {(a["model_id"], a["format"], a["uri"], a["sha256"]) for a in hf["artifacts"] + gguf["artifacts"]}
    assert listed == expected and len(listed) == 3
    assert event["model_id"] == adapter_id and event["artifact_checksum"]  # the existing fields stay
    # Releasing the export itself lists its own files.
    own = await release_event(registry, gguf["model_id"], passed.model_copy(update={"model_id": gguf["model_id"]}))
    assert {a["format"] for a in own["exported_artifacts"]} == {"hf", "gguf"}


async def test_export_refuses_unknown_models_formats_and_rejected_models(
    sqlite_db: Database, settings, tiny_with_adapter,  # type: ignore[no-untyped-def]
) -> None:
    registry, _, adapter_id = await _register(sqlite_db, settings, tiny_with_adapter)
    with pytest.raises(L07Error) as err:
        await export_model(registry, "mdl-nope", "gguf")
    assert err.value.code.value == "E7250"
    for fmt, quant in (("onnx", "q8_0"), ("gguf", "q4_k")):
        with pytest.raises(L07Error) as err:
            await export_model(registry, adapter_id, fmt, quant)
        assert err.value.code.value == "E7110" and (fmt if fmt == "onnx" else quant) in err.value.message
    await registry.approve(adapter_id, role="reviewer", actor="rita", to_stage=ModelStage.REJECTED)
    await registry.promote_model(adapter_id, ModelStage.REJECTED.value, actor="rita")
    with pytest.raises(L07Error) as err:
        await export_model(registry, adapter_id, "hf")
    assert err.value.code.value == "E7203"
    async with sqlite_db.session() as s:
        from L07_learning.store.repositories.models import ModelRepository

        assert [m.name for m in await ModelRepository(s).list()] == ["field-ops", "tiny-base"]  # nothing registered


async def test_rest_export_is_for_deployers_and_answers_the_registered_export(
    sqlite_db: Database, settings, tiny_with_adapter, client_for, keys,  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    from L07_learning.tests.api.test_api import auth

    _, _, adapter_id = await _register(sqlite_db, settings, tiny_with_adapter)
    client = await client_for(sqlite_db)
    url = f"/api/v1/models/{adapter_id}/export"
    assert (await client.post(url, json={"format": "hf"}, headers=auth(keys["trainer"]))).status_code == 403
    assert (await client.post("/api/v1/models/mdl-nope/export", json={}, headers=auth(keys["deployer"]))).status_code == 404
    assert (await client.post(url, json={"format": "onnx"}, headers=auth(keys["deployer"]))).status_code == 400
    r = await client.post(url, json={"format": "hf"}, headers=auth(keys["deployer"]))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["source_model_id"] == adapter_id and body["model_type"] == "FINE_TUNED" and not body["reused"]
    shown = (await client.get(f"/api/v1/models/{body['model_id']}", headers=auth(keys["auditor"]))).json()
    assert shown["model_type"] == "FINE_TUNED" and shown["stage"] == "DEVELOPMENT"


@pytest.mark.slow
def test_a_gguf_export_answers_in_llama_cpp_as_the_model_does_in_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The taught tool caller, exported to GGUF and run by llama.cpp: the same tokens for the prompts, the same
    greedy answer in F16 and the same tool call in Q8_0."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from L07_learning.models.tool_calls import parse_generation, render_chat, same_calls
    from L07_learning.pipelines.gguf_export import write_gguf
    from L07_learning.tests.factories.serving import TEACH, TOOLS, conversation, taught_tool_caller

    taught = taught_tool_caller(build_tiny_model(tmp_path / "tiny"), tmp_path / "taught")
    tokenizer = AutoTokenizer.from_pretrained(str(taught))
    model = AutoModelForCausalLM.from_pretrained(str(taught), dtype=torch.float32).eval()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ggufs = {q: write_gguf(taught, tmp_path / f"taught-{q}.gguf", q) for q in ("f16", "q8_0")}
    # A native llama.cpp build repacks Q8_0 for AMX where the CPU has it; a sandbox that does not grant AMX state
    # then dies of SIGILL. Plain (non-repacked) kernels compute the same thing.
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def no_repack():  # type: ignore[no-untyped-def]
        params = defaults()
        params.use_extra_bufts = False
        return params

    monkeypatch.setattr(llama_cpp.llama.llama_cpp, "llama_model_default_params", no_repack)
    runtimes = {q: llama_cpp.Llama(model_path=str(p), n_ctx=2048, verbose=False) for q, p in ggufs.items()}

    odd_text = "Convert 152.75 m → ft, then 1234567 km!  Tabs\tand  spaces; élan, 東京 <|im_end|>"
    for llm in runtimes.values():
        assert llm.tokenize(odd_text.encode(), add_bos=False, special=True) == tokenizer(odd_text)["input_ids"]
    for goal, expected in TEACH:
        prompt = render_chat(tokenizer, conversation(goal), TOOLS)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False, eos_token_id=end,
                                 pad_token_id=end)
        reference = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
        assert same_calls([expected], parse_generation(reference)[1]), reference  # the teaching took
        for quant, llm in runtimes.items():
            llm.reset()
            answer = llm.create_completion(ids, max_tokens=64, temperature=0.0, top_k=1, stop=["<|im_end|>"])
            text = answer["choices"][0]["text"]
            if quant == "f16":
                assert text.strip() == reference.strip()
            assert same_calls([expected], parse_generation(text)[1]), (quant, text)
    for llm in runtimes.values():
        llm.close()


def test_cli_exports_a_registered_model_to_gguf(settings, tiny_with_adapter) -> None:  # type: ignore[no-untyped-def]
    import json

    from typer.testing import CliRunner

    from L07_learning.cli.main import app as cli

    def run(*args: str) -> dict:
        result = CliRunner().invoke(cli, [*args, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip().startswith("{") \
            else json.loads(result.stdout)

    base = run("models", "register-base", str(tiny_with_adapter[0]), "--name", "tiny-base")
    exported = run("models", "export", base["model_id"], "--format", "gguf", "--quant", "f16")
    assert exported["model_type"] == "BASE" and exported["source_model_id"] == base["model_id"]
    gguf = next(a for a in exported["artifacts"] if a["format"] == "gguf")
    assert gguf["quant"] == "f16" and gguf["uri"].endswith("/model.gguf") and len(gguf["sha256"]) == 64
    wrong = CliRunner().invoke(cli, ["models", "export", base["model_id"], "--format", "onnx"])
    assert wrong.exit_code != 0 and "E7110" in wrong.output
