"""`ftpack merge | convert | quantize | inspect`: the model-file commands.

Thin shells over :mod:`ftpack.gguf.merge`, :mod:`ftpack.gguf.convert`, :mod:`ftpack.gguf.quantize`
and :mod:`ftpack.gguf.inspect`; every result also goes out as ``r.result(...)`` for --json.
"""

from __future__ import annotations

from pathlib import Path

import click

from ftpack.core.options import config_options, given_flags
from ftpack.core.report import get_reporter
from ftpack.settings import command_settings

_PATH = click.Path(path_type=Path)
#: The settings `ftpack quantize` shares with `ftpack build` (same flags, checks and defaults).
QUANTIZE_KEYS = ("quant", "imatrix", "max_kld")


@click.command()
@click.option("--base", type=_PATH, default=None,
              help="Base model folder (default: base_model_name_or_path in adapter_config.json).")
@click.option("--adapter", "adapter_dir", type=_PATH, required=True, help="PEFT LoRA/DoRA adapter folder.")
@click.option("-o", "--out", "out_dir", type=_PATH, required=True, help="Folder for the merged model.")
@click.option("--dtype", type=click.Choice(["auto", "bf16", "f16", "f32"], case_sensitive=False), default="auto",
              show_default=True, help="Weight dtype of the merged copy (auto: as stored in the base).")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier ftpack output at --out (other folders are never replaced).")
@config_options(["allow_pickle"], help={
    "allow_pickle": "Unpickle .bin base weights that PyTorch's safe loader refuses (only if you trust them)."})
def merge(base: Path | None, adapter_dir: Path, out_dir: Path, dtype: str, overwrite: bool, **flags) -> None:
    """Fold a LoRA/DoRA adapter into a 16-bit copy of its base (streaming, one tensor at a time).

    \b
    Works for adapters trained with QLoRA too: they are folded into the 16-bit
    base weights on disk, never into 4-bit weights.
    Example: ftpack merge --base ./base --adapter builds/x/train/adapter -o merged/
    """
    from ftpack.gguf.merge import merge_adapter

    r = get_reporter()
    allow_pickle = bool(command_settings(["allow_pickle"], given_flags(flags))["allow_pickle"])
    result = merge_adapter(base, adapter_dir, out_dir, dtype=dtype.lower(), overwrite=overwrite,
                           allow_pickle=allow_pickle)
    r.result({"out": str(result.out_dir), "tensors": result.tensors, "merged_tensors": result.merged_modules,
              "bytes": result.bytes, "dtype": result.dtype})
    r.final(f"Merged model: {result.out_dir}", out=str(result.out_dir))


@click.command()
@click.argument("model_dir", type=_PATH)
@click.option("-o", "--out", "out", type=_PATH, default=None,
              help="Output .gguf file (default: MODEL_DIR/<name>.<outtype>.gguf next to the folder).")
@config_options(["outtype"], help={"outtype": "Tensor type of the GGUF (quantize further with `ftpack quantize`)."})
@click.option("--adapter", "adapter_dir", type=_PATH, default=None,
              help="LoRA/DoRA adapter to merge on the fly (no merged copy is written).")
@click.option("--name", default=None, help="general.name in the GGUF (default: the folder name); adjusted so llama.cpp strips whitespace after special tokens as the tokenizer does (e.g. ' (phi-3)' appended).")
@click.option("--llama-cpp", "llama_cpp_dir", type=_PATH, default=None, envvar="LLAMA_CPP_DIR",
              help="llama.cpp checkout whose convert_hf_to_gguf.py handles other architectures "
                   "(default: $LLAMA_CPP_DIR, else the one in the installed llama-cpp-python's source).")
@config_options(["allow_pickle"], help={
    "allow_pickle": "Unpickle .bin weights that PyTorch's safe loader refuses (only if you trust them)."})
def convert(model_dir: Path, out: Path | None, adapter_dir: Path | None, name: str | None,
            llama_cpp_dir: Path | None, **flags) -> None:
    """Convert a Hugging Face model folder to GGUF, tensor by tensor.

    \b
    Supports llama (incl. Vicuna, TinyLlama, SmolLM), mistral, qwen2 and qwen3; other
    architectures go through llama.cpp's convert_hf_to_gguf.py, taken from the installed
    llama-cpp-python's source distribution (fetched once with pip) or --llama-cpp DIR.
    Example: ftpack convert ./base --adapter builds/x/train/adapter -o x.f16.gguf
    """
    from ftpack.gguf.convert import convert_to_gguf
    from ftpack.core.layout import gguf_file_stem

    r = get_reporter()
    settings = command_settings(["outtype", "allow_pickle"], given_flags(flags))
    outtype, allow_pickle = settings["outtype"], bool(settings["allow_pickle"])
    if out is None:
        stem = gguf_file_stem(name or (adapter_dir or model_dir).resolve().name)
        out = (adapter_dir or model_dir).resolve().parent / f"{stem}.{outtype}.gguf"
    result = convert_to_gguf(model_dir, out, outtype=outtype, adapter_dir=adapter_dir, name=name,
                             llama_cpp_dir=llama_cpp_dir, allow_pickle=allow_pickle)
    r.result({"out": str(result.path), "architecture": result.architecture, "outtype": result.outtype,
              "tensors": result.tensors, "bytes": result.bytes, "pre_tokenizer": result.pre_tokenizer,
              "merged_tensors": result.merged_tensors})
    r.final(f"GGUF: {result.path}", out=str(result.path))


