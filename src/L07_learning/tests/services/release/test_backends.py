"""The inference backend choice: transformers unless a fast engine is installed, and the engines answer alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from L07_learning.models.error_codes import L07Error
from L07_learning.models.tool_calls import render_chat
from L07_learning.pipelines import backends
from L07_learning.pipelines.backends import (TransformersBackend, ctranslate2_backend, llama_cpp_backend, load_backend,
                                            vllm_backend)
from L07_learning.pipelines.backends.conversion import converted, model_fingerprint
from L07_learning.pipelines.backends.llama_cpp_batch import PrefixTrie
from L07_learning.pipelines.base_model import build_tiny_model
from L07_learning.pipelines.evaluation_pipeline import load_for_eval
from L07_learning.pipelines.generation import generate_with
from L07_learning.services.release.serving_model import ServedModel
from L07_learning.tests.factories.serving import TEACH, TOOLS, conversation, taught_tool_caller


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("backends") / "tiny")


@pytest.fixture(scope="module")
def taught(tmp_path_factory: pytest.TempPathFactory, tiny: Path) -> Path:
    return taught_tool_caller(tiny, tmp_path_factory.mktemp("taught") / "taught")


@pytest.fixture
def no_fast_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctranslate2_backend, "available", lambda: False)
    monkeypatch.setattr(llama_cpp_backend, "available", lambda: False)
    monkeypatch.setattr(vllm_backend, "available", lambda: False)
    monkeypatch.delenv(backends.ENV, raising=False)


def test_auto_uses_transformers_when_no_fast_engine_is_installed(tiny: Path, no_fast_engine: None) -> None:
    loaded = load_backend(tiny)
    assert isinstance(loaded, TransformersBackend)
    # The validator's loader hands generate_with a plain transformers model in that case, as before.
    tokenizer, model = load_for_eval(tiny)
    assert not isinstance(model, backends.InferenceBackend)
    assert generate_with(tokenizer, model, ["Hi"], 4)[0].new_tokens >= 1


def test_auto_falls_back_when_the_model_cannot_be_exported(tiny: Path, no_fast_engine: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(model_dir: object, adapter_dir: object = None) -> Path:
        raise L07Error("E7208", "not a Llama model")

    monkeypatch.setattr(llama_cpp_backend, "available", lambda: True)
    monkeypatch.setattr(llama_cpp_backend, "gguf_for", refuse)
    assert isinstance(load_backend(tiny), TransformersBackend)
    # Named explicitly, the same refusal is the caller's error, not a silent slow path.
    with pytest.raises(L07Error) as err:
        load_backend(tiny, backend="llama_cpp")
    assert err.value.code.value == "E7208"


def test_a_named_engine_that_is_missing_or_unknown_is_refused(tiny: Path, no_fast_engine: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(L07Error) as missing:
        load_backend(tiny, backend="llama_cpp")
    assert missing.value.code.value == "E7905" and "llama-cpp" in missing.value.message
    with pytest.raises(L07Error) as missing_ct2:
        load_backend(tiny, backend="ct2")
    assert missing_ct2.value.code.value == "E7905" and "fast-cpu" in missing_ct2.value.message
    monkeypatch.setenv(backends.ENV, "onnx")
    with pytest.raises(L07Error) as unknown:
        ServedModel.load(str(tiny), None)
    assert unknown.value.code.value == "E7905" and "L07_INFERENCE_BACKEND" in unknown.value.message
    monkeypatch.setenv(backends.ENV, "transformers")
    assert ServedModel.load(str(tiny), None).backend_name == "transformers"


def test_auto_prefers_llama_cpp_then_ctranslate2(tiny: Path, no_fast_engine: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The order measured on the demo's validation and at batch 1; stand-ins replace the engines' loads."""
    loaded: list[str] = []
    for module, cls in ((ctranslate2_backend, ctranslate2_backend.CTranslate2Backend),
                        (llama_cpp_backend, llama_cpp_backend.LlamaCppBackend)):
        monkeypatch.setattr(module, "available", lambda: True)
        monkeypatch.setattr(cls, "load", classmethod(lambda c, *a: loaded.append(c.name) or c.name))
    assert load_backend(tiny) == "llama_cpp"
    monkeypatch.setattr(llama_cpp_backend, "available", lambda: False)
    assert load_backend(tiny) == "ctranslate2"
    assert loaded == ["llama_cpp", "ctranslate2"]


