"""Importance matrix ("imatrix") from the user's own conversations, for llama.cpp's quantizer.

llama.cpp quantizes a weight row with less error where the importance matrix says the
inputs are large: for each weight, the mean of x² per input column over real text.
Measured on SmolLM2-135M (shared/FACTS.md), one computed from the example records cuts
the mean KL divergence of Q3_K_M / Q4_K_M from F16 by about a third, at the same size.

**How it is computed: forward pre-hooks in torch**, not llama.cpp's eval callback
(llama-cpp-python exposes ``cb_eval`` only as a raw ggml pointer, and reading ggml
tensor structs through ctypes would break with every llama.cpp release). The model is a
*fresh* Hugging Face model — the base loaded in fp32 (bf16 on a GPU or when fp32 would
not fit in memory) with the adapter merged in memory — never the training model:
a no-grad forward on a 4-bit bitsandbytes training model breaks its later gradients
(FACTS.md). Every ``nn.Linear`` inside the decoder blocks gets a pre-hook that adds
Σx² per input column (float64) and the number of tokens; padded positions are masked
out, so batching several conversations gives the same sums as one at a time.

The text is what the model will see: each conversation rendered with the build's chat
template (:func:`ftpack.training.templates.template_of_build`) exactly as training
tokenizes it, truncated to ``chunk_size`` tokens. When the data gives fewer than
:data:`MIN_TOKENS` tokens, a fixed generic text shipped with ftpack
(:mod:`ftpack.gguf.calibration_text`) tops it up, and the file's dataset list says so.

Names: Hugging Face module names become GGUF tensor names through gguf-py's tensor map
(the one ftpack's converter names tensors with). Given the F16 GGUF, each name is checked
against its tensors: a weight the GGUF holds fused (``attn_qkv`` from ``q/k/v_proj``)
takes the sums of one of its parts — they all read the same input, so the sums are the
same — and a name the GGUF does not hold is dropped. MoE expert layers are not hooked
(llama.cpp then quantizes them without importance data, and says so in its log).

The file is llama.cpp's GGUF imatrix format, as ``llama-imatrix`` writes it:
``general.type = imatrix``, ``imatrix.datasets``, ``imatrix.chunk_count``,
``imatrix.chunk_size``, and per weight ``<name>.in_sum2`` (F32, n_in × 1: raw Σx²) and
``<name>.counts`` (F32, 1 × 1: tokens), so ``llama-quantize --imatrix`` reads it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ftpack.core.errors import FtpackError, bad_input
from ftpack.core.report import get_reporter

#: Tokens per chunk (one conversation, truncated): llama-imatrix's default context.
DEFAULT_CHUNK_SIZE = 512
#: Conversations used at most (llama-imatrix's --chunks); FACTS.md: 30 records already give the gain.
DEFAULT_CHUNKS = 128
#: Below this many data tokens the generic text tops the calibration set up.
MIN_TOKENS = 2048
#: Tokens per forward batch (padding included).
BATCH_TOKENS = 4096
#: Weights a fused GGUF tensor takes the place of: part -> fused name (same input).
FUSED_PARTS = {"attn_q": "attn_qkv", "attn_k": "attn_qkv", "attn_v": "attn_qkv", "ffn_gate": "ffn_up"}
_EXPERT_RE = re.compile(r"\.experts?\.\d+\.")


@dataclass
class CalibrationSet:
    """The token sequences an imatrix is computed from, and where they came from."""

    sequences: list[list[int]]
    records: int  # conversations used
    data_tokens: int  # tokens from the user's data
    topup_tokens: int  # tokens from ftpack's generic text
    datasets: list[str]
    sha256: str  # of the token ids, in order: what exactly was measured

    @property
    def tokens(self) -> int:
        return self.data_tokens + self.topup_tokens


@dataclass
class ImatrixResult:
    """What ``compute_imatrix`` wrote and from what (recorded in build.json)."""

    path: Path
    entries: int
    chunks: int
    chunk_size: int
    tokens: int
    data_tokens: int
    topup_tokens: int
    records: int
    datasets: list[str]
    calibration_sha256: str
    seconds: float
    dtype: str
    device: str
    dropped: list[str] = field(default_factory=list)  # mapped names the GGUF does not hold

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# -- the text ---------------------------------------------------------------------------

def calibration_set(conversations: Sequence[Sequence[Mapping[str, str]]], template: Any, tokenizer: Any, *,
                    dataset: str, chunk_size: int = DEFAULT_CHUNK_SIZE, max_chunks: int = DEFAULT_CHUNKS,
                    min_tokens: int = MIN_TOKENS) -> CalibrationSet:
    """Token ids of up to ``max_chunks`` conversations rendered as training renders them
    (the training chat template with its BOS rule, ``add_special_tokens=False``; for an
    Ollama model's own format, the ids of the sequence that ends with its last answer), each cut
    to ``chunk_size`` tokens; topped up with ftpack's generic text below ``min_tokens``."""
    from ftpack.core.quiet import quiet_libraries
    from ftpack.gguf.calibration_text import GENERIC_TEXT, GENERIC_TEXT_NAME
    from ftpack.training.token_check import training_ids

    if chunk_size < 16:
        raise bad_input(f"Chunk size {chunk_size} is too small for an importance matrix (at least 16 tokens).")
    if max_chunks < 1:
        raise bad_input("--chunks must be at least 1.")
    chosen = list(conversations)[:max_chunks]
    with quiet_libraries():  # "sequence longer than the maximum" notes: the ids are cut here
        ids_list = [training_ids(tokenizer, template, conv) for conv in chosen]
        generic = tokenizer(GENERIC_TEXT, add_special_tokens=True)["input_ids"]
    sequences = [ids[:chunk_size] for ids in ids_list if len(ids) > 1]
    data_tokens = sum(map(len, sequences))
    datasets = [dataset] if sequences else []
    topup = 0
    if data_tokens < min_tokens:
        for start in range(0, len(generic), chunk_size):
            if data_tokens + topup >= min_tokens:
                break
            piece = generic[start:start + chunk_size]
            if len(piece) > 1:
                sequences.append(piece)
                topup += len(piece)
        datasets.append(GENERIC_TEXT_NAME)
    digest = hashlib.sha256(json.dumps(sequences).encode()).hexdigest()
    return CalibrationSet(sequences, len(chosen), data_tokens, topup, datasets, digest)


# -- names --------------------------------------------------------------------------------

def gguf_arch_of(config: Mapping[str, Any], gguf_path: Path | None = None) -> str:
    """llama.cpp's architecture name: the F16 GGUF's own, else the converter's mapping."""
    import gguf

    if gguf_path is not None:
        from ftpack.gguf.header import read_gguf_header

        arch = read_gguf_header(gguf_path).get("general.architecture", "STRING")
        if arch:
            return str(arch)
    from ftpack.gguf.convert import ARCHITECTURES
    from ftpack.gguf.vendored import config_architecture

    spec = ARCHITECTURES.get(config_architecture(config) or "")
    if spec is not None:
        return spec.gguf_arch
    model_type = str(config.get("model_type") or "")
    if model_type in gguf.MODEL_ARCH_NAMES.values():
        return model_type
    raise bad_input(f"Cannot tell which llama.cpp architecture {config.get('architectures')} becomes.",
                    "Pass the build folder (its F16 GGUF names the architecture).")


def gguf_tensor_columns(gguf_path: Path) -> dict[str, int]:
    """Name -> input columns (ggml ne[0]) of every 2-D+ tensor of a GGUF."""
    from ftpack.gguf.header import read_gguf_header

    return {name: int(ne[0]) for name, ne in read_gguf_header(gguf_path).tensors.items() if len(ne) >= 2}


def imatrix_targets(model: Any, arch: str, n_layers: int,
                    gguf_columns: Mapping[str, int] | None = None) -> tuple[dict[str, str], list[str]]:
    """({HF module name: GGUF weight name}, dropped): the decoder-block linears llama.cpp
    collects (``blk.*``), one module per GGUF weight, fused weights fed by their first part."""
    import gguf
    import torch.nn as nn

    arch_enum = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), None)
    if arch_enum is None:
        raise bad_input(f"gguf-py does not know the llama.cpp architecture {arch!r}.")
    name_map = gguf.get_tensor_name_map(arch_enum, n_layers)
    targets: dict[str, str] = {}
    owner: dict[str, str] = {}
    dropped: list[str] = []
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or _EXPERT_RE.search(module_name + "."):
            continue
        name = name_map.get_name(module_name + ".weight", try_suffixes=(".weight",))
        if name is None or not name.startswith("blk."):
            continue
        if gguf_columns is not None and name not in gguf_columns:
            block, _, rest = name.rpartition(".weight")[0].rpartition(".")
            fused = FUSED_PARTS.get(rest)
            candidate = f"{block}.{fused}.weight" if fused else None
            if candidate is None or candidate not in gguf_columns:
                dropped.append(name)
                continue
            name = candidate
        if gguf_columns is not None and gguf_columns[name] != module.in_features:
            raise FtpackError(f"{module_name} has {module.in_features} inputs but the GGUF's {name} has "
                              f"{gguf_columns[name]}: the model and the GGUF do not belong together.")
        if name in owner:  # a fused weight: its parts read the same input, one is enough
            continue
        owner[name] = module_name
        targets[module_name] = name
    if not targets:
        raise FtpackError("No layer of this model maps to a llama.cpp weight; cannot compute an importance matrix.")
    return targets, dropped