@click.command()
@click.argument("src", type=_PATH)
@click.option("-o", "--out", "dst", type=_PATH, default=None,
              help="Output .gguf (default: next to the input, named after the type).")
@config_options(QUANTIZE_KEYS, aliases={"quant": ["--type"]}, help={
    "quant": "llama.cpp quantization type, any case (e.g. Q4_K_M, Q5_K_M, Q6_K, Q8_0, IQ4_XS), or auto: the "
             "smallest of Q3_K_M..Q8_0 within --max-kld of the input on ftpack's fixed text.",
    "imatrix": "Importance matrix file (`ftpack imatrix` or llama-imatrix output; recorded as quantize.imatrix.* "
               "in the file); auto and none quantize without one here (a build computes it from its data)."})
@click.option("--threads", type=int, default=None,
              help="Threads (default, or 0: llama.cpp's choice: every CPU to quantize, one per physical core to "
                   "score fidelity).")
@click.option("--list-types", is_flag=True, help="List the quantization types and exit.")
def quantize(src: Path, dst: Path | None, threads: int | None, list_types: bool, **flags) -> None:
    """Quantize a GGUF with llama.cpp's quantizer.

    \b
    Example: ftpack quantize model.f16.gguf -o model.Q4_K_M.gguf
    With an importance matrix: ftpack imatrix BUILD -o imatrix.gguf, then --imatrix imatrix.gguf.
    """
    from ftpack.gguf.quantize import choose_quant, quant_types, quantize_gguf

    r = get_reporter()
    if list_types:
        types = quant_types()
        r.table("llama.cpp quantization types", ("type", "llama_ftype"), [(k, v) for k, v in types.items()],
                data=types)
        r.result(types)
        return
    settings = command_settings(QUANTIZE_KEYS, given_flags(flags))  # checked like build's --quant
    name, choice = settings["quant"], settings["imatrix"]
    imatrix = None if choice in ("auto", "none") else Path(choice)
    stem = src.name[:-5] if src.name.endswith(".gguf") else src.name
    for suffix in (".f16", ".bf16", ".f32", ".F16", ".BF16", ".F32"):
        stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
    table = None
    if name == "auto":
        from ftpack.inference.fidelity import FIXED_TEXT

        # each candidate gets its own file; the kept one is renamed to -o when given
        result, table = choose_quant(src, lambda t: (dst.with_name(f"{dst.name}.{t}.candidate") if dst is not None
                                                     else src.with_name(f"{stem}.{t}.gguf")),
                                     [FIXED_TEXT], max_kld=float(settings["max_kld"]), imatrix=imatrix,
                                     threads=threads, texts_source="ftpack's fixed text (a build measures on its "
                                     "eval split)")
        if dst is not None:
            result.path = result.path.replace(dst)
    else:
        result = quantize_gguf(src, dst or src.with_name(f"{stem}.{name}.gguf"), name, imatrix=imatrix,
                               threads=threads)
    r.result({"out": str(result.path), "type": result.quant_type, "file_type": result.file_type,
              "bytes": result.bytes, "input_bytes": result.input_bytes, "seconds": round(result.seconds, 2),
              "requantized": result.requantized, "imatrix": result.imatrix, "candidates": table})
    r.final(f"Quantized: {result.path}", out=str(result.path))


@click.command("imatrix")
@click.argument("target", type=_PATH)
@config_options(["data", "template", "trust_remote_code"], help={
    "data": "Conversations to compute it from (any format ftpack reads; a build's default: its train split).",
    "template": "Chat template for a model folder (default: the one saved with the weights, else detected).",
    "trust_remote_code": "Allow the model's own Python code."})
@click.option("-o", "--out", "out", type=_PATH, default=Path("imatrix.gguf"), show_default=True,
              help="Output imatrix GGUF.")
