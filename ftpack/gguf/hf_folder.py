"""A Hugging Face model folder as merge, convert and training read it: config.json, the
tokenizer files, and the weights as safetensors.

PyTorch ``.bin`` weights (e.g. Vicuna-7B-v1.5 publishes nothing else) are converted
once, shard by shard, into safetensors in ftpack's cache (:func:`ensure_safetensors`);
everything downstream then streams safetensors as usual. They are read only with
PyTorch's safe loader (``weights_only=True``: tensors and plain containers, no code);
a file that loader refuses needs ``--allow-pickle``, which says the user trusts it.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

from ftpack.core.atomic import atomic_dir, check_free_space, file_lock, write_json
from ftpack.core.errors import FtpackError, bad_input
from ftpack.core.locations import cache_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
BIN_INDEX = "pytorch_model.bin.index.json"
#: weight files that are not copied next to the converted safetensors
_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".safetensors", ".gguf")
_CONVERTED_RECORD = "ftpack-converted-from.json"
#: torch dtype name -> safetensors dtype name
_TORCH_TO_ST = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
                "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def load_hf_config(folder: Path) -> dict[str, Any]:
    """config.json of a Hugging Face model folder, with clear errors."""
    folder = Path(folder)
    path = folder / "config.json"
    if not folder.is_dir():
        raise bad_input(f"Model folder not found: {folder}")
    if not path.is_file():
        hint = ("This is a PEFT adapter folder: pass its base model and --adapter."
                if (folder / "adapter_config.json").is_file() else
                "Point to a Hugging Face model folder (config.json + *.safetensors + tokenizer files).")
        raise bad_input(f"{folder} has no config.json, so it is not a Hugging Face model folder.", hint)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise bad_input(f"{path} is not valid JSON ({exc}).") from None
    if not isinstance(config, dict):
        raise bad_input(f"{path} does not hold a JSON object.")
    return config


def tokenizer_dir(base_dir: Path, adapter_dir: Path | None) -> Path:
    """Where the tokenizer to ship lives: the adapter folder if it has one (training saves
    it there, with the training chat template), else the base."""
    if adapter_dir is not None and any((Path(adapter_dir) / n).is_file()
                                       for n in ("tokenizer.json", "tokenizer.model")):
        return Path(adapter_dir)
    return Path(base_dir)


def copy_tokenizer_files(out: Path, base_dir: Path, adapter_dir: Path | None) -> None:
    """Copy the tokenizer files of :func:`tokenizer_dir` into ``out``."""
    source = tokenizer_dir(base_dir, adapter_dir)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)


# -- PyTorch .bin weights -> safetensors, once -------------------------------------------

def bin_shards(folder: Path) -> list[Path]:
    """The folder's PyTorch weight shards in index order ([] when it has safetensors)."""
    folder = Path(folder)
    if any(p.name != "adapter_model.safetensors" for p in folder.glob("*.safetensors")):
        return []
    index = folder / BIN_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as exc:
            raise FtpackError(f"{index} is damaged ({exc}).", "Re-download the model.") from None
        files = [folder / f for f in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FtpackError(f"{folder} is incomplete: missing {', '.join(missing)}.",
                              f"Re-download the model (all shards listed in {BIN_INDEX}).")
        return files
    if (folder / "pytorch_model.bin").is_file():
        return [folder / "pytorch_model.bin"]
    return sorted(folder.glob("pytorch_model-*.bin"))


def ensure_safetensors(folder: Path | str, *, allow_pickle: bool = False) -> Path:
    """``folder`` itself when it has safetensors weights (or no PyTorch weights at all);
    for ``pytorch_model*.bin`` weights, a safetensors copy in ftpack's cache.

    The copy is made once per set of shards (keyed by their names, sizes, mtimes and
    real paths), under a lock so parallel processes share it, and is named like the
    source folder so names derived from it do not change. Only the torch import and
    the conversion itself cost anything; a safetensors folder returns at once.
    """
    folder = Path(folder)
    shards = bin_shards(folder) if folder.is_dir() else []
    if not shards:
        return folder
    key = _shards_key(shards)
    root = cache_dir() / "safetensors"
    target = root / key[:16] / folder.resolve().name
    if _is_converted(target, key):
        return target
    with file_lock(root / f".{key[:16]}.lock"):
        if _is_converted(target, key):  # another process finished it while we waited
            return target
        _convert_bin_folder(folder, shards, target, key, allow_pickle)
    return target


def _shards_key(shards: list[Path]) -> str:
    h = hashlib.sha256()
    for shard in shards:
        st = shard.stat()
        h.update(f"{shard.name}\0{st.st_size}\0{st.st_mtime_ns}\0{shard.resolve()}\n".encode())
    return h.hexdigest()


def _is_converted(target: Path, key: str) -> bool:
    try:
        return json.loads((target / _CONVERTED_RECORD).read_text(encoding="utf-8")).get("key") == key
    except (OSError, ValueError):
        return False


def _convert_bin_folder(folder: Path, shards: list[Path], target: Path, key: str, allow_pickle: bool) -> None:
    from ftpack.core.report import get_reporter

    reporter = get_reporter()
    reporter.info(f"Converting the PyTorch weights of {folder} to safetensors in {target} (once).")
    check_free_space(target.parent, sum(s.stat().st_size for s in shards) + (64 << 20),
                     f"the safetensors copy of {folder.name}")
    names = ([f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
             if len(shards) > 1 else ["model.safetensors"])
    weight_map: dict[str, str] = {}
    total = 0
    with atomic_dir(target) as tmp, reporter.progress("converting .bin", total=len(shards), unit="shards") as bar:
        for shard, name in zip(shards, names):
            for tensor_name, nbytes in _convert_shard(shard, tmp / name, allow_pickle):
                weight_map[tensor_name] = name
                total += nbytes
            bar.advance(1)
        if len(shards) > 1:
            write_json(tmp / "model.safetensors.index.json",
                       {"metadata": {"total_size": total}, "weight_map": weight_map})
        for item in sorted(folder.iterdir()):
            if item.is_file() and not item.name.endswith(_WEIGHT_SUFFIXES) and item.name != BIN_INDEX:
                shutil.copy2(item, tmp / item.name)
        write_json(tmp / _CONVERTED_RECORD, {"source": str(folder.resolve()), "key": key,
                                             "shards": [s.name for s in shards]})


def _convert_shard(shard: Path, out: Path, allow_pickle: bool) -> list[tuple[str, int]]:
    """One .bin shard -> one .safetensors file, tensor by tensor (the shard is mmapped)."""
    import torch

    from ftpack.gguf.safetensors_io import SafetensorsWriter, safetensors_order

    state = _load_state_dict(shard, allow_pickle)
    tensors: dict[str, Any] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise bad_input(f"{shard} is not a weights file: {name!r} holds a {type(value).__name__}, not a tensor.")
        dtype = _TORCH_TO_ST.get(str(value.dtype).removeprefix("torch."))
        if dtype is None:
            raise bad_input(f"{shard}: tensor {name} has dtype {value.dtype}, which ftpack cannot convert.")
        tensors[str(name)] = (dtype, value)
    plan = safetensors_order([(n, d, tuple(t.shape)) for n, (d, t) in tensors.items()])
    with SafetensorsWriter(out, plan, {"format": "pt"}) as writer:
        for name, _, _ in plan:
            t = tensors[name][1].detach().contiguous().reshape(-1)
            writer.write(name, t.view(torch.uint8).numpy())
    return [(n, tensors[n][1].numel() * tensors[n][1].element_size()) for n, _, _ in plan]


def _load_state_dict(shard: Path, allow_pickle: bool) -> Any:
    """torch.load with the safe loader (mmap when the file format allows it); the full
    unpickler only with ``allow_pickle``."""
    import torch

    def load(weights_only: bool) -> Any:
        try:
            return torch.load(shard, weights_only=weights_only, map_location="cpu", mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # the legacy (pre-zip) format cannot be mapped
                raise
            return torch.load(shard, weights_only=weights_only, map_location="cpu")

    try:
        try:
            return load(weights_only=True)
        except pickle.UnpicklingError as exc:
            if not allow_pickle:
                raise bad_input(
                    f"PyTorch's safe loader refuses {shard} ({_short_reason(str(exc))}): it holds more than "
                    "plain tensors.",
                    "Pass --allow-pickle if you trust its source: the file is then unpickled, which can run code."
                ) from None
            return load(weights_only=False)
    except FtpackError:
        raise
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise FtpackError(f"Cannot read {shard} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}).",
                          "Re-download the model.") from None


def _short_reason(message: str) -> str:
    """What torch's long weights_only message says was refused, in a few words."""
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if m:
        return f"it refers to {m.group(1)}"
    m = re.search(r"(Unsupported operand[^\n]*)", message)
    return m.group(1).strip()[:120] if m else message.strip().splitlines()[0][:120]
