"""`report.md`: the model card of a build, rendered from its build.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftpack.core.atomic import human_bytes, write_text
from ftpack.core.manifest import Manifest

HYPER_PARAMETERS = ("method", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "learning_rate", "weight_decay", "warmup_ratio",
                    "lr_scheduler_type", "max_seq_length", "lora_r", "lora_alpha", "lora_dropout",
                    "target_modules", "dora", "trainable_layers", "train_on_prompts", "packing",
                    "precision", "seed")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return "-" if v is None else str(v)


def _kv_table(pairs: list[tuple[str, Any]]) -> list[str]:
    lines = ["| | |", "|---|---|"]
    lines += ["| %s | %s |" % (k, _fmt(v).replace("|", "\\|")) for k, v in pairs]
    return lines


def render_model_card(manifest: Manifest) -> str:
    """Markdown model card: base, data, method, losses, outputs, fidelity, versions, Modelfile."""
    cfg = manifest.config
    st = manifest.stages
    out: list[str] = [f"# {manifest.name}", ""]
    out += [f"Built by ftpack from **{cfg.get('base')}** on {manifest.updated}.", ""]

    out += ["## Data", ""]
    data = st.get("data")
    out += _kv_table([("file", cfg.get("data")), ("format", cfg.get("format"))]
                     + list((data.metrics if data else {}).items()))
    out += [""]

    out += ["## Training", ""]
    train = st.get("train")
    out += _kv_table([(k, cfg.get(k)) for k in HYPER_PARAMETERS if k in cfg]
                     + [(f"result: {k}", v) for k, v in (train.metrics if train else {}).items()
                        if not isinstance(v, (list, dict))])
    loss_png = manifest.build_dir / "train" / "loss.png"
    if loss_png.exists():
        out += ["", "![training loss](train/loss.png)"]
    out += [""]

    out += ["## Outputs", "", "| stage | file | size | sha256 |", "|---|---|---|---|"]
    for name, rec in st.items():
        for o in rec.outputs:
            if o.path.endswith((".gguf", "Modelfile", ".jsonl", ".safetensors")):
                out.append(f"| {name} | `{o.path}` | {human_bytes(o.bytes)} | `{o.sha256[:16]}…` |")
    out += [""]

    q = st.get("quantize")
    out += ["## Quantization and fidelity", ""]
    pairs: list[tuple[str, Any]] = [("type", cfg.get("quant"))]
    if q:
        pairs += list(q.metrics.items())
    v = st.get("verify")
    if v:
        pairs += [(k, val) for k, val in v.metrics.items() if not isinstance(val, (list, dict))]
    out += _kv_table(pairs) + [""]

    reg = st.get("register")
    if reg:
        out += ["## Ollama", ""] + _kv_table(list(reg.metrics.items())) + [""]
    mf = st.get("modelfile")
    modelfile = manifest.build_dir / mf.main_output if mf and mf.main_output else None
    if modelfile is not None and modelfile.is_file():
        out += ["## Modelfile", "", "```", modelfile.read_text(encoding="utf-8").rstrip(), "```", ""]

    versions: dict[str, Any] = {}
    for rec in st.values():
        versions.update({k: v for k, v in rec.versions.items() if v})
    out += ["## Library versions", ""] + _kv_table(sorted(versions.items())) + [""]
    return "\n".join(out)


def write_model_card(manifest: Manifest) -> Path:
    path = manifest.build_dir / "report.md"
    write_text(path, render_model_card(manifest))
    return path
