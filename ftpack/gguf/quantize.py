"""GGUF → Q4_K_M (or any llama.cpp type) with llama.cpp's own quantizer, in a child process.

Why a child process: ``llama_model_quantize`` is native code; if it crashes (bad file,
out of memory, a bug) the child dies, and the CLI reports a clear error instead of
disappearing. The child also streams llama.cpp's log, so the parent can show a
per-tensor progress bar (or at least a spinner with the elapsed time).

The list of types is derived from llama-cpp-python's ``LLAMA_FTYPE_*`` constants, so
it follows whatever llama.cpp version is installed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ftpack.core.atomic import atomic_path, check_free_space, human_bytes
from ftpack.core.config import DEFAULT_QUANT
from ftpack.core.errors import FtpackError, bad_input
from ftpack.core.report import get_reporter
#: Types ftpack quantizes only with an importance matrix: llama.cpp refuses IQ1/IQ2/IQ3_XXS tensors
#: and Q2_K_S without one (quality collapses), and the rest of the IQ3 family degrades badly.
NEEDS_IMATRIX = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M",
                 "Q2_K_S")
#: ``--quant auto`` tries these, smallest first, and keeps the first within ``--max-kld``.
AUTO_CANDIDATES = ("Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
_PROGRESS_RE = re.compile(r"\[\s*(\d+)\s*/\s*(\d+)\s*\]")
_IMATRIX_ENTRIES_RE = re.compile(r"have importance matrix data with (\d+) entries")
_IMATRIX_MISSING_RE = re.compile(r"did not find weights for (\S+)")


def quant_types() -> dict[str, int]:
    """Every type llama.cpp's quantizer offers: name (e.g. ``Q4_K_M``) -> llama_ftype."""
    try:
        import llama_cpp
    except ImportError:
        raise FtpackError("llama-cpp-python is not installed; it provides llama.cpp's quantizer.",
                          "pip install llama-cpp-python") from None
    types: dict[str, int] = {}
    for attr in dir(llama_cpp):
        if attr.startswith("LLAMA_FTYPE_MOSTLY_"):
            types[attr[len("LLAMA_FTYPE_MOSTLY_"):]] = int(getattr(llama_cpp, attr))
    if hasattr(llama_cpp, "LLAMA_FTYPE_ALL_F32"):
        types["F32"] = int(llama_cpp.LLAMA_FTYPE_ALL_F32)
    return dict(sorted(types.items(), key=lambda kv: kv[1]))


def resolve_quant_type(name: str) -> tuple[str, int]:
    """Case-insensitive lookup; unknown names list what exists."""
    types = quant_types()
    key = name.strip().upper()
    if key not in types:
        raise bad_input(f"Unknown quantization type {name!r}.",
                        f"llama.cpp offers: {', '.join(types)}.")
    return key, types[key]


@dataclass
class QuantizeResult:
    path: Path
    quant_type: str
    file_type: int
    bytes: int
    input_bytes: int
    seconds: float
    requantized: bool
    imatrix: str | None = None
    imatrix_entries: int | None = None  # what llama.cpp's log says it received
    imatrix_missing: list[str] = field(default_factory=list)  # blk.* weights quantized without importance data


