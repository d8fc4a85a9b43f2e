"""A Llama-architecture GGUF file -> an fp32 safetensors Hugging Face folder, reading the file once.

transformers can load GGUF itself, but it parses the file three times (config, weights, tokenizer) and rebuilds its
tensor-name map once per module: 49 s for SmolLM2-135M on 2 cores, a tenth of the demo's budget. Here the file is
parsed once by the ``gguf`` library (24 s in all), dequantised with ``gguf.dequantize``, and mapped with the fixed Llama naming;
the tokenizer still comes from transformers' GGUF loader. ``tests/services/jobs/test_sft.py`` checks the result tensor by tensor
against transformers' own conversion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models.error_codes import L07Error, L07ErrorCode

# GGUF block tensor -> Hugging Face Llama parameter (``blk.N.<key>.weight`` -> ``model.layers.N.<value>.weight``).
_BLOCK_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _hf_name(gguf_name: str) -> str:
    stem, _, kind = gguf_name.rpartition(".")
    if stem in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[stem]}.{kind}"
    blk, layer, part = stem.split(".", 2)
    if blk != "blk" or part not in _BLOCK_TENSORS:
        raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE, f"unexpected GGUF tensor {gguf_name}")
    return f"model.layers.{layer}.{_BLOCK_TENSORS[part]}.{kind}"


def _unpermute(weights: Any, heads: int) -> Any:
    """Undo llama.cpp's rotary layout of the q/k rows (its converter interleaves each head's two halves)."""
    half = weights.shape[0] // heads // 2
    return weights.reshape(heads, half, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def convert_llama_gguf(gguf_path: str | Path, out_dir: str | Path, name_or_path: str) -> Path:
    """Write ``config.json``, ``generation_config.json``, ``model.safetensors`` (fp32) and the tokenizer to ``out_dir``.

    Raises:
        L07Error: E7032 when the file is not a Llama-architecture GGUF or cannot be read.
    """
    import numpy as np
    import torch
    from gguf import GGUFReader, dequantize
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig

    gguf_path, out = Path(gguf_path), Path(out_dir)
    try:
        reader = GGUFReader(str(gguf_path))
    except (OSError, ValueError) as exc:
        raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE, f"cannot read {gguf_path}: {exc}") from exc

    def field(key: str, default: Any = None) -> Any:
        found = reader.fields.get(key)
        return default if found is None else found.contents()

    if field("general.architecture") != "llama":
        raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE,
                       f"{gguf_path.name}: architecture {field('general.architecture')!r} is not llama")
    heads = int(field("llama.attention.head_count"))
    kv_heads = int(field("llama.attention.head_count_kv", heads))
    tensor_names = {t.name for t in reader.tensors}
    config = LlamaConfig(
        vocab_size=int(field("llama.vocab_size") or len(field("tokenizer.ggml.tokens"))),
        hidden_size=int(field("llama.embedding_length")),
        intermediate_size=int(field("llama.feed_forward_length")),
        num_hidden_layers=int(field("llama.block_count")),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=int(field("llama.rope.dimension_count", field("llama.embedding_length") // heads)),
        max_position_embeddings=int(field("llama.context_length")),
        rms_norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        rope_parameters={"rope_theta": float(field("llama.rope.freq_base", 10000.0)), "rope_type": "default"},
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=field("tokenizer.ggml.bos_token_id"),
        eos_token_id=field("tokenizer.ggml.eos_token_id"),
        pad_token_id=field("tokenizer.ggml.padding_token_id"),
        unk_token_id=field("tokenizer.ggml.unknown_token_id"),
        architectures=["LlamaForCausalLM"],
    )
    config.name_or_path = name_or_path
    state: dict[str, Any] = {}
    for tensor in reader.tensors:
        weights = dequantize(tensor.data, tensor.tensor_type)
        if ".attn_q." in tensor.name:
            weights = _unpermute(weights, heads)
        elif ".attn_k." in tensor.name:
            weights = _unpermute(weights, kv_heads)
        state[_hf_name(tensor.name)] = torch.from_numpy(np.array(weights, dtype=np.float32))  # a copy: F32 tensors are read-only maps
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(out))
    GenerationConfig.from_model_config(config).save_pretrained(str(out))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as exc:  # noqa: BLE001 - any tokenizer loader failure is the same E7032 for the caller
        raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE, f"cannot load the tokenizer of {gguf_path}: {exc}") from exc
    tokenizer.save_pretrained(str(out))
    return out