def test_conversion_is_cached_beside_the_model_by_content(tmp_path: Path, tiny: Path) -> None:
    import shutil

    model = tmp_path / "models" / "m"
    shutil.copytree(tiny, model)
    builds: list[Path] = []

    def build(hf_dir: Path, out: Path) -> Path:
        builds.append(hf_dir)
        out.write_text("converted")
        return out

    first = converted(model, None, "fmt", build)
    assert converted(model, None, "fmt", build) == first and len(builds) == 1
    assert first.parent == tmp_path / "models" / ".l07-inference"
    assert first.name.startswith(model_fingerprint(model))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    # A changed model is a different model: converted again, never served from the old file.
    second = converted(model, None, "fmt", build)
    assert second != first and len(builds) == 2


@pytest.mark.skipif(not ctranslate2_backend.available(), reason="ctranslate2 is not installed (extra fast-cpu)")
def test_ctranslate2_answers_as_transformers_on_the_taught_tool_caller(taught: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast CPU engine gives the reference engine's greedy answers, token counts, caps and stream, in batches."""
    reference = ServedModel.load(str(taught), None, backend="transformers")
    fast = ServedModel.load(str(taught), None, backend="ctranslate2")
    assert fast.backend_name == "ctranslate2"
    texts = [render_chat(reference.tokenizer, conversation(goal), TOOLS) for goal, _ in TEACH] * 3
    caps = [64, 5, 64, 64, 7, 64]
    want = reference.generate_batch(texts, caps)
    got = fast.generate_batch(texts, caps)
    assert [(g.text, g.new_tokens) for g in got] == [(w.text, w.new_tokens) for w in want]
    # The lesson was learnt, so the agreement is about real answers, not two empty strings; caps hold per row.
    assert "unit_convert" in got[0].text and "Oslo" in got[3].text and got[1].new_tokens == 5
    assert "".join(fast.stream(texts[3], 64)).strip() == got[3].text
    # Fixed work for the latency gate: every row decodes exactly the cap, end of turn or not.
    timed = fast.backend.generate_rendered(texts[:2], 40, ignore_stop=True)
    assert [t.new_tokens for t in timed] == [40, 40]
    # The conversion is cached beside the model by content: a second load converts nothing.
    converted_dir = ctranslate2_backend.ct2_dir_for(taught)
    stamp = converted_dir.stat().st_mtime_ns
    assert ServedModel.load(str(taught), None, backend="ct2").backend_name == "ctranslate2"
    assert converted_dir.stat().st_mtime_ns == stamp
    monkeypatch.setenv(ctranslate2_backend.COMPUTE_ENV, "float8")
    with pytest.raises(L07Error) as bad:
        ctranslate2_backend.compute_type()
    assert bad.value.code.value == "E7905"


@pytest.mark.skipif(not ctranslate2_backend.available(), reason="ctranslate2 is not installed (extra fast-cpu)")
def test_ctranslate2_refuses_a_model_it_cannot_convert_and_auto_falls_back(tmp_path: Path, tiny: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import ctranslate2

    model = tmp_path / "odd"
    shutil.copytree(tiny, model)

    def unsupported(self: object, *args: object, **kwargs: object) -> None:
        raise ValueError("No conversion is registered for the model configuration NoSuchConfig")

    # Stands in for an architecture the converter has no loader for (the converter is the outside system here).
    monkeypatch.setattr(ctranslate2.converters.TransformersConverter, "convert", unsupported)
    with pytest.raises(L07Error) as err:
        load_backend(model, backend="ctranslate2")
    assert err.value.code.value == "E7208" and "CTranslate2" in err.value.message
    monkeypatch.setattr(llama_cpp_backend, "available", lambda: False)
    monkeypatch.delenv(backends.ENV, raising=False)
    assert load_backend(model).name == "transformers"


@pytest.mark.skipif(not llama_cpp_backend.available(), reason="llama-cpp-python is not installed (extra llama-cpp)")
def test_llama_cpp_answers_as_transformers_on_the_taught_tool_caller(taught: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("llama_cpp")
    reference = ServedModel.load(str(taught), None, backend="transformers")
    fast = ServedModel.load(str(taught), None, backend="llama_cpp")
    assert fast.backend_name == "llama_cpp"
    texts = [render_chat(reference.tokenizer, conversation(goal), TOOLS) for goal, _ in TEACH]
    want = reference.generate_batch(texts, [64, 64])
    got = fast.generate_batch(texts, [64, 64])
    assert [g.text for g in got] == [w.text for w in want]
    assert [g.new_tokens for g in got] == [w.new_tokens for w in want]
    # The lesson was learnt, so the agreement is about real answers, not two empty strings.
    assert "unit_convert" in got[0].text and "Oslo" in got[1].text
    assert "".join(fast.stream(texts[1], 64)).strip() == got[1].text
    # Per-request caps hold on the fast engine too.
    assert fast.generate_batch(texts[:1], [3])[0].new_tokens == 3


@pytest.mark.skipif(not llama_cpp_backend.available(), reason="llama-cpp-python is not installed (extra llama-cpp)")
def test_llama_cpp_decodes_a_batch_together_as_it_answers_each_prompt_alone(taught: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A validation pass decoded together (shared prefixes once, one batch row per prompt, spread over lanes) gives
    every prompt the answer it gets alone, in the prompts' order, with per-prompt caps."""
    monkeypatch.setenv("L07_INFERENCE_THREADS", "1")
    tokenizer = TransformersBackend.load(taught).tokenizer
    texts = [render_chat(tokenizer, conversation(goal), TOOLS) for goal, _ in TEACH] * 3
    one = llama_cpp_backend.LlamaCppBackend(tokenizer, llama_cpp_backend.gguf_for(taught), lanes=1)
    caps = [64, 5, 64, 64, 7, 64]
    alone = [one.generate_rendered([text], 64, [cap])[0] for text, cap in zip(texts, caps)]
    for lanes in (1, 3):
        engine = llama_cpp_backend.LlamaCppBackend(tokenizer, llama_cpp_backend.gguf_for(taught), lanes=lanes)
        together = engine.generate_rendered(texts, 64, caps)
        assert [(g.text, g.new_tokens) for g in together] == [(w.text, w.new_tokens) for w in alone]
    assert "unit_convert" in alone[0].text and "Oslo" in alone[3].text and alone[1].new_tokens == 5
    # Timing work decodes exactly the cap past the end of turn, together as alone.
    fixed = one.generate_rendered(texts[:2], 20, ignore_stop=True)
    assert [r.new_tokens for r in fixed] == [20, 20]
    assert fixed[0].text.startswith(alone[0].text[:10])
    monkeypatch.setenv("L07_INFERENCE_LANES", "x")
    with pytest.raises(L07Error):
        llama_cpp_backend.default_lanes(1)
    monkeypatch.setenv("L07_INFERENCE_LANES", "2")
    assert llama_cpp_backend.default_lanes(1) == 2


def test_shared_prompt_prefixes_enter_the_batch_once_in_an_order_llama_cpp_accepts() -> None:
    """Every distinct prefix is one batch entry; a prompt's entries rebuild it with rising positions; an entry
    lists exactly the prompts that start with its prefix."""
    prompts = [[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 7], [9], [1, 2, 3, 4], [1, 2]]
    trie = PrefixTrie.build(prompts)
    distinct = {tuple(p[:i + 1]) for p in prompts for i in range(len(p))}
    assert len(trie.tokens) == len(distinct) == 8
    for k, prompt in enumerate(prompts):
        path = [j for j, seqs in enumerate(trie.seqs) if k in seqs]
        assert [trie.tokens[j] for j in path] == prompt
        assert [trie.positions[j] for j in path] == list(range(len(prompt)))
        assert trie.last[k] == path[-1]
        for j in path:
            prefix = tuple(prompt[:trie.positions[j] + 1])
            assert trie.seqs[j] == [m for m, p in enumerate(prompts) if tuple(p[:len(prefix)]) == prefix]
    assert trie.last[0] == trie.last[4]
    with pytest.raises(L07Error):
        PrefixTrie.build([[1], []])


@pytest.mark.skipif(not vllm_backend.available(), reason="needs vllm and a CUDA device")
def test_vllm_answers_as_transformers_on_the_taught_tool_caller(taught: Path) -> None:
    pytest.importorskip("vllm")
    reference = ServedModel.load(str(taught), None, backend="transformers")
    fast = ServedModel.load(str(taught), None, backend="vllm")
    texts = [render_chat(reference.tokenizer, conversation(goal), TOOLS) for goal, _ in TEACH]
    got = fast.generate_batch(texts, [64, 64])
    assert [g.text for g in got] == [w.text for w in reference.generate_batch(texts, [64, 64])]
    assert "unit_convert" in got[0].text and "Oslo" in got[1].text


def test_a_model_with_decoding_rules_llama_cpp_ignores_stays_on_transformers(tmp_path: Path, tiny: Path,
                                                                             no_fast_engine: None,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from L07_learning.tests.factories.validation import chatty

    model = chatty(tiny, tmp_path / "chatty")  # suppress_tokens in its generation config
    monkeypatch.setattr(llama_cpp_backend, "available", lambda: True)
    assert isinstance(load_backend(model), TransformersBackend)
    with pytest.raises(L07Error) as err:
        load_backend(model, backend="llama_cpp")
    assert err.value.code.value == "E7208" and "suppress_tokens" in err.value.message