@click.option("--chunks", type=int, default=None, help="Conversations to use at most (default: 128).")
@click.option("--chunk-size", type=int, default=None, help="Tokens per conversation at most (default: 512).")
@click.option("--adapter", "adapter_dir", type=_PATH, default=None, help="LoRA/DoRA adapter merged into MODEL.")
@click.option("--gguf", "reference", type=_PATH, default=None,
              help="The GGUF it is for: names and widths are checked against its tensors (a build's F16 by default).")
def imatrix(target: Path, out: Path, chunks: int | None, chunk_size: int | None, adapter_dir: Path | None,
            reference: Path | None, **flags) -> None:
    """Compute an importance matrix (llama.cpp's GGUF imatrix format) from conversations.

    \b
    TARGET is a build folder (its trained model, chat template and train split) or a
    Hugging Face model/adapter folder with --data. The conversations are rendered with
    the chat template the model was trained with; forward hooks in torch sum x² per
    input column of every linear layer (see ftpack/gguf/imatrix.py).
    Example: ftpack imatrix builds/my-qa -o imatrix.gguf
             ftpack quantize builds/my-qa/gguf/my-qa.f16.gguf --type IQ3_M --imatrix imatrix.gguf
    """
    from ftpack.gguf.imatrix import DEFAULT_CHUNK_SIZE, DEFAULT_CHUNKS, imatrix_for_target

    r = get_reporter()
    settings = command_settings(["data", "template", "trust_remote_code"], given_flags(flags))
    result = imatrix_for_target(target, out, data=settings["data"], adapter_dir=adapter_dir,
                                template_name=settings["template"], reference_gguf=reference,
                                chunks=chunks or DEFAULT_CHUNKS, chunk_size=chunk_size or DEFAULT_CHUNK_SIZE,
                                trust_remote_code=bool(settings["trust_remote_code"]))
    r.result(result.as_dict())
    r.final(f"Importance matrix: {result.path} ({result.entries} weights, {result.tokens} tokens)",
            out=str(result.path))


@click.command()
@click.argument("path", type=_PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def inspect(ctx: click.Context, path: Path, as_json: bool) -> None:
    """Show what a GGUF file (metadata, tensor types) or a build dir (manifest) holds."""
    from ftpack.core.atomic import human_bytes
    from ftpack.gguf.inspect import inspect_path, template_head
    from ftpack.core.report import Reporter, set_reporter

    if as_json:
        reporter = Reporter("json")
        set_reporter(reporter)
        if ctx.obj is not None:
            ctx.obj.reporter = reporter
    r = get_reporter()
    kind, data = inspect_path(path)
    if kind == "gguf":
        special = ", ".join(f"{k}={v['text']!r} ({v['id']})" for k, v in data["special_tokens"].items())
        rows = [
            ("file", f"{data['path']} ({human_bytes(data['bytes'])})"),
            ("architecture", data["architecture"]), ("name", data["name"]),
            ("parameters", f"{data['parameters']:,}"), ("file type", f"{data['file_type']} ({data['file_type_id']})"),
            ("context length", data["context_length"]), ("layers", data["block_count"]),
            ("embedding", data["embedding_length"]), ("heads / kv heads", f"{data['head_count']} / {data['head_count_kv']}"),
            ("rope base", data["rope_freq_base"]),
            ("tokenizer", f"{data['tokenizer_model']} (pre: {data['pre_tokenizer']}), {data['vocab_size']} tokens"),
            ("add bos / eos", f"{data['add_bos_token']} / {data['add_eos_token']}"),
            ("special tokens", special or "-"), ("license", data["license"] or "-"),
            ("base models", ", ".join(b for b in data["base_models"] if b) or "-"),
            ("chat template", template_head(data["chat_template"])),
        ]
        r.table("GGUF", ("key", "value"), [(k, "-" if v is None else str(v)) for k, v in rows],
                data={k: v for k, v in data.items() if k != "tensor_types"})
        r.table("Tensor types", ("type", "tensors", "parameters", "bytes"),
                [(t["type"], t["tensors"], f"{t['parameters']:,}", human_bytes(t["bytes"]))
                 for t in data["tensor_types"]], data=data["tensor_types"])
        r.result(data)
        r.final(f"{data['architecture']} · {data['file_type']} · {data['tensors']} tensors · "
                f"{human_bytes(data['bytes'])}")
    else:
        rows = [(name, s["status"], "-" if s["seconds"] is None else f"{s['seconds']:.1f}",
                 s["main_output"] or "-", human_bytes(s["bytes"]) if s["bytes"] else "-")
                for name, s in data["stages"].items()]
        r.table(f"Build {data['name']} ({data['build_dir']})", ("stage", "status", "seconds", "output", "size"),
                rows, data=data["stages"])
        r.result(data)
        r.final(f"{data['name']}: {sum(s['status'] == 'done' for s in data['stages'].values())}/"
                f"{len(data['stages'])} stages done")
