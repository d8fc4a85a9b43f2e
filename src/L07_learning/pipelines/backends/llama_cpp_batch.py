"""Greedy answers to many prompts in one llama.cpp context: each shared prompt prefix is computed once, and all
answers are decoded together, one batch row per prompt.

Why by hand: llama-cpp-python's ``Llama`` object decodes one sequence per context. A validation pass sends dozens of
prompts that repeat the same system prompt and tool schemas (on the demo, 12,291 prompt tokens of which 3,180 are
distinct prefixes), and on a CPU prefill is the bulk of the work (``benchmarks/validation_pieces.py``). llama.cpp
itself supports both halves, through its low-level API, which this module drives: a prompt token shared by several
prompts enters the batch once with all their sequence ids (the cells of a unified KV cache belong to every sequence
that shares them), and every decoding step is one batch holding the next token of each unfinished answer.

Depends on ``llama_cpp`` only (imported inside functions); the backend (``llama_cpp_backend``) owns the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode

#: Tokens per llama_decode call while prefilling (llama.cpp's default n_batch).
PREFILL_CHUNK = 512
#: Sequences one context may hold (LLAMA_MAX_SEQ in llama.cpp).
MAX_SEQUENCES = 256


@dataclass
class PrefixTrie:
    """The distinct prompt prefixes, as batch entries in an order llama.cpp accepts.

    Entry ``j`` is one token at one position, shared by the sequences in ``seqs[j]`` (every prompt that starts with
    the same tokens up to it). Entries are created prompt by prompt, so along any prompt's path positions only grow
    and a parent always comes before its children, which a batch split into chunks needs.

    Attributes:
        tokens: Token of each entry.
        positions: Position of each entry in its sequences.
        seqs: Prompt indices sharing each entry.
        last: For each prompt, the entry of its last token (its logits give the first answer token).
    """

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    seqs: list[list[int]] = field(default_factory=list)
    last: list[int] = field(default_factory=list)

    @classmethod
    def build(cls, prompts: list[list[int]]) -> "PrefixTrie":
        trie = cls()
        children: list[dict[int, int]] = [{}]  # node 0 is the root; node n > 0 is entry n - 1
        for k, prompt in enumerate(prompts):
            if not prompt:
                raise L07Error(L07ErrorCode.TOKENIZATION_ERROR, "an empty prompt has nothing to answer")
            node = 0
            for pos, tok in enumerate(prompt):
                child = children[node].get(tok)
                if child is None:
                    child = len(children)
                    children[node][tok] = child
                    children.append({})
                    trie.tokens.append(tok)
                    trie.positions.append(pos)
                    trie.seqs.append([])
                trie.seqs[child - 1].append(k)
                node = child
            trie.last.append(node - 1)
        return trie


def _context(model: Any, cells: int, sequences: int, threads: int) -> Any:
    from llama_cpp import llama_cpp as native

    params = native.llama_context_default_params()
    params.n_ctx = cells
    params.n_batch = PREFILL_CHUNK
    params.n_ubatch = PREFILL_CHUNK
    params.n_seq_max = sequences
    params.n_threads = threads
    params.n_threads_batch = threads
    # One KV buffer for all sequences: a cell can then belong to several of them (the shared prefixes).
    params.kv_unified = True
    ctx = native.llama_init_from_model(model, params)
    if not ctx:
        raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE,
                       f"llama.cpp could not open a context of {cells} cells for {sequences} sequences")
    return ctx


def _decode(ctx: Any, batch: Any) -> None:
    from llama_cpp import llama_cpp as native

    status = native.llama_decode(ctx, batch)
    if status != 0:
        raise L07Error(L07ErrorCode.MODEL_INFERENCE_ERROR_RATE_HIGH, f"llama.cpp llama_decode failed ({status})")


def _argmax(ctx: Any, index: int, n_vocab: int) -> int:
    import numpy as np
    from llama_cpp import llama_cpp as native

    row = native.llama_get_logits_ith(ctx, index)
    # First maximum, as torch.argmax in transformers' greedy search.
    return int(np.argmax(np.ctypeslib.as_array(row, shape=(n_vocab,))))


def decode_together(model: Any, n_vocab: int, prompts: list[list[int]], caps: list[int], stops: list[int],
                    threads: int, ignore_stop: bool = False) -> list[list[int]]:
    """Greedy new token ids for each prompt: up to its cap, and up to and including its first stop token unless
    ``ignore_stop``.

    Args:
        model: A loaded ``llama_model`` pointer (``Llama.model``).
        n_vocab: The model's vocabulary size.
        prompts: Prompt token ids (at most 256 prompts, llama.cpp's sequence limit).
        caps: New tokens allowed per prompt.
        stops: End-of-turn token ids.
        threads: CPU threads for the context.
        ignore_stop: Decode exactly ``caps`` tokens (timing work).
    """
    import numpy as np
    from llama_cpp import llama_cpp as native

    trie = PrefixTrie.build(prompts)
    cells = len(trie.tokens) + sum(caps) + 1
    n = len(prompts)
    ctx = _context(model, cells, n, threads)
    batch = native.llama_batch_init(max(PREFILL_CHUNK, n), 0, n)
    try:
        answers: list[list[int]] = [[] for _ in prompts]
        wanted: dict[int, list[int]] = {}  # entry -> the prompts that end there (identical prompts share one)
        for k, entry in enumerate(trie.last):
            wanted.setdefault(entry, []).append(k)
        for start in range(0, len(trie.tokens), PREFILL_CHUNK):
            entries = range(start, min(start + PREFILL_CHUNK, len(trie.tokens)))
            for i, j in enumerate(entries):
                batch.token[i] = trie.tokens[j]
                batch.pos[i] = trie.positions[j]
                batch.n_seq_id[i] = len(trie.seqs[j])
                for s, seq in enumerate(trie.seqs[j]):
                    batch.seq_id[i][s] = seq
                batch.logits[i] = j in wanted
            batch.n_tokens = len(entries)
            _decode(ctx, batch)
            for i, j in enumerate(entries):
                if j in wanted:
                    first = _argmax(ctx, i, n_vocab)
                    for k in wanted[j]:
                        answers[k].append(first)

        ends = set(stops)
        for k in range(n):
            answers[k] = answers[k][:max(caps[k], 0)]

        def unfinished(k: int) -> bool:
            made = answers[k]
            return 0 < len(made) < caps[k] and (ignore_stop or made[-1] not in ends)

        active = [k for k in range(n) if unfinished(k)]
        while active:
            for i, k in enumerate(active):
                batch.token[i] = answers[k][-1]
                batch.pos[i] = len(prompts[k]) + len(answers[k]) - 1
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = k
                batch.logits[i] = True
            batch.n_tokens = len(active)
            _decode(ctx, batch)
            # Every row asked for logits, so they lie in row order.
            rows = np.ctypeslib.as_array(native.llama_get_logits(ctx), shape=(len(active), n_vocab))
            for k, tok in zip(active, rows.argmax(axis=1).tolist()):
                answers[k].append(tok)
            active = [k for k in active if unfinished(k)]
        return answers
    finally:
        native.llama_batch_free(batch)
        native.llama_free(ctx)


__all__ = ["MAX_SEQUENCES", "PREFILL_CHUNK", "PrefixTrie", "decode_together"]