def quantize_gguf(src: Path | str, dst: Path | str, quant_type: str = DEFAULT_QUANT, *,
                  imatrix: Path | str | None = None, threads: int | None = None) -> QuantizeResult:
    """Quantize ``src`` into ``dst`` with llama.cpp (in a child process), atomically."""
    from ftpack.gguf.inspect import is_quantized, summarize_gguf

    reporter = get_reporter()
    src, dst = Path(src), Path(dst)
    name, ftype = resolve_quant_type(quant_type)
    summary = summarize_gguf(src)  # not-a-GGUF / truncated -> clear error before spawning
    if src.resolve() == dst.resolve():
        raise bad_input("The output file must differ from the input file.")
    if imatrix is not None:
        imatrix = Path(imatrix)
        if not imatrix.is_file():
            raise bad_input(f"Importance matrix not found: {imatrix}")
        load_imatrix(imatrix)  # validate in the parent: a bad file is a clear error
    elif name in NEEDS_IMATRIX:
        raise bad_input(f"{name} needs an importance matrix (--imatrix FILE); without one the model degrades badly.",
                        "Compute one with `ftpack imatrix MODEL|BUILD --data FILE` (or llama.cpp's "
                        "llama-imatrix), or pick Q4_K_M / Q5_K_M / Q6_K.")
    if threads is not None and threads < 0:
        raise bad_input("--threads must be 0 (llama.cpp's choice) or a positive number.")
    requantize = is_quantized(summary)
    if requantize:
        reporter.warn(f"{src.name} is already quantized ({summary['file_type']}); quantizing it again to {name} "
                      "loses more quality than quantizing the F16/BF16 original.",
                      "Quantize the F16/BF16 GGUF instead when you have it.")
    in_bytes = src.stat().st_size
    check_free_space(dst.parent, (2 * in_bytes if name == "F32" else in_bytes) + (16 << 20), f"the {name} GGUF")

    t0 = time.monotonic()
    with atomic_path(dst) as tmp:
        job = {"src": str(src), "dst": str(tmp), "ftype": ftype, "threads": threads or 0,
               "allow_requantize": requantize, "imatrix": str(imatrix) if imatrix else None}
        log = _run_child(job, name, reporter)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise FtpackError(f"llama.cpp's quantizer wrote no output for {src}.")
    seconds = time.monotonic() - t0
    out_bytes = dst.stat().st_size
    missing = [n for n in log["missing"] if n.startswith("blk.")] if imatrix else []
    if missing:  # names that did not match are only logged by llama.cpp: say it
        reporter.warn(f"The importance matrix has no entry for {len(missing)} weight(s) of {src.name} "
                      f"(e.g. {missing[0]}); llama.cpp quantized them without it.",
                      "Compute the importance matrix for this model (`ftpack imatrix`).")
    reporter.info(f"Quantized {src.name} ({human_bytes(in_bytes)}) to {name}"
                  + (" with an importance matrix" if imatrix else "") + f": {dst} "
                  f"({human_bytes(out_bytes)}) in {seconds:.1f}s.")
    return QuantizeResult(dst, name, ftype, out_bytes, in_bytes, seconds, requantize,
                          str(imatrix) if imatrix else None, log["entries"], missing)


def _run_child(job: dict[str, Any], name: str, reporter) -> dict[str, Any]:
    """Spawn the quantizer, show progress from its log, and turn failures into FtpackError.

    Returns what its log says about the importance matrix: ``entries`` received and the
    weights it found ``missing`` from it."""
    cmd = [sys.executable, "-m", "ftpack.gguf.quantize", json.dumps(job)]
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding the ftpack package
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    tail: deque[str] = deque(maxlen=40)
    state: dict[str, Any] = {"done": 0, "total": None, "entries": None, "missing": []}

    def pump() -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                tail.append(line)
            m = _PROGRESS_RE.search(line)
            if m:
                state["done"], state["total"] = int(m.group(1)), int(m.group(2))
            m = _IMATRIX_ENTRIES_RE.search(line)
            if m:
                state["entries"] = int(m.group(1))
            m = _IMATRIX_MISSING_RE.search(line)
            if m:
                state["missing"].append(m.group(1))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        with reporter.progress(f"quantizing to {name}", total=None, unit="tensors") as bar:
            while proc.poll() is None:
                bar.update(state["done"], total=state["total"])
                time.sleep(0.2)
            reader.join(timeout=5)
            bar.update(state["done"], total=state["total"])
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    code = proc.returncode
    last = "\n".join(list(tail)[-8:])
    if code < 0:
        sig = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        raise FtpackError(f"llama.cpp's quantizer crashed ({sig}) while quantizing to {name}.\n{last}",
                          "The input may be damaged, or the machine ran out of memory; "
                          "try another type or re-create the F16 GGUF.")
    if code != 0:
        raise FtpackError(f"llama.cpp's quantizer failed (exit {code}) while quantizing to {name}.\n{last}",
                          "See the llama.cpp messages above.")
    return {"entries": state["entries"], "missing": list(state["missing"])}


# -- importance matrix --------------------------------------------------------------------

