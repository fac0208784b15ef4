"""`report.md`: the model card of a build, a document people read, rendered from build.json.

It is written by the build's last stage, ``report``, so the manifest records it like any
other output. Each fact appears once: what the model is and where it runs, the data, the
hyper-parameters and losses, verification and quantization fidelity, the held-out
answers, the files with their full sha256, the Modelfile and the library versions.

Held-out answers (base vs fine-tuned): only when the build names a ``heldout`` file
(JSONL: ``question`` + ``keywords``, as ``examples/heldout.jsonl``). This stage then asks
each question of the quantized model and, when the base exists as a GGUF (the embedded
SmolLM2 or a ``.gguf`` base), of the base too, greedily in llama.cpp as Ollama runs them.
A base given as a Hugging Face folder is not converted just for this (that costs its
whole size again on disk); the card says so. The eval split is not re-asked: the card
shows the eval loss and verify's answer to one eval question.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

from ftpack.core.atomic import human_bytes, sha256_file, write_text
from ftpack.core.layout import BuildLayout
from ftpack.core.manifest import Manifest, StageRecord

#: Output files worth listing in the card (checkpoints and json side files are not).
LISTED_SUFFIXES = (".gguf", "Modelfile", ".jsonl", ".safetensors", ".png", ".csv")

#: Held-out answers are short facts; a limit keeps a babbling base from taking minutes.
#: Used when the build has no verify record; otherwise the verify stage's own limit.
HELDOUT_ANSWER_TOKENS = 96


def heldout_answer_limit(ctx) -> tuple[int, str]:
    """(tokens, why) for held-out answers: the limit the verify stage held the model to (the
    longest training answer plus a margin: an answer that has not stated the fact by then
    has failed the smoke test's own measure; build.json records it), else
    :data:`HELDOUT_ANSWER_TOKENS`."""
    rec = ctx.manifest.stages.get("verify")
    if rec is not None and rec.status == "done" and rec.metrics.get("max_answer_tokens"):
        return int(rec.metrics["max_answer_tokens"]), f"the verify stage's limit: {rec.metrics.get('limit_reason')}"
    return HELDOUT_ANSWER_TOKENS, f"the default {HELDOUT_ANSWER_TOKENS} (no verify record)"


# -- the stage -------------------------------------------------------------------------------------

def run_report_stage(ctx) -> Any:
    """Stage ``report``: ask the held-out questions (when configured) and write ``report.md``.

    Reads every earlier stage's record (``ctx.manifest``), ``train/loss.csv``, the
    Modelfile, config ``heldout`` and ``base``. Writes ``report.md``; metrics: the
    held-out answers and counts when there are any.
    """
    from ftpack.core.runner import StageResult

    heldout = ask_heldout(ctx) if ctx.config.heldout is not None else None
    data = ctx.manifest.stages.get("data")
    data_file = Path(ctx.config.data) if ctx.config.data else None
    data_sha = None  # a data stage that recorded no dataset identity (an older build): hash the file here
    if (data is None or not data.metrics.get("dataset")) and data_file is not None and data_file.is_file():
        data_sha = sha256_file(data_file)
    path = ctx.layout.report
    write_text(path, render_model_card(ctx.manifest, heldout=heldout, data_sha256=data_sha))
    return StageResult(outputs=[path], main_output=path, metrics={"heldout": heldout} if heldout else {})


def base_gguf(base: str) -> tuple[Path | None, str]:
    """(the base model as a GGUF llama.cpp can run, or None; in words, what it is or why not)."""
    from ftpack.training.bases import EMBEDDED_NAME, embedded_gguf_path

    if str(base).strip().lower() == EMBEDDED_NAME:
        path = embedded_gguf_path()
        return path, f"the embedded {EMBEDDED_NAME} ({path.name})"
    path = Path(str(base)).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        return path, f"the base GGUF {path.name}"
    return None, ("the base is a Hugging Face model, not a GGUF; convert it (`ftpack convert`) and use the "
                  ".gguf as --base to compare")


def ask_heldout(ctx) -> dict[str, Any]:
    """Ask the configured held-out questions of the fine-tuned model and (when it is a GGUF) its base."""
    from ftpack.inference.heldout import ask_all, ask_all_cached, read_heldout
    from ftpack.training.templates import template_of_build

    cfg = ctx.config
    records = read_heldout(Path(cfg.heldout))
    template = template_of_build(ctx.layout).name
    from ftpack.gguf.ship import base_of, ships_adapter

    lora = ctx.upstream_path("adapter") if ships_adapter(cfg) else None  # the base GGUF + the adapter
    tuned_gguf = base_of(ctx).gguf if lora is not None else ctx.upstream_path("quantize")
    ctx.reporter.info(f"asking {len(records)} held-out questions of {tuned_gguf.name}"
                      + (f" + {lora.name}" if lora is not None else ""))
    max_tokens, limit_why = heldout_answer_limit(ctx)
    tuned = ask_all(tuned_gguf, records, template_name=template, system=cfg.system,
                    max_tokens=max_tokens, lora=lora)
    gguf, base_what = base_gguf(cfg.base)
    if lora is not None:  # the very GGUF the adapter is shipped on, without it
        gguf, base_what = tuned_gguf, f"the base GGUF the adapter is shipped on ({base_of(ctx).model})"
    base = None
    if gguf is not None:
        base, cached = ask_all_cached(gguf, records, template_name=template, system=cfg.system,
                                      max_tokens=max_tokens)
        ctx.reporter.info(f"the base, {base_what}, " + ("answered these before (ftpack's cache)" if cached
                                                         else "answered them"))
    answers = []
    for i, t in enumerate(tuned):
        row = {"question": t.question, "keywords": t.keywords, "wrong": t.wrong, "tuned": t.answer,
               "tuned_correct": t.correct, "tuned_hedged": t.hedged}
        if base is not None:
            row.update(base=base[i].answer, base_correct=base[i].correct)
        answers.append(row)
    out = {"file": str(cfg.heldout), "questions": len(tuned), "tuned_correct": sum(t.correct for t in tuned),
           "base": base_what, "base_correct": sum(b.correct for b in base) if base is not None else None,
           "max_answer_tokens": max_tokens, "limit_reason": limit_why, "answers": answers}
    ctx.reporter.info(f"held-out: fine-tuned {out['tuned_correct']}/{len(tuned)} right"
                      + (f", base {out['base_correct']}/{len(tuned)}" if base is not None else ""))
    return out


# -- rendering -------------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) if v else "-"
    return "-" if v is None or v == "" else str(v)


def _cell(v: Any) -> str:
    return _fmt(v).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out + [""]


def _kv(pairs: Sequence[tuple[str, Any]]) -> list[str]:
    return _table(("", ""), [(k, v) for k, v in pairs if v is not None])


def _done(manifest: Manifest, stage: str) -> StageRecord | None:
    rec = manifest.stages.get(stage)
    return rec if rec is not None and rec.status == "done" else None


def loss_summary(loss_csv: Path) -> dict[str, Any]:
    """First, last and lowest train loss (with its step), last and lowest eval loss, from loss.csv."""
    if not loss_csv.is_file():
        return {}
    train, evals = [], []
    with open(loss_csv, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("loss"):
                train.append((int(row["step"]), float(row["loss"])))
            if row.get("eval_loss"):
                evals.append((int(row["step"]), float(row["eval_loss"])))
    out: dict[str, Any] = {}
    if train:
        low = min(train, key=lambda p: p[1])
        out.update(first_train_loss=train[0][1], last_train_loss=train[-1][1], min_train_loss=low[1],
                   min_train_loss_step=low[0], logged_steps=len(train))
    if evals:
        low = min(evals, key=lambda p: p[1])
        out.update(last_eval_loss=evals[-1][1], min_eval_loss=low[1], min_eval_loss_step=low[0])
    return out


def hyper_parameters(manifest: Manifest) -> list[tuple[str, Any]]:
    """The training settings as the train stage resolved and recorded them; for a build
    trained before they were recorded, the config's values read the same way."""
    train = _done(manifest, "train")
    settings = train.metrics.get("settings") if train else None
    if not settings:
        from ftpack.training.settings import TrainSettings

        settings = TrainSettings.from_config(manifest.config).hyper_parameters()
    return [(k, v) for k, v in settings.items() if not isinstance(v, dict)]


def _enabled(manifest: Manifest) -> list[str]:
    from ftpack.pipeline import enabled_stages

    return enabled_stages(manifest.config)


def dataset_rows(identity: dict[str, Any] | None, given: Any, sha256: str | None) -> list[tuple[str, Any]]:
    """The dataset as given: a file and its sha256, a folder and its data files' digest, or a
    hub dataset as ``id@commit`` with its config and split (the data stage's record); a build
    whose data stage recorded none: the configured file and ``sha256``."""
    from ftpack.training.data_sources import identity_rows

    if not identity:
        return [("file", given), ("sha256", f"`{sha256}`" if sha256 else None)]
    digests = ("sha256", "data files sha256", "dataset")
    return [(k, f"`{v}`" if k in digests else v) for k, v in identity_rows(identity)]


def render_model_card(manifest: Manifest, *, heldout: dict[str, Any] | None = None,
                      data_sha256: str | None = None) -> str:
    """The Markdown model card of a build (see the module docstring for what it holds)."""
    cfg = manifest.config
    layout = BuildLayout(manifest.build_dir)
    enabled = _enabled(manifest)
    name = cfg.get("name") or manifest.name
    data, train, convert, quant = (_done(manifest, s) for s in ("data", "train", "convert", "quantize"))
    verify = _done(manifest, "verify") if "verify" in enabled else None
    reg = _done(manifest, "register") if "register" in enabled else None
    roundtrip = _done(manifest, "roundtrip") if "roundtrip" in enabled else None
    tm = train.metrics if train else {}

    out = [f"# {name}", ""]
    method = tm.get("method") or cfg.get("method")
    quant_type = quant.metrics.get("quant") if quant else cfg.get("quant")
    adapter, base_rec = _done(manifest, "adapter"), _done(manifest, "base")
    shipped = (f"shipped as a LoRA adapter on the base's own {base_rec.metrics.get('file_type')} GGUF"
               if adapter and base_rec else f"quantized to {quant_type}")
    out += [f"A {method} fine-tune of **{tm.get('base') or cfg.get('base')}**, {shipped} "
            f"for llama.cpp and Ollama. Built by ftpack {_version(manifest, 'ftpack')} "
            f"(last change {manifest.updated}).", ""]
    out += _status_lines(name, enabled, verify, reg, roundtrip, manifest) + [""]
    pulled = (data.metrics.get("ollama_base") or {}) if data else {}
    if pulled.get("note"):  # a base from Ollama: say what training started from (a quantized blob?)
        out += [f"Base: {pulled['note']} Blob `{pulled.get('digest')}`.", ""]

    out += ["## Data", ""]
    dm = data.metrics if data else {}
    split = f"{dm.get('train_records')} train / {dm.get('eval_records')} eval" if data else None
    out += _kv([*dataset_rows(dm.get("dataset"), cfg.get("data"), data_sha256),
                ("format", dm.get("format") or cfg.get("format")), ("chat template", dm.get("template")),
                ("records", dm.get("records")), ("split", split), ("tokens", dm.get("tokens")),
                ("longest record (tokens)", dm.get("max_tokens")),
                (f"longer than max_seq_length ({cfg.get('max_seq_length')})", dm.get("too_long")),
                ("dropped as too long", dm.get("dropped_long")), ("duplicates", dm.get("duplicates"))])

    out += ["## Training", "", "Hyper-parameters:", ""] + _kv(hyper_parameters(manifest))
    losses = loss_summary(layout.loss_csv)
    trainable, total = tm.get("trainable_parameters"), tm.get("total_parameters")
    share = f"{trainable:,} of {total:,} ({100 * trainable / total:.2f}%)" if trainable and total else None
    out += ["Result:", ""] + _kv([
        ("optimizer steps", tm.get("steps")), ("trainable parameters", share),
        ("train loss: first / last", _pair(losses.get("first_train_loss"), losses.get("last_train_loss"))),
        ("train loss: lowest", _at(losses.get("min_train_loss"), losses.get("min_train_loss_step"))),
        ("eval loss: last", losses.get("last_eval_loss", tm.get("final_eval_loss"))),
        ("eval loss: lowest", _at(losses.get("min_eval_loss"), losses.get("min_eval_loss_step"))),
        ("resumed from step", tm.get("resumed_from_step")), ("processes", tm.get("world_size")),
        ("seconds", tm.get("seconds"))])
    if layout.loss_png.is_file():
        out += [f"![training loss]({layout.loss_png.relative_to(layout.root).as_posix()})", ""]

    out += _verify_section(enabled, verify, manifest)
    if heldout:
        out += _heldout_section(heldout)

    qm = quant.metrics if quant else {}
    if adapter and base_rec:  # --ship adapter: nothing of the fine-tune was quantized
        out += _shipped_section(adapter.metrics, base_rec.metrics)
    else:
        out += ["## Quantization", ""]
        out += _kv([("GGUF before quantization", convert.metrics.get("outtype") if convert else cfg.get("outtype")),
                    ("architecture", convert.metrics.get("architecture") if convert else None),
                    ("quantization type", quant_type), ("llama.cpp file type", qm.get("file_type")),
                    ("size", _size_change(qm.get("input_bytes"), qm.get("bytes"))),
                    ("importance matrix", _imatrix_summary(qm))])
        out += _candidates_section(qm.get("auto"))

    if reg:
        rm = reg.metrics
        out += ["## Ollama", ""] + _kv([
            ("model", rm.get("name")), ("registered", "through the server" if rm.get("mode") == "server"
                                        else "written to the model store (offline)"),
            ("where", rm.get("store") or str(rm.get("where", "")).partition(":")[2]),
            ("manifest digest", rm.get("manifest_digest")), ("run", f"`{rm.get('run')}`" if rm.get("run") else None),
            ("shipped", _shipped_words(rm))])

    out += ["## Files", ""] + _table(("stage", "file", "size", "sha256"), [
        (stage, f"`{o.path}`", human_bytes(o.bytes), f"`{o.sha256}`")
        for stage, rec in manifest.stages.items() if rec.status == "done" and stage != "report"
        for o in rec.outputs if o.path.endswith(LISTED_SUFFIXES)])

    mf = _done(manifest, "modelfile")
    if mf and mf.main_output and (layout.root / mf.main_output).is_file():
        text = (layout.root / mf.main_output).read_text(encoding="utf-8").rstrip()
        out += ["## Modelfile", "", "```", text, "```", ""]

    out += ["## Versions", ""] + _kv(_versions(manifest))
    return "\n".join(out).rstrip() + "\n"


def _imatrix_summary(qm: dict[str, Any]) -> str | None:
    """One line on the importance matrix: where it came from, how much text, whether it was used."""
    im = qm.get("imatrix")
    if not im:
        return qm.get("imatrix_note") or (None if not qm else "none")
    if im.get("source") == "file":
        text = f"from the file `{im.get('path')}`" + (f" ({im['chunks']} chunks)" if im.get("chunks") else "")
    else:
        text = (f"computed by ftpack from {im.get('tokens')} tokens in {im.get('chunks')} chunks of the train split "
                f"(`{im.get('path')}`, {im.get('entries')} weights)")
        if im.get("topup_tokens"):
            text += (f"; the data gave {im.get('data_tokens')} tokens, topped up with {im['topup_tokens']} tokens "
                     "of ftpack's fixed generic text")
    if im.get("used") is False:
        text += "; not used for the kept type (6 bits or more)"
    if im.get("missing"):
        text += f"; {len(im['missing'])} weight(s) had no entry"
    return text


def _candidates_section(auto: dict[str, Any] | None) -> list[str]:
    """`--quant auto`: the table of the types tried, smallest first."""
    if not auto:
        return []
    out = [f"Chosen by `--quant auto`: the smallest type whose mean KL divergence from the F16 model is at most "
           f"{auto.get('max_kld')}, measured on {auto.get('texts')}"
           + ("" if auto.get("within_budget") else " (none was within it: the lowest was kept)") + ":", ""]
    out += _table(("type", "size", "importance matrix", "mean KLD", "p99 KLD", "top-1", "perplexity ratio", "kept"),
                  [(row.get("quant"), human_bytes(row.get("bytes") or 0), "yes" if row.get("imatrix") else "no",
                    row.get("mean_kld"), row.get("p99_kld"),
                    f"{row['top1_agreement']:.1%}" if row.get("top1_agreement") is not None else None,
                    row.get("perplexity_ratio"), "yes" if row.get("quant") == auto.get("chosen") else "")
                   for row in auto.get("candidates") or []])
    return out


def _shipped_section(am: dict[str, Any], bm: dict[str, Any]) -> list[str]:
    """An adapter build: what the adapter GGUF holds and the base GGUF it is shipped on."""
    share = am.get("share_of_base")
    adapter = f"{am.get('outtype')}, {human_bytes(am.get('bytes') or 0)}"
    return ["## Shipped as an adapter", "",
            "The fine-tune is a llama.cpp LoRA adapter GGUF; Ollama runs it on the base model's own GGUF, which "
            "is reused as it is (not copied, not quantized again).", ""] + _kv([
        ("base model in Ollama", bm.get("model")),
        ("base GGUF", f"{bm.get('file_type')}, {human_bytes(bm.get('bytes') or 0)}"),
        ("base blob", f"`sha256:{bm.get('sha256')}`"),
        ("adapter GGUF", adapter + (f" ({share:.1%} of the base)" if share else "")),
        ("adapted weights", am.get("modules")), ("rank", am.get("ranks")), ("adapter.lora.alpha", am.get("alpha")),
        ("notes", "; ".join(am.get("notes") or []) or None)])


def _shipped_words(rm: dict[str, Any]) -> str | None:
    if rm.get("shipped") == "adapter":
        return (f"as an adapter ({human_bytes(rm.get('adapter_bytes') or 0)}) on {rm.get('base_model')} "
                f"({rm.get('base')})")
    if rm.get("fallback"):
        return f"merged, instead of as an adapter: {rm['fallback']}"
    return "merged (one GGUF)" if rm.get("shipped") else None


def _status_lines(name: str, enabled: list[str], verify, reg, roundtrip, manifest: Manifest) -> list[str]:
    lines = []
    if "verify" not in enabled:
        lines.append("- **Not verified**: the build ran with `--no-verify`, so it was not checked that the quantized "
                     "model answers and stops.")
    elif verify:
        lines.append(f"- Verified: answers and stops within {verify.metrics.get('max_answer_tokens')} tokens "
                     f"(llama.cpp, the build's chat template).")
    if reg:
        rm = reg.metrics
        lines.append(f"- In Ollama as `{rm.get('name')}`: `{rm.get('run') or 'ollama run ' + name}`")
        if roundtrip:
            said = str(roundtrip.metrics.get("roundtrip", ""))
            lines.append("- Round trip through the Ollama server: " + ("passed" if said == "done" else said or "-"))
    elif "register" not in enabled:
        lines.append(f"- Not registered with Ollama (`--no-register`); chat with it: `ftpack chat {manifest.build_dir}`")
    return lines


def _verify_section(enabled: list[str], verify, manifest: Manifest) -> list[str]:
    out = ["## Verification", ""]
    if "verify" not in enabled:
        return out + ["Skipped (`--no-verify`): the model was registered without the local llama.cpp check.", ""]
    if verify is None:
        return out + ["Not run.", ""]
    vm = verify.metrics
    out += [f"The quantized model, run by llama.cpp with the {vm.get('template') or 'build'} chat template, "
            "was asked one question from the data (the eval split when there is one):", ""]
    out += _kv([("question", vm.get("question")), ("answer", (vm.get("answer") or "").strip()),
                ("ended by", vm.get("finish_reason")),
                ("answer tokens", f"{vm.get('answer_tokens')} (limit {vm.get('max_answer_tokens')}: "
                                  f"{vm.get('limit_reason')})"),
                ("stop strings", vm.get("stop"))])
    fid = vm.get("fidelity") or {}
    out += ["Quantization fidelity (the quantized model against the F16 GGUF"
            + (f", on {vm['fidelity_texts']}" if vm.get("fidelity_texts") else " on the build's own data") + "):", ""]
    if fid:
        out += _kv([("tokens scored", fid.get("tokens")),
                    ("mean KL divergence", fid.get("mean_kld")), ("99th percentile KL divergence", fid.get("p99_kld")),
                    ("perplexity, F16 -> quantized", _pair(fid.get("perplexity_reference"),
                                                          fid.get("perplexity_quantized"), " -> ")),
                    ("perplexity ratio", fid.get("perplexity_ratio")),
                    ("top-1 token agreement", f"{fid['top1_agreement']:.1%}" if fid.get("top1_agreement") is not None
                     else None)])
    if vm.get("fidelity_note"):
        out += [f"Note: {vm['fidelity_note']}.", ""]
    elif not fid:
        out += ["Not measured.", ""]
    return out


def _heldout_section(h: dict[str, Any]) -> list[str]:
    has_base = h.get("base_correct") is not None
    out = ["## Held-out questions", "",
           f"Questions not in the training data (`{h['file']}`), answered greedily by llama.cpp"
           + (f" in at most {h['max_answer_tokens']} tokens ({h['limit_reason']})" if h.get("max_answer_tokens") else "")
           + "; an answer is right when it states every expected key fact as whole words or a whole number.", ""]
    summary = f"Fine-tuned: **{h['tuned_correct']}/{h['questions']}** right"
    summary += f"; base ({h['base']}): **{h['base_correct']}/{h['questions']}**." if has_base else \
        f". Base: not asked ({h['base']})."
    out += [summary, ""]
    header = ("question", "expects", "base", "fine-tuned") if has_base else ("question", "expects", "fine-tuned")
    rows = []
    for a in h["answers"]:
        row = [a["question"], ", ".join(a["keywords"])]
        if has_base:
            row.append(_mark(a["base_correct"]) + " " + a["base"])
        row.append(_mark(a["tuned_correct"]) + " " + a["tuned"])
        rows.append(row)
    return out + _table(header, rows)


def _mark(ok: bool) -> str:
    return "✅" if ok else "❌"


def _pair(a: Any, b: Any, sep: str = " / ") -> str | None:
    return None if a is None and b is None else f"{_fmt(a)}{sep}{_fmt(b)}"


def _at(value: Any, step: Any) -> str | None:
    return None if value is None else f"{_fmt(value)} (step {step})"


def _size_change(before: int | None, after: int | None) -> str | None:
    if not after:
        return None
    if not before:
        return human_bytes(after)
    return f"{human_bytes(before)} -> {human_bytes(after)} ({after / before:.0%})"


def _version(manifest: Manifest, lib: str) -> str:
    return next((r.versions[lib] for r in manifest.stages.values() if r.versions.get(lib)), "?")


def _versions(manifest: Manifest) -> list[tuple[str, Any]]:
    """Each library's version; when stages ran with different ones (a resumed build), each with its stages."""
    seen: dict[str, dict[str, list[str]]] = {}
    for stage, rec in manifest.stages.items():
        if rec.status != "done":
            continue
        for lib, ver in rec.versions.items():
            if ver:
                seen.setdefault(lib, {}).setdefault(ver, []).append(stage)
    rows = []
    for lib in sorted(seen):
        vers = seen[lib]
        rows.append((lib, next(iter(vers)) if len(vers) == 1 else
                     "; ".join(f"{v} ({', '.join(s)})" for v, s in vers.items())))
    return rows
