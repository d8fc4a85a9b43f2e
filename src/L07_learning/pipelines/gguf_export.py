"""A Hugging Face Llama folder -> one GGUF file that llama.cpp (and so Ollama) loads, tokenizer and chat template
included. The inverse of ``gguf_convert``, with the same fixed Llama tensor naming.

Weights: every matrix is written as Q8_0 (default) or F16; norms stay F32, as llama.cpp's own converter does. A
matrix whose rows are not a whole number of 32-value Q8_0 blocks falls back to F16. The q/k projections are
permuted into llama.cpp's rotary layout (``_permute`` is the inverse of ``gguf_convert._unpermute``).

Tokenizer: the byte-level BPE vocabulary in id order, its merges, token types (added special tokens are CONTROL,
other added tokens USER_DEFINED), the special token ids, whether a BOS/EOS is added (read off the tokenizer's actual
behaviour, not its config) and the chat template. The pre-tokenizer name llama.cpp needs is derived from the
``tokenizer.json`` pre-tokenizer structure; one it has no equivalent for is refused rather than tokenised differently.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..models.error_codes import L07Error, L07ErrorCode
from .gguf_convert import _BLOCK_TENSORS, _GLOBAL_TENSORS

QUANTS = ("q8_0", "f16")
_HF_TO_GGUF = {hf: g for g, hf in _GLOBAL_TENSORS.items()}
_BLOCK_HF_TO_GGUF = {hf: g for g, hf in _BLOCK_TENSORS.items()}
_Q8_BLOCK = 32


def _gguf_name(hf_name: str) -> str | None:
    """``model.layers.N.self_attn.q_proj.weight`` -> ``blk.N.attn_q.weight``; None for tensors llama.cpp does not
    read (rotary caches)."""
    stem, _, kind = hf_name.rpartition(".")
    if stem in _HF_TO_GGUF:
        return f"{_HF_TO_GGUF[stem]}.{kind}"
    parts = stem.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _BLOCK_HF_TO_GGUF:
        return f"blk.{parts[2]}.{_BLOCK_HF_TO_GGUF[parts[3]]}.{kind}"
    if stem.endswith("rotary_emb.inv_freq"):
        return None
    raise L07Error(L07ErrorCode.MODEL_INCOMPATIBILITY_WITH_GATEWAY, f"no GGUF name for the Llama tensor {hf_name}")


def _permute(weights: Any, heads: int) -> Any:
    """llama.cpp's rotary layout of q/k rows: each head's two halves interleaved."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _pre_tokenizer(tokenizer_json: dict[str, Any]) -> str:
    """The llama.cpp pre-tokenizer that splits text as this tokenizer's ``pre_tokenizer`` does."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [(s.get("type"), s.get("individual_digits"), s.get("use_regex", True)) for s in steps]
    if kinds == [("ByteLevel", None, True)]:
        return "gpt-2"  # llama.cpp's name for the GPT-2 split
    if kinds == [("Digits", True, True), ("ByteLevel", None, True)]:
        return "smollm"  # SmolLM's own tokenizer: single digits, then the GPT-2 split
    raise L07Error(L07ErrorCode.TOKENIZATION_ERROR,
                   f"no llama.cpp pre-tokenizer matches {json.dumps(pre)[:200]}; GGUF export supports byte-level BPE "
                   "tokenizers (GPT-2 or SmolLM splitting)")


def _token_text(value: Any) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: a string or an ``AddedToken`` dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(hf_dir: Path, tok_config: dict[str, Any]) -> str | None:
    jinja = hf_dir / "chat_template.jinja"  # where transformers >= 4.47 saves it
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    return template if isinstance(template, str) else None


def _vocab(hf_dir: Path, vocab_size: int) -> dict[str, Any]:
    """Tokens, types, merges, special ids, add-BOS/EOS and chat template of the tokenizer in ``hf_dir``.

    Read with ``tokenizers`` alone: importing transformers would cost more than writing a small model's file.
    """
    from gguf import TokenType
    from tokenizers import Tokenizer

    tj_path = hf_dir / "tokenizer.json"
    if not tj_path.is_file():
        raise L07Error(L07ErrorCode.TOKENIZATION_ERROR, f"{hf_dir} has no tokenizer.json (a fast BPE tokenizer)")
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise L07Error(L07ErrorCode.TOKENIZATION_ERROR,
                       f"GGUF export supports byte-level BPE tokenizers, not {model.get('type')!r}")
    pre = _pre_tokenizer(tj)
    config_path = hf_dir / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    by_id = {i: t for t, i in model["vocab"].items()}
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    ids = {**model["vocab"], **{a["content"]: i for i, a in added.items()}}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
        else:  # the embedding is larger than the vocabulary (padded for speed): rows no text maps to
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special = {k: ids.get(_token_text(tok_config.get(f"{k}_token")) or "") for k in ("bos", "eos", "unk", "pad")}
    # What the tokenizer really adds (its post-processor), not what a config flag claims.
    probe = Tokenizer.from_file(str(tj_path)).encode("a", add_special_tokens=True).ids
    return {
        "pre": pre, "tokens": tokens, "types": types, "merges": merges, "special": special,
        "add_bos": special["bos"] is not None and probe[:1] == [special["bos"]],
        "add_eos": special["eos"] is not None and probe[-1:] == [special["eos"]],
        "chat_template": _chat_template(hf_dir, tok_config),
    }


def _config(hf_dir: Path) -> dict[str, Any]:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise L07Error(L07ErrorCode.ARTIFACT_UPLOAD_FAILURE, f"{hf_dir} is not a Hugging Face model (no config.json)")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if cfg.get("model_type") != "llama":
        raise L07Error(L07ErrorCode.MODEL_INCOMPATIBILITY_WITH_GATEWAY,
                       f"GGUF export supports the Llama architecture, not {cfg.get('model_type')!r}")
    return cfg


def _state(hf_dir: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    shards = sorted(hf_dir.glob("*.safetensors"))
    if not shards:
        raise L07Error(L07ErrorCode.ARTIFACT_UPLOAD_FAILURE, f"{hf_dir} has no .safetensors weights")
    state: dict[str, Any] = {}
    for shard in shards:
        try:
            state.update(load_file(str(shard)))
        except TypeError:  # bfloat16 has no numpy dtype: go through torch
            import torch
            from safetensors.torch import load_file as load_torch

            state.update({k: v.to(torch.float32).numpy() for k, v in load_torch(str(shard)).items()})
    return state


def write_gguf(hf_dir: str | Path, out_path: str | Path, quant: str = "q8_0") -> Path:
    """Write the Llama model in ``hf_dir`` (safetensors + tokenizer) as one GGUF file llama.cpp loads.

    Args:
        hf_dir: A Hugging Face folder: ``config.json`` (``model_type: llama``), ``*.safetensors``, ``tokenizer.json``.
        out_path: The file to write; it appears complete or not at all (written beside it, then renamed).
        quant: ``q8_0`` (default: a quarter of fp32, greedy answers as the merged model's) or ``f16``.

    Returns:
        ``out_path``.

    Raises:
        L07Error: E7110 unknown ``quant``; E7208 not a Llama model; E7037 a tokenizer llama.cpp cannot reproduce;
        E7042 missing files or the file cannot be written.
    """
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, quantize

    quant = quant.lower()
    if quant not in QUANTS:
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                       f"unknown GGUF quantisation {quant!r}; choose one of {', '.join(QUANTS)}")
    hf_dir, out = Path(hf_dir), Path(out_path)
    cfg = _config(hf_dir)
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise L07Error(L07ErrorCode.MODEL_INCOMPATIBILITY_WITH_GATEWAY,
                       f"GGUF export supports default rotary embeddings, not {rope.get('rope_type')!r}")
    rope_theta = float(rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0)
    state = _state(hf_dir)
    vocab_size = int(cfg.get("vocab_size") or state["model.embed_tokens.weight"].shape[0])
    vocab = _vocab(hf_dir, vocab_size)

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        writer = GGUFWriter(tmp_name, "llama")
        writer.add_name(str(cfg.get("_name_or_path") or hf_dir.name))
        writer.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
        writer.add_embedding_length(hidden)
        writer.add_block_count(int(cfg["num_hidden_layers"]))
        writer.add_feed_forward_length(int(cfg["intermediate_size"]))
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_dimension_count(head_dim)
        if head_dim != hidden // heads:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_rope_freq_base(rope_theta)
        writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
        writer.add_vocab_size(vocab_size)
        writer.add_file_type(LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else LlamaFileType.MOSTLY_F16)
        writer.add_quantization_version(2)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(vocab["pre"])
        writer.add_token_list(vocab["tokens"])
        writer.add_token_types(vocab["types"])
        writer.add_token_merges(vocab["merges"])
        for kind, token_id in vocab["special"].items():
            if token_id is not None:
                getattr(writer, f"add_{kind}_token_id")(int(token_id))
        writer.add_add_bos_token(vocab["add_bos"])
        writer.add_add_eos_token(vocab["add_eos"])
        writer.add_add_space_prefix(False)
        if vocab["chat_template"]:
            writer.add_chat_template(vocab["chat_template"])

        for hf_name in sorted(state):
            name = _gguf_name(hf_name)
            if name is None:
                continue
            data = np.asarray(state[hf_name], dtype=np.float32)
            if name.endswith("attn_q.weight"):
                data = _permute(data, heads)
            elif name.endswith("attn_k.weight"):
                data = _permute(data, kv_heads)
            if data.ndim == 1:
                writer.add_tensor(name, np.ascontiguousarray(data))
            elif quant == "q8_0" and data.shape[-1] % _Q8_BLOCK == 0:
                writer.add_tensor(name, quantize(data, GGMLQuantizationType.Q8_0),
                                  raw_dtype=GGMLQuantizationType.Q8_0)
            else:
                writer.add_tensor(name, np.ascontiguousarray(data.astype(np.float16)))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, out)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise L07Error(L07ErrorCode.ARTIFACT_UPLOAD_FAILURE, f"cannot write {out}: {exc}") from exc
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out
