"""llama.cpp (through ``llama-cpp-python``) on a GGUF export (F16): the fast CPU engine ``auto`` tries first.

On a 2-core CPU transformers spends most of each decode step in Python and PyTorch dispatch, which llama.cpp does not
pay (``benchmarks/serving.py``); measured on the demo it also validated fastest (``backends/__init__``). It installs
with ``pip install -e .[llama-cpp]`` (compiles llama.cpp) and is what checks GGUF exports. Prompts are tokenised by the
model's Hugging Face tokenizer and handed to llama.cpp as ids, and new ids are decoded by the same tokenizer, so both
engines see and produce text the same way. A single request runs in one long-lived context, whose KV cache keeps the
last prompt's prefix (system prompt, tool list) for the next. A batch of prompts (a validation pass) is decoded
together by ``llama_cpp_batch``: each shared prefix computed once, one batch row per answer, in ``lanes`` contiguous
shares side by side.
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from .. import gguf_export
from ..generation import GenerationResult, stop_token_ids
from . import llama_cpp_batch
from .base import InferenceBackend, cut_at_stop, refuse_decoding_rules
from .conversion import converted, source_version
from .threads import default_lanes, default_threads

# F16 by measurement (benchmarks/serving.py, SmolLM2-135M, 2 cores): Q8_0 decodes no faster at this size (~30
# tokens/s on one thread either way) but llama.cpp's Q8_0 kernels also quantise the activations to 8 bits, and the
# greedy answer then equalled transformers' on 31% of prompts ("The capital of France is Paris." became
# "L'Étoile, la Cité, ..."); F16 keeps the answers. L07_GGUF_QUANT=q8_0 halves the file for larger models.
QUANT_ENV = "L07_GGUF_QUANT"
DEFAULT_QUANT = "f16"
_MAX_CTX = 8192
_LOAD_LOCK = threading.Lock()


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def gguf_for(model_dir: str | Path, adapter_dir: str | Path | None = None) -> Path:
    """The model's GGUF (``L07_GGUF_QUANT``, default F16), exported on first use and cached beside the model.

    Raises:
        L07Error: E7110 an unknown quantisation; the exporter's errors for a model it cannot write.
    """

    quant = (os.environ.get(QUANT_ENV) or DEFAULT_QUANT).strip().lower()
    return converted(model_dir, adapter_dir, f"{quant}.gguf", lambda hf, out: gguf_export.write_gguf(hf, out, quant),
                     version=source_version(gguf_export.__file__))


def _cpu_advertises_amx() -> bool:
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@contextmanager
def _without_extra_buffers(active: bool) -> Iterator[None]:
    """Load with llama.cpp's extra CPU buffer types (AMX, repacked weights) off when ``active``.

    A virtual machine can advertise AMX in cpuid without enabling its register state; llama.cpp then dies with
    SIGILL on the first multi-token batch (measured here: ``tilezero`` in ``ggml::cpu::amx``). llama-cpp-python has no
    argument for ``use_extra_bufts``, so the default model parameters are patched for the one load.
    """
    if not active:
        yield
        return
    from llama_cpp import llama_cpp as native

    original = native.llama_model_default_params

    def params():  # type: ignore[no-untyped-def]
        p = original()
        p.use_extra_bufts = False
        return p

    with _LOAD_LOCK:
        native.llama_model_default_params = params
        try:
            yield
        finally:
            native.llama_model_default_params = original


class LlamaCppBackend(InferenceBackend):
    """A GGUF model in llama.cpp plus the Hugging Face tokenizer of the model it was exported from.

    Args:
        tokenizer: The model's tokenizer.
        gguf_path: The exported model.
        n_ctx: Context length (prompt + answer) in tokens.
        threads: CPU threads per context (default: :func:`default_threads`).
        lanes: Shares a batch of prompts is split into, each decoded together in a context of its own at
            ``threads`` threads (default: :func:`default_lanes`).
    """

    name = "llama_cpp"

    def __init__(self, tokenizer: Any, gguf_path: str | Path, n_ctx: int = 4096, threads: int | None = None,
                 lanes: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.gguf_path = Path(gguf_path)
        self.stops = stop_token_ids(tokenizer)
        threads = threads or default_threads()
        self._context = {"model_path": str(gguf_path), "n_ctx": n_ctx, "n_batch": 512, "n_threads": threads,
                         "n_threads_batch": threads, "verbose": False}
        self.n_ctx = n_ctx
        self.threads = threads
        self.llm = self._open()
        self.n_vocab = self.llm.n_vocab()
        self.lane_count = lanes or default_lanes(threads)

    def _open(self) -> Any:
        from llama_cpp import Llama

        try:
            with _without_extra_buffers(_cpu_advertises_amx()):
                llm = Llama(**self._context)
        except Exception as exc:  # noqa: BLE001 - llama.cpp reports every load failure as a bare ValueError
            raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE,
                           f"llama.cpp cannot load {self.gguf_path}: {exc}") from exc
        # Freed before interpreter teardown: llama-cpp-python's own __del__ fails once its module globals are gone.
        weakref.finalize(self, llm.close)
        return llm

    @classmethod
    def load(cls, model_dir: str | Path, adapter_dir: str | Path | None = None) -> "LlamaCppBackend":
        from transformers import AutoTokenizer

        refuse_decoding_rules(Path(model_dir), "llama.cpp")
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        config = json.loads((Path(model_dir) / "config.json").read_text())
        n_ctx = min(int(config.get("max_position_embeddings") or 2048), _MAX_CTX)
        return cls(tokenizer, gguf_for(model_dir, adapter_dir), n_ctx=n_ctx)

    def _tokens(self, ids: list[int], limit: int, ignore_stop: bool = False) -> Iterator[int]:
        room = self.n_ctx - len(ids)
        if room <= 0:
            raise L07Error(L07ErrorCode.TOKENIZATION_ERROR,
                           f"prompt of {len(ids)} tokens does not fit the {self.n_ctx}-token context")
        made = 0
        # temp=0 is llama.cpp's greedy sampler: the argmax token, as transformers' do_sample=False.
        for tok in self.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            made += 1
            yield tok
            if (tok in self.stops and not ignore_stop) or made >= min(limit, room):
                return

    def generate_rendered(self, texts: list[str], max_new_tokens: int, limits: list[int] | None = None,
                          ignore_stop: bool = False) -> list[Any]:
        started = time.perf_counter()
        prompts = [self.prompt_ids(text) for text in texts]
        caps = [min(limits[k], max_new_tokens) if limits else max_new_tokens for k in range(len(texts))]
        for k, ids in enumerate(prompts):
            if len(ids) >= self.n_ctx:
                raise L07Error(L07ErrorCode.TOKENIZATION_ERROR,
                               f"prompt of {len(ids)} tokens does not fit the {self.n_ctx}-token context")
            caps[k] = min(caps[k], self.n_ctx - len(ids))
        if len(texts) == 1:
            # One request keeps to the long-lived context, whose KV cache still holds the last prompt's prefix.
            made = list(self._tokens(prompts[0], caps[0], ignore_stop))
            rows = [made if ignore_stop else cut_at_stop(made, self.stops, caps[0])]
        else:
            rows = self._together(prompts, caps, ignore_stop)
        per_item = (time.perf_counter() - started) / max(len(texts), 1)
        return [GenerationResult(text=self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                                 latency_s=per_item, new_tokens=len(ids)) for ids in rows]

    def _together(self, prompts: list[list[int]], caps: list[int], ignore_stop: bool) -> list[list[int]]:
        """Many prompts through :func:`~.llama_cpp_batch.decode_together`, in ``lane_count`` contiguous shares
        decoded side by side (neighbouring prompts, turns of one conversation, share the longest prefixes)."""
        lanes = max(1, min(self.lane_count, len(prompts)))
        size = min(-(-len(prompts) // lanes), llama_cpp_batch.MAX_SEQUENCES)
        shares = [range(i, min(i + size, len(prompts))) for i in range(0, len(prompts), size)]

        def run(share: range) -> list[list[int]]:
            return llama_cpp_batch.decode_together(self.llm.model, self.n_vocab, [prompts[k] for k in share],
                                                   [caps[k] for k in share], self.stops, self.threads, ignore_stop)

        if len(shares) == 1:
            return run(shares[0])
        from concurrent.futures import ThreadPoolExecutor

        # llama_decode releases the GIL (a ctypes call), so the shares decode in parallel.
        with ThreadPoolExecutor(max_workers=lanes) as pool:
            return [row for rows in pool.map(run, shares) for row in rows]

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
