"""The GGUF side of an adapter build (``--ship adapter``): the base GGUF and the LoRA GGUF.

An adapter build registers a model whose weights are the *base's own* GGUF plus a small
LoRA adapter GGUF, instead of a new full GGUF. Two stages replace convert and quantize:

- ``base``: which GGUF the adapter applies to, and the Ollama model that holds it.
  A base from Ollama (``--base ollama:NAME``) is that model's own blob, used in place;
  a GGUF base (a ``.gguf`` file, the embedded SmolLM2) is that file; a Hugging Face
  base is converted and quantized here once (``gguf/<name>.base.<QUANT>.gguf``). The
  last two are registered as ``--ollama-base`` (default ``NAME-base``) by the register
  stage, so several adapters can share one base. Writes ``base/base.json``.
- ``adapter``: the trained PEFT adapter as a llama.cpp LoRA GGUF
  (:mod:`ftpack.gguf.lora_gguf`), checked tensor by tensor against that base GGUF:
  ``gguf/<name>.lora.gguf``.

Training on a GGUF base dequantizes exactly that file (:mod:`ftpack.training.bases`),
so the adapter learned its corrections on the very weights it is shipped with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftpack.core.errors import FtpackError, bad_input

OLLAMA_PREFIX = "ollama:"
BASE_SUFFIX = "-base"


@dataclass(frozen=True)
class ShippedBase:
    """The base an adapter build ships on (the ``base`` stage's record)."""

    source: str  # ollama | gguf | converted
    model: str  # the Ollama model holding it (display name)
    gguf: Path
    sha256: str
    bytes: int
    file_type: str
    architecture: str

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256

    @property
    def in_ollama_already(self) -> bool:
        """True when the base is an Ollama model the user pulled (nothing to register)."""
        return self.source == "ollama"

    def as_metrics(self, build_dir: Path) -> dict[str, Any]:
        """The record; a GGUF inside the build folder is named relative to it (a moved build still works)."""
        gguf = self.gguf.relative_to(build_dir) if self.gguf.is_relative_to(build_dir) else self.gguf
        return {"source": self.source, "model": self.model, "gguf": str(gguf), "sha256": self.sha256,
                "bytes": self.bytes, "file_type": self.file_type, "architecture": self.architecture}

    @classmethod
    def from_metrics(cls, m: dict[str, Any], build_dir: Path) -> "ShippedBase":
        return cls(m["source"], m["model"], Path(build_dir) / m["gguf"], m["sha256"], int(m["bytes"]),
                   m.get("file_type", ""), m.get("architecture", ""))


def ships_adapter(cfg: Any) -> bool:
    """Whether a (resolved) config ships an adapter; "auto" and old configs without the key do not."""
    return getattr(cfg, "ship", None) == "adapter"


def ollama_model_of(base: str | None) -> str | None:
    """The Ollama model a ``--base ollama:NAME[:TAG]`` names (display form), else None."""
    if not base or not str(base).strip().lower().startswith(OLLAMA_PREFIX):
        return None
    from ftpack.ollama.names import parse_model_name

    return parse_model_name(str(base).strip()[len(OLLAMA_PREFIX):]).display


def default_base_model(build_name: str) -> str:
    """``NAME-base``: where a converted base goes when no ``--ollama-base`` is given (tag dropped:
    one base serves every tag of the fine-tune)."""
    from ftpack.ollama.names import parse_model_name

    n = parse_model_name(build_name)
    model = n.model[: 80 - len(BASE_SUFFIX)] + BASE_SUFFIX
    prefix = "" if n.display.count("/") == 0 else n.display.rsplit("/", 1)[0] + "/"
    return parse_model_name(prefix + model).display


def shipped_base(manifest) -> ShippedBase:
    """The base of a finished adapter build (its ``base`` stage record)."""
    rec = manifest.stages.get("base")
    if rec is None or rec.status != "done":
        raise FtpackError(f"The adapter build in {manifest.build_dir} has no finished base stage.",
                          "Run `ftpack build` to finish it.")
    return ShippedBase.from_metrics(rec.metrics, manifest.build_dir)


def base_of(ctx) -> ShippedBase:
    """The ``base`` stage's record, for the stages after it."""
    return ShippedBase.from_metrics(ctx.upstream("base").metrics, ctx.build_dir)


def shipped_adapter(manifest) -> Path:
    """The LoRA GGUF of a finished adapter build (its ``adapter`` stage's main output)."""
    rec = manifest.stages.get("adapter")
    if rec is None or rec.status != "done" or not rec.main_output:
        raise FtpackError(f"The adapter build in {manifest.build_dir} has no adapter GGUF yet.",
                          "Run `ftpack build` to finish it.")
    return manifest.build_dir / rec.main_output


def pulled_blob(base: str, models_dir: str | Path | None, host: str | None) -> tuple[Path, str]:
    """(blob path, sha256) of the GGUF model layer of ``--base ollama:NAME``, found the way
    training found it (:func:`ftpack.ollama.base.read_ollama_base`)."""
    from ftpack.ollama.base import read_ollama_base

    ob = read_ollama_base(base, models_dir=models_dir, host=host)
    return ob.model_blob, ob.model_digest.split(":", 1)[1]


def _materialised_from(folder: Path) -> str | None:
    """The sha256 of the GGUF a base folder was dequantized from (its ``ftpack-source.json``)."""
    try:
        return str(json.loads((Path(folder) / "ftpack-source.json").read_text(encoding="utf-8"))["sha256"]) or None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _train_info(ctx) -> dict[str, Any]:
    train = ctx.upstream("train")
    info = ctx.layout.training(train.metrics.get("method") or "lora").train_info
    try:
        return {**train.metrics, **json.loads(info.read_text(encoding="utf-8"))}
    except (OSError, ValueError):
        return dict(train.metrics)


# -- the stages --------------------------------------------------------------------------------

def run_base_stage(ctx):
    """Stage ``base`` (--ship adapter): the GGUF the adapter applies to and the Ollama model holding it.

    Reads the train stage's record (the resolved base: its source and folder; a folder
    materialised from a GGUF names that GGUF in ``ftpack-source.json``), config ``base``,
    ``ollama_base``, ``outtype`` and ``quant`` (for a base that must be converted).
    Writes ``base/base.json``, plus ``gguf/<name>.base.<QUANT>.gguf`` for a converted base.
    """
    from ftpack.core.atomic import sha256_file, write_json
    from ftpack.core.runner import StageResult
    from ftpack.ollama.store import read_gguf_summary

    from ftpack.training.bases import embedded_gguf_path

    cfg = ctx.config
    info = _train_info(ctx)
    base_path = Path(info.get("base_path") or "")
    source = info.get("base_source") or ""
    outputs: list[Path] = []
    pulled = ollama_model_of(cfg.base)
    if pulled is not None:  # the model's own blob, as the store holds it now
        gguf, digest = pulled_blob(cfg.base, cfg.models_dir, cfg.host)
        trained_on = _materialised_from(base_path)
        if trained_on is not None and trained_on != digest:
            raise FtpackError(f"The Ollama model {pulled} has changed since training (its model blob is now "
                              f"sha256:{digest[:12]}…, training read sha256:{trained_on[:12]}…).",
                              "Train again on the current model: the same command with --force train.")
        kind, model = "ollama", pulled
    elif source in ("gguf", "embedded"):  # a .gguf base or the embedded model: that file is the base, as it is
        gguf = embedded_gguf_path() if source == "embedded" else Path(str(info.get("base") or cfg.base))
        if not gguf.is_file():
            raise FtpackError(f"The base GGUF {gguf} is gone.", "Put it back, or run the build again with --force train.")
        digest = sha256_file(gguf)
        kind, model = "gguf", cfg.ollama_base or default_base_model(cfg.name)
    else:  # a Hugging Face folder: convert and quantize it once, without the adapter
        gguf = _convert_base(ctx, base_path)
        outputs.append(gguf)
        digest = sha256_file(gguf)
        kind, model = "converted", cfg.ollama_base or default_base_model(cfg.name)
    summary = read_gguf_summary(gguf)
    if summary.kind == "adapter":
        raise bad_input(f"The base {gguf} is itself an adapter GGUF.")
    base = ShippedBase(kind, model, gguf, digest, gguf.stat().st_size, summary.file_type, summary.architecture)
    what = {"ollama": f"the Ollama model {model}'s own blob", "gguf": f"the GGUF {gguf.name}",
            "converted": f"{gguf.name}, converted from {info.get('base') or cfg.base}"}[kind]
    ctx.reporter.info(f"base: {what} ({summary.file_type}, {base.bytes:,} bytes); the model will reuse it as "
                      f"{model}" + (" (registered with the build)" if kind != "ollama" else ""))
    out = ctx.stage_dir / "base.json"
    metrics = base.as_metrics(ctx.build_dir)
    write_json(out, metrics)
    return StageResult(outputs=[out, *outputs], main_output=out, metrics=metrics)


def _convert_base(ctx, base_path: Path) -> Path:
    """Convert + quantize a Hugging Face base (no adapter): gguf/<name>.base.<QUANT>.gguf; the
    unquantized intermediate is removed."""
    from ftpack.core.config import DEFAULT_QUANT
    from ftpack.gguf.convert import convert_to_gguf
    from ftpack.gguf.quantize import quantize_gguf, resolve_quant_type

    cfg = ctx.config
    if not (base_path / "config.json").is_file():
        raise FtpackError(f"The trained base {base_path} is not a Hugging Face folder to convert.",
                          "Run the build again with --force train.")
    # a shared base is not chosen by one data set's KLD: --quant auto means the default here
    quant, _ = resolve_quant_type(cfg.quant if cfg.quant not in (None, "auto") else DEFAULT_QUANT)
    outtype = (cfg.outtype or "f16").lower()
    ctx.layout.gguf_dir.mkdir(parents=True, exist_ok=True)
    full = ctx.layout.gguf_file(cfg.name, f"base.{outtype}")
    dst = ctx.layout.gguf_file(cfg.name, f"base.{quant}")
    try:
        convert_to_gguf(base_path, full, outtype=outtype, name=default_base_model(cfg.name),
                        allow_pickle=cfg.allow_pickle)
        if quant.lower() == outtype:
            full.replace(dst)
        else:
            quantize_gguf(full, dst, quant, imatrix=_imatrix_file(cfg))
    finally:
        full.unlink(missing_ok=True)
    return dst


def _imatrix_file(cfg) -> Path | None:
    """An explicit ``--imatrix FILE`` for the shared base; "auto" (from this build's data) is not
    used for it: the base serves every adapter built on it, not this data set alone."""
    value = getattr(cfg, "imatrix", None)
    return None if value is None or str(value).lower() in ("auto", "none") else Path(value)


def run_adapter_stage(ctx):
    """Stage ``adapter`` (--ship adapter): train/adapter → gguf/<name>.lora.gguf (llama.cpp LoRA GGUF).

    Reads the train stage's adapter folder and base folder, the ``base`` stage's GGUF (every
    adapted tensor must exist there with the adapter's shape), config ``outtype`` (f32 keeps
    f32 adapter tensors, anything else writes f16).
    """
    from ftpack.core.runner import StageResult
    from ftpack.gguf.lora_gguf import adapter_outtype, write_lora_gguf

    cfg = ctx.config
    adapter_dir = ctx.upstream_path("train")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise bad_input(f"{adapter_dir} holds full weights, not a LoRA adapter: there is nothing to ship as an "
                        "adapter.", "Use --ship merged (or --method lora / qlora).")
    info = _train_info(ctx)
    base = base_of(ctx)
    out = ctx.layout.gguf_file(cfg.name, "lora")
    result = write_lora_gguf(adapter_dir, out, base_dir=info.get("base_path") or None, base_gguf=base.gguf,
                             outtype=adapter_outtype(cfg.outtype), name=cfg.name, reporter=ctx.reporter)
    share = result.bytes / base.bytes if base.bytes else None
    ctx.reporter.info(f"the adapter is {result.bytes:,} bytes, {share:.1%} of the base GGUF ({base.bytes:,} bytes)"
                      if share is not None else f"the adapter is {result.bytes:,} bytes")
    return StageResult(outputs=[out], main_output=out, metrics={
        **result.as_metrics(), "base_model": base.model, "base_bytes": base.bytes,
        "share_of_base": round(share, 5) if share is not None else None})
