"""What is inside a GGUF file (or a build dir): a metadata summary and a tensor-type table.

Why: after convert/quantize, users want to check in one command that the file carries
the right architecture, context length, chat template and special tokens, and what
the quantization actually did to each tensor type (Q4_K_M is a mix, not one type).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from ftpack.core.errors import FtpackError, bad_input

GGUF_MAGIC = b"GGUF"
UNQUANTIZED_TYPES = {"F32", "F16", "BF16", "F64"}


def file_type_names() -> dict[int, str]:
    """general.file_type values (llama_ftype) -> names as llama.cpp prints them (Q4_K_M,
    F16, ...), from gguf-py's ``LlamaFileType``, so new types need no edit here."""
    from gguf import LlamaFileType

    return {int(t): t.name.removeprefix("MOSTLY_").removeprefix("ALL_") for t in LlamaFileType
            if t.name.startswith(("MOSTLY_", "ALL_"))}


def file_type_name(file_type: int | None) -> str | int | None:
    """The name of a general.file_type value (the number itself when gguf-py does not know it)."""
    return file_type_names().get(file_type, file_type) if file_type is not None else None


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def field_value(reader, key: str) -> Any:
    """A metadata value as a Python object (strings decoded, arrays as lists)."""
    from gguf import GGUFValueType

    f = reader.fields.get(key)
    if f is None:
        return None
    if f.types and f.types[0] == GGUFValueType.ARRAY:
        sub = f.types[-1]
        if sub == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if f.types and f.types[0] == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace")
    return f.parts[f.data[0]].tolist()[0]


def tensor_type_table(header) -> list[dict[str, Any]]:
    """One row per GGML type of a :class:`~ftpack.gguf.header.GGUFHeader`: how many tensors,
    parameters and bytes."""
    from gguf import GGMLQuantizationType

    counts: Counter[str] = Counter()
    params: Counter[str] = Counter()
    nbytes: Counter[str] = Counter()
    for name, ggml_type in header.tensor_types.items():
        kind = GGMLQuantizationType(ggml_type).name
        counts[kind] += 1
        params[kind] += math.prod(header.tensors[name])
        nbytes[kind] += tensor_bytes(ggml_type, header.tensors[name])
    return [{"type": k, "tensors": counts[k], "parameters": params[k], "bytes": nbytes[k]}
            for k in sorted(counts, key=lambda k: -nbytes[k])]


