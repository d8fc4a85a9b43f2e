"""llama.cpp (through ``llama-cpp-python``) on a Q8_0 GGUF export of the model: the fast CPU engine.

Chosen by measurement over transformers and CTranslate2 (``benchmarks/serving.py``): on a 2-core CPU transformers
spends most of each decode step in Python and PyTorch dispatch, which llama.cpp does not pay. Prompts are tokenised
by the model's Hugging Face tokenizer and handed to llama.cpp as ids, and new ids are decoded by the same tokenizer,
so both engines see and produce text the same way; only the Q8_0 weights differ. Requests run one after another
(llama-cpp-python holds one sequence); the shared prompt prefix (system prompt, tool list) stays in the KV cache
between requests.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from .base import InferenceBackend, cut_at_stop
from .conversion import converted

QUANT = "q8_0"
_MAX_CTX = 8192


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def gguf_for(model_dir: str | Path, adapter_dir: str | Path | None = None) -> Path:
    """The model's Q8_0 GGUF, exported on first use and cached beside the model (see ``conversion``)."""
    from ..gguf_export import write_gguf

    return converted(model_dir, adapter_dir, f"{QUANT}.gguf", lambda hf, out: write_gguf(hf, out, QUANT))


class LlamaCppBackend(InferenceBackend):
    """A GGUF model in llama.cpp plus the Hugging Face tokenizer of the model it was exported from.

    Args:
        tokenizer: The model's tokenizer.
        gguf_path: The exported model.
        n_ctx: Context length (prompt + answer) in tokens.
        threads: CPU threads (default: every core).
    """

    name = "llama_cpp"

    def __init__(self, tokenizer: Any, gguf_path: str | Path, n_ctx: int = 4096, threads: int | None = None) -> None:
        from llama_cpp import Llama

        from ..generation import stop_token_ids

        self.tokenizer = tokenizer
        self.gguf_path = Path(gguf_path)
        self.stops = stop_token_ids(tokenizer)
        threads = threads or os.cpu_count() or 1
        try:
            self.llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=512, n_threads=threads,
                             n_threads_batch=threads, verbose=False)
        except Exception as exc:  # noqa: BLE001 - llama.cpp reports every load failure as a bare ValueError
            raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE,
                           f"llama.cpp cannot load {gguf_path}: {exc}") from exc
        self.n_ctx = n_ctx

    @classmethod
    def load(cls, model_dir: str | Path, adapter_dir: str | Path | None = None) -> "LlamaCppBackend":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        config = json.loads((Path(model_dir) / "config.json").read_text())
        n_ctx = min(int(config.get("max_position_embeddings") or 2048), _MAX_CTX)
        return cls(tokenizer, gguf_for(model_dir, adapter_dir), n_ctx=n_ctx)

    def _tokens(self, ids: list[int], limit: int) -> Iterator[int]:
        room = self.n_ctx - len(ids)
        if room <= 0:
            raise L07Error(L07ErrorCode.TOKENIZATION_ERROR,
                           f"prompt of {len(ids)} tokens does not fit the {self.n_ctx}-token context")
        made = 0
        # temp=0 is llama.cpp's greedy sampler: the argmax token, as transformers' do_sample=False.
        for tok in self.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            made += 1
            yield tok
            if tok in self.stops or made >= min(limit, room):
                return

    def generate_rendered(self, texts: list[str], max_new_tokens: int, limits: list[int] | None = None) -> list[Any]:
        from ..generation import GenerationResult

        started = time.perf_counter()
        rows = []
        for k, text in enumerate(texts):
            limit = min(limits[k], max_new_tokens) if limits else max_new_tokens
            rows.append(cut_at_stop(list(self._tokens(self.prompt_ids(text), limit)), self.stops, limit))
        per_item = (time.perf_counter() - started) / max(len(texts), 1)
        return [GenerationResult(text=self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                                 latency_s=per_item, new_tokens=len(ids)) for ids in rows]

    def stream(self, text: str, limit: int) -> Iterator[str]:
        ids: list[int] = []
        sent = ""
        for tok in self._tokens(self.prompt_ids(text), limit):
            ids.append(tok)
            # Decoding the whole answer each step keeps multi-token characters whole; only the new tail is sent.
            now = self.tokenizer.decode(ids, skip_special_tokens=True)
            if len(now) > len(sent) and not now.endswith("\ufffd"):
                yield now[len(sent):]
                sent = now

    def close(self) -> None:
        self.llm.close()
