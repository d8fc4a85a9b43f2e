"""Exports a runtime outside L07 can load: a merged Hugging Face folder, a GGUF file (``gguf_export``) and an Ollama
``Modelfile`` whose template writes prompts in the one tool-call format (``models/tool_calls.py``).

Formats nest: ``hf`` is the merged folder; ``gguf`` adds ``model.gguf``; ``ollama`` adds the ``Modelfile`` beside it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..models.error_codes import L07Error, L07ErrorCode
from ..models.tool_calls import TOOL_PREAMBLE
from .gguf_export import QUANTS, write_gguf

FORMATS = ("hf", "gguf", "ollama")
GGUF_FILE = "model.gguf"
MODELFILE = "Modelfile"
_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"

__all__ = ["FORMATS", "GGUF_FILE", "MODELFILE", "QUANTS", "check_format", "export_files", "merge_to_hf",
           "ollama_template", "write_gguf", "write_modelfile"]


def check_format(fmt: str, quant: str) -> tuple[str, str]:
    """``fmt`` and ``quant`` lower-cased, or E7110 naming the choices."""
    fmt, quant = fmt.lower(), quant.lower()
    if fmt not in FORMATS:
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                       f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if quant not in QUANTS:
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                       f"unknown GGUF quantisation {quant!r}; choose one of {', '.join(QUANTS)}")
    return fmt, quant


def merge_to_hf(model_dir: str | Path, adapter_dir: str | Path | None, out_dir: str | Path) -> Path:
    """The model (with ``adapter_dir`` merged into its weights when given) saved as an fp32 safetensors folder with
    its tokenizer and chat template.

    Raises:
        L07Error: E7032 the base cannot load, E7604 the adapter cannot.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        # fp32 on the CPU: the merge is exact and the export does not depend on which accelerator ran it.
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - loader errors vary by format; all mean "base model unusable"
        raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE, f"cannot load model from {model_dir}: {exc}") from exc
    if adapter_dir is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        except Exception as exc:  # noqa: BLE001
            raise L07Error(L07ErrorCode.ADAPTER_LOADING_FAILURE, f"cannot merge adapter {adapter_dir}: {exc}") from exc
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def _default_system(hf_dir: Path) -> str | None:
    """The system text the chat template inserts when a conversation has none (SmolLM2's "You are a helpful AI
    assistant named SmolLM..."), so Ollama prompts match the ones the model was trained on."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = _chat_template(hf_dir)
    rendered = ImmutableSandboxedEnvironment().from_string(template).render(
        messages=[{"role": "user", "content": "\x00"}], add_generation_prompt=False, bos_token="", eos_token="")
    head = f"{_IM_START}system\n"
    if not rendered.startswith(head):
        return None
    return rendered[len(head):rendered.index(_IM_END)]


def _chat_template(hf_dir: Path) -> str:
    jinja = hf_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = hf_dir / "tokenizer_config.json"
    template = json.loads(config.read_text(encoding="utf-8")).get("chat_template") if config.is_file() else None
    if not isinstance(template, str):
        raise L07Error(L07ErrorCode.MODEL_INCOMPATIBILITY_WITH_GATEWAY, f"{hf_dir} has no chat template")
    return template


def ollama_template(default_system: str | None) -> str:
    """A Go template (Ollama ``TEMPLATE``) writing ChatML with the Hermes tool format of ``to_plain_messages``:
    tools in the system turn inside ``<tools></tools>``, calls as ``<tool_call>`` blocks after the text, consecutive
    ``tool`` messages as one user turn of ``<tool_response>`` blocks, and the generation prompt last.

    Ollama renders each tool (with its ``{"type": "function"}`` wrapper, in Go's key order) and each call's arguments
    as compact JSON with its own encoder, where training wrote the function object with sorted keys
    (``tool_schema_text``) and arguments with spaces; the framing tokens are the same.
    """
    head, tail = TOOL_PREAMBLE.replace("{{", "{").replace("}}", "}").split("{tools}")
    fallback = f"{{{{ else }}}}{_IM_START}system\n{default_system}{_IM_END}\n" if default_system else ""
    # No left-trimming markers after literal newlines: every newline below is one the training render writes.
    return (
        "{{ if or .System .Tools }}" + _IM_START + "system\n"
        "{{ if .System }}{{ .System }}{{ if .Tools }}\n\n{{ end }}{{ end }}"
        "{{ if .Tools }}" + head + "{{ range $k, $t := .Tools }}{{ if $k }}\n{{ end }}{{ $t }}{{ end }}" + tail
        + "{{ end }}" + _IM_END + "\n" + fallback + "{{ end }}"
        "{{ $prev := \"\" }}"
        "{{ range $i, $m := .Messages }}"
        "{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        "{{ if eq $m.Role \"tool\" }}"
        "{{ if ne $prev \"tool\" }}" + _IM_START + "user\n{{ else }}\n{{ end }}"
        "<tool_response>\n{{ $m.Content }}\n</tool_response>"
        "{{ if or $last (ne (index (slice $.Messages $i) 1).Role \"tool\") }}" + _IM_END + "\n{{ end }}"
        "{{ else if eq $m.Role \"assistant\" }}" + _IM_START + "assistant\n"
        "{{ if $m.Content }}{{ $m.Content }}{{ if $m.ToolCalls }}\n{{ end }}{{ end }}"
        "{{ range $j, $c := $m.ToolCalls }}{{ if $j }}\n{{ end }}"
        "<tool_call>\n{\"name\": \"{{ $c.Function.Name }}\", \"arguments\": {{ $c.Function.Arguments }}}\n</tool_call>"
        "{{ end }}{{ if not $last }}" + _IM_END + "\n{{ end }}"
        "{{ else if ne $m.Role \"system\" }}" + _IM_START + "{{ $m.Role }}\n{{ $m.Content }}" + _IM_END + "\n"
        "{{ end }}"
        "{{ if and $last (ne $m.Role \"assistant\") }}" + _IM_START + "assistant\n{{ end }}"
        "{{ $prev = $m.Role }}"
        "{{ end }}"
    )


def write_modelfile(hf_dir: str | Path, out_dir: str | Path, gguf_name: str = GGUF_FILE) -> Path:
    """An Ollama ``Modelfile`` beside ``gguf_name``: ``FROM ./model.gguf``, the ChatML + Hermes tool template, stop
    at ``<|im_end|>`` and greedy decoding (temperature 0), as L07 validates the model.

    Raises:
        L07Error: E7208 when the model's chat template is not ChatML (the only template written here).
    """
    hf_dir, out = Path(hf_dir), Path(out_dir)
    template = _chat_template(hf_dir)
    if _IM_START not in template or _IM_END not in template:
        raise L07Error(L07ErrorCode.MODEL_INCOMPATIBILITY_WITH_GATEWAY,
                       "an Ollama Modelfile is written for ChatML chat templates (<|im_start|>/<|im_end|>) only")
    body = ollama_template(_default_system(hf_dir))
    if '"""' in body:
        raise L07Error(L07ErrorCode.MODEL_INCOMPATIBILITY_WITH_GATEWAY, 'the template contains """')
    text = (f"FROM ./{gguf_name}\n\nTEMPLATE \"\"\"{body}\"\"\"\n\n"
            f"PARAMETER stop \"{_IM_END}\"\nPARAMETER stop \"{_IM_START}\"\nPARAMETER temperature 0\n")
    out.mkdir(parents=True, exist_ok=True)
    path = out / MODELFILE
    path.write_text(text, encoding="utf-8")
    return path


def export_files(model_dir: str | Path, adapter_dir: str | Path | None, out_dir: str | Path, fmt: str = "hf",
                 quant: str = "q8_0") -> dict[str, Any]:
    """Write everything ``fmt`` needs into ``out_dir``: the merged folder, plus ``model.gguf`` (gguf, ollama), plus
    the ``Modelfile`` (ollama).

    Returns:
        ``{"format", "quant", "files": {"hf": [...], "gguf": "model.gguf", "ollama": "Modelfile"}}`` (names relative
        to ``out_dir``).
    """
    fmt, quant = check_format(fmt, quant)
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    merge_to_hf(model_dir, adapter_dir, out)
    files: dict[str, Any] = {"hf": sorted(p.name for p in out.iterdir() if p.is_file())}
    if fmt in ("gguf", "ollama"):
        write_gguf(out, out / GGUF_FILE, quant)
        files["gguf"] = GGUF_FILE
    if fmt == "ollama":
        write_modelfile(out, out, GGUF_FILE)
        files["ollama"] = MODELFILE
    return {"format": fmt, "quant": quant if fmt != "hf" else None, "files": files}