# -- collection ---------------------------------------------------------------------------

class ImatrixCollector:
    """Σx² per input column and token counts of the hooked linears, padding excluded."""

    def __init__(self, model: Any, targets: Mapping[str, str]):
        import torch

        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.mask = None  # flat bool (batch × time) of real tokens for the current forward
        self._handles = []
        self._last_input: Any = None  # the input the previous hook summed, and its sums
        self._last_sums: Any = None
        modules = dict(model.named_modules())
        for module_name, gguf_name in targets.items():
            module = modules[module_name]
            self.sums[gguf_name] = torch.zeros(module.in_features, dtype=torch.float64)
            self.counts[gguf_name] = 0
            self._handles.append(module.register_forward_pre_hook(self._hook(gguf_name)))

    def _hook(self, gguf_name: str):
        import torch

        def pre_hook(module, args):
            x = args[0]
            if x is self._last_input:  # q/k/v (gate/up) read the very same tensor: sum it once
                squares, rows = self._last_sums
            else:
                flat = x.detach().reshape(-1, x.shape[-1])
                if self.mask is not None:
                    if self.mask.numel() != flat.shape[0]:
                        raise FtpackError(f"{gguf_name}: {flat.shape[0]} input rows for {self.mask.numel()} "
                                          "tokens; this layer does not run once per token.")
                    flat = flat[self.mask]
                # squares in fp32 (exact enough for x² of activations), summed in float64
                squares = flat.float().square().sum(dim=0, dtype=torch.float64).cpu()
                rows = int(flat.shape[0])
                self._last_input, self._last_sums = x, (squares, rows)
            self.sums[gguf_name] += squares
            self.counts[gguf_name] += rows
        return pre_hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def batches(sequences: Sequence[Sequence[int]], batch_tokens: int = BATCH_TOKENS) -> list[list[int]]:
    """Indices of the sequences grouped so that batch size × longest ≤ ``batch_tokens``
    (sorted by length: little padding)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max([len(sequences[j]) for j in current] + [len(sequences[i])])
        if current and longest * (len(current) + 1) > batch_tokens:
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    return out


def collect(model: Any, targets: Mapping[str, str], sequences: Sequence[Sequence[int]], *, pad_id: int = 0,
            batch_tokens: int = BATCH_TOKENS, device: str = "cpu", progress=None,
            bf16_autocast: bool = False) -> ImatrixCollector:
    """Run the sequences through ``model`` (right-padded batches, attention mask) with the
    hooks; ``bf16_autocast``: the matmuls in bf16 (CPU autocast), the sums still in fp32/fp64."""
    import torch

    collector = ImatrixCollector(model, targets)
    try:
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16_autocast):
            for idx in batches(sequences, batch_tokens):
                seqs = [list(sequences[i]) for i in idx]
                longest = max(map(len, seqs))
                ids = torch.full((len(seqs), longest), int(pad_id), dtype=torch.long)
                mask = torch.zeros((len(seqs), longest), dtype=torch.long)
                for row, s in enumerate(seqs):
                    ids[row, :len(s)] = torch.tensor(s, dtype=torch.long)
                    mask[row, :len(s)] = 1
                collector.mask = mask.reshape(-1).bool().to(device)
                _forward(model, ids.to(device), mask.to(device))
                collector._last_input = collector._last_sums = None
                if progress is not None:
                    progress.advance(sum(map(len, seqs)))
    finally:
        collector.mask = None
        collector.remove()
    return collector


def _forward(model: Any, ids: Any, mask: Any) -> None:
    try:  # transformers >= 4.50: logits for the last position only (the lm_head is not hooked)
        model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
    except TypeError:
        model(input_ids=ids, attention_mask=mask, use_cache=False)


# -- the file -------------------------------------------------------------------------------

def write_imatrix_gguf(path: Path | str, sums: Mapping[str, Any], counts: Mapping[str, int], *,
                       datasets: Sequence[str], chunk_count: int, chunk_size: int) -> Path:
    """llama.cpp's GGUF imatrix file (see the module docstring), tensors in name order."""
    import numpy as np
    from gguf import GGUFWriter, Keys

    from ftpack.core.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        writer = GGUFWriter(str(tmp), arch="imatrix")
        writer.kv_data[0].pop(Keys.General.ARCHITECTURE, None)  # llama-imatrix writes none
        writer.add_type("imatrix")
        writer.add_array(Keys.IMatrix.DATASETS, list(datasets))
        writer.add_uint32(Keys.IMatrix.CHUNK_COUNT, int(chunk_count))
        writer.add_uint32(Keys.IMatrix.CHUNK_SIZE, int(chunk_size))
        for name in sorted(sums):
            values = np.asarray(sums[name], dtype=np.float32).reshape(1, -1)
            writer.add_tensor(f"{name}.in_sum2", values)
            writer.add_tensor(f"{name}.counts", np.array([[float(counts[name])]], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


# -- the model ------------------------------------------------------------------------------

def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        return None


def choose_device_dtype(param_count: int) -> tuple[str, Any]:
    """(device, dtype): a CUDA GPU in bf16/fp16 when there is one; else CPU in fp32, or bf16
    when fp32 weights would take more than 60% of the free memory."""
    import torch

    if torch.cuda.is_available():
        return "cuda", (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    free = _available_memory()
    if free is not None and param_count * 4 > 0.6 * free:
        return "cpu", torch.bfloat16
    return "cpu", torch.float32


def load_fresh_model(base_dir: Path, adapter_dir: Path | None = None, *, trust_remote_code: bool = False):
    """(model, device, dtype name): the base in 16/32-bit with the adapter merged in memory.

    A new model object, never the training one (see the module docstring)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftpack.core.quiet import quiet_libraries

    with quiet_libraries():
        config = AutoConfig.from_pretrained(str(base_dir), trust_remote_code=trust_remote_code)
        params = _param_estimate(config)
        device, dtype = choose_device_dtype(params)
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype, trust_remote_code=trust_remote_code)
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.eval()
    model.to(device)
    return model, device, str(dtype).replace("torch.", "")


def _native_bf16() -> bool:
    from ftpack.training.speed import cpu_has_native_bf16

    return cpu_has_native_bf16()


def _param_estimate(config: Any) -> int:
    h = int(getattr(config, "hidden_size", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    inter = int(getattr(config, "intermediate_size", 0) or 4 * h)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    return layers * (4 * h * h + 3 * h * inter) + 2 * vocab * h


# -- the whole job ----------------------------------------------------------------------------

def compute_imatrix(model_dir: Path, adapter_dir: Path | None, conversations: Sequence[Any], template: Any,
                    out: Path, *, dataset: str, reference_gguf: Path | None = None,
                    chunks: int = DEFAULT_CHUNKS, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    min_tokens: int = MIN_TOKENS, trust_remote_code: bool = False,
                    batch_tokens: int = BATCH_TOKENS, precision: str = "auto", reporter=None) -> ImatrixResult:
    """Importance matrix of ``model_dir`` (+ ``adapter_dir``) over ``conversations`` rendered
    with ``template``, written to ``out`` in llama.cpp's GGUF imatrix format.

    ``precision``: ``auto`` runs an fp32 model's forward under bf16 autocast where the CPU
    multiplies bf16 natively (:func:`ftpack.training.speed.cpu_has_native_bf16`: about 3x
    faster there; the sums move by well under 1%, tests/test_imatrix.py), ``fp32`` never.

    ``reference_gguf`` (the F16 GGUF the matrix is for) checks every name and width
    against its tensors and resolves fused weights; ``dataset`` is the name recorded
    in ``imatrix.datasets`` (and, by the quantizer, in ``quantize.imatrix.dataset``).
    """
    from ftpack.gguf.hf_folder import load_hf_config, tokenizer_dir
    from ftpack.training.bases import load_tokenizer

    r = reporter or get_reporter()
    t0 = time.monotonic()
    model_dir = Path(model_dir)
    tokenizer = load_tokenizer(tokenizer_dir(model_dir, adapter_dir), trust_remote_code=trust_remote_code)
    cal = calibration_set(conversations, template, tokenizer, dataset=dataset, chunk_size=chunk_size,
                          max_chunks=chunks, min_tokens=min_tokens)
    if not cal.sequences:
        raise bad_input("No text to compute an importance matrix from.")
    if cal.topup_tokens:
        r.info(f"importance matrix: the data gives {cal.data_tokens} tokens (< {min_tokens}); topped up with "
               f"{cal.topup_tokens} tokens of ftpack's fixed generic text")
    config = load_hf_config(model_dir)
    arch = gguf_arch_of(config, reference_gguf)
    columns = gguf_tensor_columns(reference_gguf) if reference_gguf is not None else None
    model, device, dtype = load_fresh_model(model_dir, adapter_dir, trust_remote_code=trust_remote_code)
    autocast = precision == "auto" and device == "cpu" and dtype == "float32" and _native_bf16()
    if autocast:
        dtype = "float32, bf16 autocast"
    try:
        n_layers = int(config.get("num_hidden_layers") or model.config.num_hidden_layers)
        targets, dropped = imatrix_targets(model, arch, n_layers, columns)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        with r.progress("importance matrix", total=cal.tokens, unit="tokens") as bar:
            collector = collect(model, targets, cal.sequences, pad_id=pad, batch_tokens=batch_tokens,
                                device=device, progress=bar, bf16_autocast=autocast)
    finally:
        del model
    write_imatrix_gguf(out, {k: v.numpy() for k, v in collector.sums.items()}, collector.counts,
                       datasets=cal.datasets, chunk_count=len(cal.sequences), chunk_size=chunk_size)
    seconds = time.monotonic() - t0
    r.info(f"importance matrix: {len(targets)} weights from {cal.tokens} tokens in {len(cal.sequences)} chunks "
           f"({device}, {dtype}, {seconds:.1f}s): {out}")
    return ImatrixResult(Path(out), len(targets), len(cal.sequences), chunk_size, cal.tokens, cal.data_tokens,
                         cal.topup_tokens, cal.records, cal.datasets, cal.sha256, round(seconds, 2), dtype, device,
                         dropped)


# -- what to use it for ------------------------------------------------------------------------

#: Types quantized with at least 6 bits per weight: an importance matrix buys (almost) nothing.
HIGH_BIT_TYPES = ("Q6_K", "Q8_0", "F16", "BF16", "F32", "COPY")


def benefits_from_imatrix(quant_type: str) -> bool:
    """True for types below 6 bits per weight (what ``--imatrix auto`` computes one for)."""
    return quant_type.upper() not in HIGH_BIT_TYPES


def build_imatrix(layout: Any, train_record: Any, out: Path, *, reference_gguf: Path | None = None,
                  data: Path | None = None, chunks: int = DEFAULT_CHUNKS, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  trust_remote_code: bool = False, reporter=None) -> ImatrixResult:
    """The importance matrix of a build's trained model over its *train* split (never the
    eval split, which fidelity is measured on), rendered with the build's chat template;
    ``data`` replaces the train split with another dataset file (any format ftpack reads)."""
    from ftpack.gguf.lora import load_adapter, resolve_adapter_base
    from ftpack.training.data import load_dataset, read_messages_jsonl
    from ftpack.training.templates import template_of_build

    tpl = template_of_build(layout)
    weights = layout.root / train_record.main_output
    if (weights / "adapter_config.json").is_file():
        base = resolve_adapter_base(load_adapter(weights), train_record.metrics.get("base_path"))
        adapter: Path | None = weights
    else:
        base, adapter = weights, None
    if data is None:
        if not layout.train_file.is_file():
            raise FtpackError(f"{layout.train_file} is missing: the data stage has not finished.")
        conversations = read_messages_jsonl(layout.train_file)
        label = str(layout.train_file)
    else:
        conversations = load_dataset(Path(data)).conversations
        label = str(data)
    return compute_imatrix(base, adapter, conversations, tpl, out, dataset=label, reference_gguf=reference_gguf,
                           chunks=chunks, chunk_size=chunk_size, trust_remote_code=trust_remote_code,
                           reporter=reporter)



def imatrix_for_target(target: Path, out: Path, *, data: Path | None = None, adapter_dir: Path | None = None,
                       template_name: str | None = None, reference_gguf: Path | None = None,
                       chunks: int = DEFAULT_CHUNKS, chunk_size: int = DEFAULT_CHUNK_SIZE,
                       trust_remote_code: bool = False, reporter=None) -> ImatrixResult:
    """`ftpack imatrix MODEL|BUILD`: a build folder (its trained model, chat template, train
    split unless ``data``, and F16 GGUF for the names), or a Hugging Face model / adapter
    folder with ``data`` (template: ``template_name``, else the one saved beside the
    weights, else the one detected for the model)."""
    from ftpack.core.layout import MANIFEST_NAME, BuildLayout
    from ftpack.gguf.lora import load_adapter, resolve_adapter_base

    target = Path(target)
    if not target.is_dir():
        raise bad_input(f"{target} is not a folder: give a build folder or a Hugging Face model folder.")
    if (target / MANIFEST_NAME).is_file():
        from ftpack.core.manifest import Manifest

        layout = BuildLayout(target)
        manifest = Manifest.load(layout.root)
        train = manifest.stages.get("train")
        if train is None or train.status != "done" or not train.main_output:
            raise bad_input(f"{target}: training has not finished in this build.", "Run `ftpack build` first.")
        convert = manifest.stages.get("convert")
        if reference_gguf is None and convert is not None and convert.status == "done" and convert.main_output:
            reference_gguf = layout.root / convert.main_output
        if template_name is not None:
            raise bad_input("--template does not apply to a build: it uses the chat template it trained with.")
        return build_imatrix(layout, train, out, reference_gguf=reference_gguf, data=data, chunks=chunks,
                             chunk_size=chunk_size, trust_remote_code=trust_remote_code, reporter=reporter)
    if data is None:
        raise bad_input("--data FILE is required for a model folder (a build uses its train split).")
    from ftpack.training.bases import load_tokenizer
    from ftpack.training.data import load_dataset
    from ftpack.training.templates import choose_template, template_of_weights

    model_dir = target
    if adapter_dir is None and (target / "adapter_config.json").is_file() and not (target / "config.json").is_file():
        adapter_dir = target
        model_dir = resolve_adapter_base(load_adapter(target), None)
    tpl = None if template_name else (template_of_weights(adapter_dir) if adapter_dir else None) or \
        template_of_weights(model_dir)
    if tpl is None:
        from ftpack.gguf.hf_folder import tokenizer_dir

        tokenizer = load_tokenizer(tokenizer_dir(model_dir, adapter_dir), trust_remote_code=trust_remote_code)
        tpl = choose_template(template_name, str(model_dir), tokenizer, reporter=reporter or get_reporter())
    conversations = load_dataset(Path(data)).conversations
    return compute_imatrix(model_dir, adapter_dir, conversations, tpl, out, dataset=str(data),
                           reference_gguf=reference_gguf, chunks=chunks, chunk_size=chunk_size,
                           trust_remote_code=trust_remote_code, reporter=reporter)