def load_imatrix(path: Path) -> dict[str, "Any"]:
    """Read an importance matrix (llama-imatrix's GGUF format or the legacy .dat format)
    into tensor name -> float32 values, as llama.cpp's quantize tool does."""
    import numpy as np

    from ftpack.gguf.inspect import is_gguf

    if is_gguf(path):
        from gguf import GGUFReader

        try:
            reader = GGUFReader(path)
        except Exception as exc:
            raise bad_input(f"{path} is not a readable imatrix GGUF ({exc}).") from None
        sums, counts = {}, {}
        for t in reader.tensors:
            if t.name.endswith(".in_sum2"):
                sums[t.name[: -len(".in_sum2")]] = np.asarray(t.data, dtype=np.float32)
            elif t.name.endswith(".counts"):
                counts[t.name[: -len(".counts")]] = np.asarray(t.data, dtype=np.float32).reshape(-1)
        if not sums:
            raise bad_input(f"{path} holds no importance-matrix data (*.in_sum2 tensors).")
        out = {}
        for name, s in sums.items():
            if name not in counts:
                raise bad_input(f"{path}: {name} has sums but no counts; the imatrix file is damaged.")
            rows = s.reshape(len(counts[name]), -1)
            c = counts[name].reshape(-1, 1)
            out[name] = np.where(c > 0, rows / np.where(c > 0, c, 1), 1.0).astype(np.float32).reshape(-1)
        return out
    data = path.read_bytes()
    out = {}
    try:
        pos = 0
        (n,) = np.frombuffer(data, np.int32, 1, pos)
        pos += 4
        if n < 1:
            raise ValueError("no entries")
        for _ in range(int(n)):
            (length,) = np.frombuffer(data, np.int32, 1, pos)
            pos += 4
            name = data[pos:pos + int(length)].decode("utf-8")
            pos += int(length)
            ncall, nval = np.frombuffer(data, np.int32, 2, pos)
            pos += 8
            values = np.frombuffer(data, np.float32, int(nval), pos).copy()
            pos += 4 * int(nval)
            if ncall > 0:
                values /= ncall
            out[name] = values
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_input(f"{path} is not an importance matrix (GGUF or legacy .dat): {exc}.") from None
    return out


def imatrix_provenance(path: Path) -> tuple[list[str], int]:
    """(datasets, chunk count) an importance matrix records, as llama.cpp's quantize tool
    reads them: GGUF keys ``imatrix.datasets``/``imatrix.chunk_count``, or the trailer of
    the legacy format (int32 chunks, int32 length, dataset name). ([], 0) if absent."""
    import numpy as np

    from ftpack.gguf.inspect import is_gguf

    if is_gguf(path):
        from gguf import GGUFReader

        from ftpack.gguf.inspect import field_value

        reader = GGUFReader(path)
        datasets = field_value(reader, "imatrix.datasets") or []
        chunks = field_value(reader, "imatrix.chunk_count") or 0
        return [str(d) for d in (datasets if isinstance(datasets, list) else [datasets])], int(chunks)
    data = path.read_bytes()
    pos = 4
    (n,) = np.frombuffer(data, np.int32, 1, 0)
    for _ in range(int(n)):  # skip the entries (validated by load_imatrix)
        (length,) = np.frombuffer(data, np.int32, 1, pos)
        pos += 4 + int(length)
        _ncall, nval = np.frombuffer(data, np.int32, 2, pos)
        pos += 8 + 4 * int(nval)
    if pos + 8 > len(data):
        return [], 0
    chunks, length = (int(v) for v in np.frombuffer(data, np.int32, 2, pos))
    name = data[pos + 8:pos + 8 + max(length, 0)].decode("utf-8", errors="replace")
    return ([name] if name else []), chunks


def imatrix_kv_overrides(imatrix_file: str, n_entries: int, datasets: list[str], chunks: int) -> list[tuple]:
    """The ``quantize.imatrix.*`` keys llama-quantize writes: (key, "str"|"int", value)."""
    out: list[tuple] = [("quantize.imatrix.file", "str", imatrix_file)]
    if datasets:
        out.append(("quantize.imatrix.dataset", "str", datasets[0]))
    out.append(("quantize.imatrix.entries_count", "int", n_entries))
    if chunks > 0:
        out.append(("quantize.imatrix.chunks_count", "int", chunks))
    return out


# -- the child process --------------------------------------------------------------------