def tensor_bytes(ggml_type: int, ne: tuple[int, ...]) -> int:
    """Bytes of a tensor's data in the GGUF (ValueError/KeyError for a type gguf-py does not know)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    return math.prod(ne) // block * size


def read_gguf_summary_header(path: Path | str):
    """The GGUF's header with its vocabulary (:func:`~ftpack.gguf.header.read_gguf_header`:
    milliseconds, where gguf-py's reader takes seconds for a 49k-token vocabulary):
    not-a-GGUF, damaged and truncated files are clear errors."""
    from ftpack.gguf.header import read_gguf_header

    path = Path(path)
    if not path.exists():
        raise bad_input(f"File not found: {path}")
    if path.is_dir():
        raise bad_input(f"{path} is a folder, not a GGUF file.")
    if not is_gguf(path):
        raise bad_input(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes).",
                        "Convert a Hugging Face model first: ftpack convert MODEL_DIR -o model.gguf")
    try:
        header = read_gguf_header(path, arrays=("tokenizer.ggml.tokens",))
    except FtpackError as exc:
        raise bad_input(f"{path} is damaged or truncated ({exc.message}).",
                        "Re-create it (convert/quantize again).") from None
    size = path.stat().st_size
    for name, ggml_type in header.tensor_types.items():
        try:
            end = header.data_start + header.tensor_offsets[name] + tensor_bytes(ggml_type, header.tensors[name])
        except (ValueError, KeyError):
            raise bad_input(f"{path} is damaged: tensor {name} has unknown type {ggml_type}.",
                            "Re-create it (convert/quantize again).") from None
        if end > size:
            raise bad_input(f"{path} is truncated: tensor {name} ends past the end of the file.",
                            "Re-create it (convert/quantize again).")
    return header


def summarize_gguf(path: Path | str) -> dict[str, Any]:
    """The facts a user checks: architecture, size, context, file type, tokenizer, template."""
    path = Path(path)
    header = read_gguf_summary_header(path)
    get = header.value
    arch = get("general.architecture")
    ftype = get("general.file_type")
    tokens = header.arrays.get("tokenizer.ggml.tokens") or []
    special: dict[str, Any] = {}
    from gguf import Keys

    ids = {"bos": Keys.Tokenizer.BOS_ID, "eos": Keys.Tokenizer.EOS_ID, "eot": Keys.Tokenizer.EOT_ID,
           "unk": Keys.Tokenizer.UNK_ID, "pad": Keys.Tokenizer.PAD_ID, "sep": Keys.Tokenizer.SEP_ID}
    for typ, key in ids.items():
        tid = get(key)
        if tid is not None:
            special[typ] = {"id": tid, "text": tokens[tid] if 0 <= tid < len(tokens) else None}
    bases = [get(f"general.base_model.{i}.name") for i in range(get("general.base_model.count") or 0)]
    table = tensor_type_table(header)
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "architecture": arch,
        "name": get("general.name"),
        "license": get("general.license"),
        "base_models": bases,
        "file_type": file_type_name(ftype),
        "file_type_id": ftype,
        "parameters": sum(r["parameters"] for r in table),
        "context_length": get(f"{arch}.context_length"),
        "embedding_length": get(f"{arch}.embedding_length"),
        "block_count": get(f"{arch}.block_count"),
        "head_count": get(f"{arch}.attention.head_count"),
        "head_count_kv": get(f"{arch}.attention.head_count_kv"),
        "rope_freq_base": get(f"{arch}.rope.freq_base"),
        "tokenizer_model": get("tokenizer.ggml.model"),
        "pre_tokenizer": get("tokenizer.ggml.pre"),
        "vocab_size": len(tokens),
        "add_bos_token": get("tokenizer.ggml.add_bos_token"),
        "add_eos_token": get("tokenizer.ggml.add_eos_token"),
        "special_tokens": special,
        "chat_template": get("tokenizer.chat_template"),
        "tensors": len(header.tensors),
        "tensor_types": table,
    }


def is_quantized(summary: dict[str, Any]) -> bool:
    """True when most weights are already in a quantized type (requantizing loses quality)."""
    quant = sum(r["bytes"] for r in summary["tensor_types"] if r["type"] not in UNQUANTIZED_TYPES)
    return quant > 0


def summarize_build(build_dir: Path | str) -> dict[str, Any]:
    """A build dir's manifest: config, and per stage status, seconds, outputs, metrics."""
    from ftpack.core.manifest import MANIFEST_NAME, Manifest

    build_dir = Path(build_dir)
    if not (build_dir / MANIFEST_NAME).is_file():
        raise bad_input(f"{build_dir} is not a build dir (no {MANIFEST_NAME}).",
                        "Pass a build dir (builds/<name>) or a .gguf file.")
    m = Manifest.load(build_dir)
    stages = {}
    for name, rec in m.stages.items():
        stages[name] = {"status": rec.status, "seconds": rec.seconds, "main_output": rec.main_output,
                        "bytes": sum(o.bytes for o in rec.outputs), "metrics": rec.metrics, "error": rec.error}
    return {"build_dir": str(build_dir), "name": m.name, "created": m.created, "updated": m.updated,
            "config": m.config, "stages": stages}


def inspect_path(path: Path | str) -> tuple[str, dict[str, Any]]:
    """('gguf'|'build', summary) for a GGUF file or a build dir."""
    path = Path(path)
    if path.is_dir():
        return "build", summarize_build(path)
    if not path.exists():
        raise bad_input(f"File not found: {path}")
    return "gguf", summarize_gguf(path)


def template_head(template: Any, lines: int = 4) -> str:
    if template is None:
        return "(none)"
    text = template if isinstance(template, str) else str(template)
    head = text.strip().splitlines()[:lines]
    more = " …" if len(text.strip().splitlines()) > lines else ""
    return "\n".join(head) + more