def _child_main(job: dict[str, Any]) -> int:
    """Runs in the child: call llama_model_quantize and return its status."""
    import ctypes

    import llama_cpp

    @llama_cpp.llama_log_callback
    def _log(level, text, user_data):  # llama.cpp's log -> our stderr (the parent parses it)
        try:
            sys.stderr.write(text.decode("utf-8", errors="replace"))
            sys.stderr.flush()
        except Exception:
            pass

    llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(job["ftype"])
    params.nthread = int(job["threads"])
    params.allow_requantize = bool(job["allow_requantize"])
    keep = []
    if job.get("imatrix"):
        import numpy as np

        entries = load_imatrix(Path(job["imatrix"]))
        array = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
        for i, (name, values) in enumerate(entries.items()):
            values = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(values)
            array[i].name = name.encode()
            array[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            array[i].size = values.size
        array[len(entries)].name = None  # terminator
        params.imatrix = ctypes.cast(array, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(array)
        # provenance in the output's metadata, as llama-quantize records it
        datasets, chunks = imatrix_provenance(Path(job["imatrix"]))
        overrides = imatrix_kv_overrides(job["imatrix"], len(entries), datasets, chunks)
        kvs = (llama_cpp.llama_model_kv_override * (len(overrides) + 1))()  # zeroed: last key "" ends it
        for i, (key, kind, value) in enumerate(overrides):
            kvs[i].key = key.encode()[:127]
            if kind == "str":
                kvs[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
                kvs[i].value.val_str = str(value).encode("utf-8")[:127]
            else:
                kvs[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
                kvs[i].value.val_i64 = int(value)
        params.kv_overrides = ctypes.cast(kvs, ctypes.POINTER(llama_cpp.llama_model_kv_override))
        keep.append(kvs)
    status = llama_cpp.llama_model_quantize(job["src"].encode(), job["dst"].encode(), ctypes.byref(params))
    return 0 if status == 0 else 3


# -- choosing the type by measured fidelity ------------------------------------------------

def choose_quant(src: Path, dst_for: Callable[[str], Path], texts: Sequence[str], *, max_kld: float,
                 imatrix: Path | None = None, candidates: Sequence[str] = AUTO_CANDIDATES,
                 threads: int | None = None, workdir: Path | None = None, texts_source: str = "",
                 reporter=None) -> tuple[QuantizeResult, list[dict[str, Any]]]:
    """``--quant auto``: quantize the candidates smallest first, measure each against
    ``src`` (mean KL divergence on ``texts``), keep the first whose mean KLD is within
    ``max_kld`` and delete the others. Returns (the kept result, the table of what was
    tried). When none is within the budget, the one with the lowest mean KLD is kept,
    with a warning. ``imatrix`` is used for the types below 6 bits."""
    from ftpack.gguf.imatrix import benefits_from_imatrix
    from ftpack.inference.fidelity import FidelityReference

    r = reporter or get_reporter()
    names = [resolve_quant_type(c)[0] for c in candidates]
    table: list[dict[str, Any]] = []
    results: dict[str, QuantizeResult] = {}
    chosen: str | None = None
    with FidelityReference(Path(src), texts, threads=threads, workdir=workdir) as ref:
        r.info(f"--quant auto: trying {', '.join(names)} (smallest first) until the mean KL divergence from "
               f"{Path(src).name} is at most {max_kld:g}, on {ref.n_tokens} tokens of {texts_source or 'text'}")
        for name in names:
            use = imatrix if imatrix is not None and benefits_from_imatrix(name) else None
            res = quantize_gguf(src, dst_for(name), name, imatrix=use, threads=threads)
            results[name] = res
            fid = ref.compare(res.path)
            table.append({"quant": name, "bytes": res.bytes, "imatrix": use is not None,
                          "mean_kld": fid["mean_kld"], "p99_kld": fid["p99_kld"],
                          "top1_agreement": fid["top1_agreement"], "perplexity_ratio": fid["perplexity_ratio"],
                          "within_budget": fid["mean_kld"] <= max_kld, "seconds": round(res.seconds, 2)})
            if fid["mean_kld"] <= max_kld:
                chosen = name
                break
    if chosen is None:
        best = min(table, key=lambda row: row["mean_kld"])
        chosen = best["quant"]
        r.warn(f"No candidate is within --max-kld {max_kld:g}: the lowest mean KL divergence is "
               f"{best['mean_kld']:.4g} ({chosen}); keeping {chosen}.",
               "Raise --max-kld, or give more (or more typical) training data for the importance matrix.")
    for name, res in results.items():
        if name != chosen:
            res.path.unlink(missing_ok=True)
    r.table(f"--quant auto (max mean KLD {max_kld:g})", ("type", "size", "imatrix", "mean KLD", "p99 KLD", "top-1",
                                                         "ppl ratio", "kept"),
            [(row["quant"], human_bytes(row["bytes"]), "yes" if row["imatrix"] else "no", f"{row['mean_kld']:.4f}",
              f"{row['p99_kld']:.4f}", f"{row['top1_agreement']:.1%}", f"{row['perplexity_ratio']:.4f}",
              "<-" if row["quant"] == chosen else "") for row in table], data=table)
    return results[chosen], table


# -- the pipeline stage -------------------------------------------------------------------

def stage_imatrix(ctx, types: Sequence[str]) -> tuple[Path | None, dict[str, Any] | None, str | None]:
    """(imatrix file, its record for build.json, note) for the quantize stage:
    ``--imatrix FILE`` as given, ``none`` nothing, ``auto`` one computed from the build's
    train split when a type to quantize is below 6 bits (else nothing, and why)."""
    from ftpack.gguf.imatrix import benefits_from_imatrix, build_imatrix

    cfg = ctx.config
    choice = str(cfg.imatrix or "auto")
    if choice == "none":
        return None, None, "not used (--imatrix none)"
    if choice != "auto":
        path = Path(choice)
        load_imatrix(path)  # a damaged file fails here, before any quantization
        datasets, chunks = imatrix_provenance(path)
        from ftpack.core.atomic import sha256_file

        return path, {"source": "file", "path": str(path), "sha256": sha256_file(path), "datasets": datasets,
                      "chunks": chunks}, None
    wanted = [t for t in types if benefits_from_imatrix(t)]
    if not wanted:
        return None, None, f"not needed: {', '.join(types)} keeps at least 6 bits per weight"
    out = ctx.stage_dir / "imatrix.gguf"
    result = build_imatrix(ctx.layout, ctx.upstream("train"), out, reference_gguf=ctx.upstream_path("convert"),
                           trust_remote_code=bool(cfg.trust_remote_code), reporter=ctx.reporter)
    record = {"source": "computed", **result.as_dict()}
    record["path"] = str(out.relative_to(ctx.build_dir))
    return out, record, None


def run_quantize_stage(ctx) -> "Any":
    """Stage ``quantize``: gguf/<name>.<outtype>.gguf (convert's output) → gguf/<name>.<QUANT>.gguf.

    Reads ctx.config.quant (a type, or ``auto``: :func:`choose_quant` with ``max_kld`` on
    the eval split), ctx.config.imatrix (``auto``: computed from data/train.jsonl with the
    trained model, :func:`stage_imatrix`; ``none``; or a file), the train stage's weights
    and the build's chat template. Writes the quantized GGUF and quantize/imatrix.gguf;
    records the importance matrix's source and the table of candidates tried.
    """
    from ftpack.core.runner import StageResult
    from ftpack.gguf.imatrix import benefits_from_imatrix

    cfg = ctx.config
    src = ctx.upstream_path("convert")
    auto = str(cfg.quant or DEFAULT_QUANT).lower() == "auto"
    types = list(AUTO_CANDIDATES) if auto else [resolve_quant_type(cfg.quant or DEFAULT_QUANT)[0]]
    imatrix, imatrix_record, note = stage_imatrix(ctx, types)
    outputs: list[Path] = [imatrix] if imatrix is not None and imatrix.parent == ctx.stage_dir else []
    metrics: dict[str, Any] = {}
    if auto:
        from ftpack.core.config import DEFAULT_MAX_KLD
        from ftpack.inference.fidelity import heldout_texts

        max_kld = float(cfg.max_kld if cfg.max_kld is not None else DEFAULT_MAX_KLD)
        texts, source = heldout_texts(ctx.layout)
        result, table = choose_quant(src, lambda name: ctx.layout.gguf_file(cfg.name, name), texts,
                                     max_kld=max_kld, imatrix=imatrix, workdir=ctx.stage_dir, texts_source=source,
                                     reporter=ctx.reporter)
        metrics["auto"] = {"max_kld": max_kld, "texts": source, "candidates": table, "chosen": result.quant_type,
                           "within_budget": any(row["within_budget"] for row in table)}
    else:
        name = types[0]
        use = imatrix if imatrix is not None and (benefits_from_imatrix(name) or imatrix_record["source"] == "file") \
            else None
        result = quantize_gguf(src, ctx.layout.gguf_file(cfg.name, name), name, imatrix=use)
    if imatrix_record is not None:
        imatrix_record["used"] = result.imatrix is not None
        imatrix_record["missing"] = result.imatrix_missing
    metrics.update({
        "quant": result.quant_type, "file_type": result.file_type, "bytes": result.bytes,
        "input_bytes": result.input_bytes, "seconds": round(result.seconds, 2), "imatrix": imatrix_record,
        "imatrix_note": note})
    dst = result.path
    return StageResult(outputs=[dst, *outputs], main_output=dst, metrics=metrics)


if __name__ == "__main__":  # the child process: python -m ftpack.gguf.quantize '<job json>'
    sys.exit(_child_main(json.loads(sys.argv[1])))
