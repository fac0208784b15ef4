"""Verify: the quantized model answers and *stops*, the way Ollama will run it.

A model whose prompt format or stop strings differ from training "babbles": it never
emits the end-of-turn it learned, or emits it where Ollama does not stop. The check
loads the quantized GGUF with llama.cpp (what Ollama runs), renders a question from the
training data with the build's chat template (byte-identical to the Ollama TEMPLATE, see
tests/test_template_identity.py), generates greedily and demands that the answer ends
with EOS or a stop string within the answer limit: the longest training answer plus a
margin, or ``max_answer_tokens``. It also measures how much quantization changed the
model against the F16 GGUF.

The check is local and runs *before* the model is registered, so a model that does not
stop never reaches Ollama (unless ``--no-verify``). After registering, the ``roundtrip``
stage asks the same question through the server's ``POST /api/chat`` when it is reachable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ftpack.core.errors import FtpackError, bad_input

DEFAULT_QUESTION = "Hello! Who are you?"
#: Answer limit when no training data says how long answers are.
DEFAULT_ANSWER_TOKENS = 256
#: The limit is the longest training answer plus a quarter of it, and at least this many tokens.
MIN_ANSWER_MARGIN = 16

Conversation = Sequence[dict[str, str]]


@dataclass(frozen=True)
class AnswerLimit:
    """How many tokens an answer may take, and why (named in "did not stop")."""

    tokens: int
    why: str


@dataclass
class SmokeResult:
    """One greedy answer and how generation ended."""

    prompt: str
    answer: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    tokens: int
    limit: AnswerLimit
    stop: list[str] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        return self.finish_reason == "stop"


@dataclass
class VerifyReport:
    """What `ftpack verify` and the verify stage found."""

    gguf: str
    template: str
    question: str
    answer: str
    finish_reason: str
    answer_tokens: int
    max_answer_tokens: int
    limit_reason: str
    stopped: bool
    stop: list[str] = field(default_factory=list)  # the stop strings generation used
    fidelity: dict[str, Any] | None = None  # mean/p99 KL divergence, perplexities, ratio, top-1 agreement
    fidelity_texts: str | None = None  # what fidelity was measured on
    fidelity_note: str | None = None  # why fidelity was not measured, or what it warns about

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the smoke test ----------------------------------------------------------------------------

def answer_limit(llm, conversations: Sequence[Conversation], *, max_answer_tokens: int | None = None) -> AnswerLimit:
    """``max_answer_tokens`` when given; else the longest training answer (in the model's own
    tokens) plus a margin, so a model that learned to stop has room and one that did not is caught."""
    from ftpack.inference.runtime import count_tokens

    if max_answer_tokens is not None:
        return AnswerLimit(int(max_answer_tokens), f"max_answer_tokens = {int(max_answer_tokens)}")
    longest = max((count_tokens(llm, m["content"]) for conv in conversations for m in conv
                   if m.get("role") == "assistant"), default=0)
    if longest == 0:
        return AnswerLimit(DEFAULT_ANSWER_TOKENS, f"the default {DEFAULT_ANSWER_TOKENS} (no training answers to "
                                                  "measure)")
    margin = max(MIN_ANSWER_MARGIN, longest // 4)
    return AnswerLimit(longest + margin, f"the longest training answer, {longest} tokens, + {margin}")


def smoke_test(llm, messages: Conversation, *, template_name: str, limit: AnswerLimit | int,
               stop: Sequence[str] | None = None) -> SmokeResult:
    """Greedy answer to ``messages`` (ending with a user turn) with the build's template and stops."""
    from ftpack.inference.runtime import count_tokens, stream_answer
    from ftpack.training.templates import load_template

    tpl = load_template(template_name)
    if isinstance(limit, int):
        limit = AnswerLimit(limit, f"max_answer_tokens = {limit}")
    stop = list(stop if stop is not None else tpl.stop)
    prompt = tpl.inference_prompt(messages)
    room = llm.n_ctx() - count_tokens(llm, prompt, add_bos=True)
    if limit.tokens > room:
        if room < 1:
            raise bad_input(f"The question ({llm.n_ctx() - room} tokens) does not fit the {llm.n_ctx()}-token "
                            "context.", "Use a shorter first question in the data, or a larger --max-seq-length.")
        limit = AnswerLimit(room, f"{limit.why}, cut to the {room} tokens left in the {llm.n_ctx()}-token context")
    pieces, reason = [], None
    for piece, finish in stream_answer(llm, prompt, stop=stop, max_tokens=limit.tokens):
        pieces.append(piece)
        reason = finish or reason
    answer, reason = "".join(pieces), reason or "length"
    # a cut answer took the whole limit (re-tokenizing its text can count differently)
    tokens = limit.tokens if reason == "length" else count_tokens(llm, answer)
    return SmokeResult(prompt, answer, reason, tokens, limit, stop)


def require_stop(result: SmokeResult, template_name: str) -> None:
    """Fail with an explanation when the model ran into the answer limit instead of stopping."""
    if result.stopped:
        return
    tail = result.answer[-200:]
    raise FtpackError(
        f"The model did not stop: it generated {result.limit.tokens} tokens (the answer limit: "
        f"{result.limit.why}) without an end-of-sequence token or any stop string of the {template_name!r} "
        f"template ({', '.join(map(repr, result.stop))}). Ollama would let it ramble the same way. "
        f"Last output: {tail!r}",
        "Train with the same chat template you serve (the build records it), make sure training computed "
        "the loss on the end-of-turn token (assistant-only loss), or train longer. If answers are meant to "
        "be longer, raise --max-answer-tokens; --no-verify registers the model without this check.")


def sample_question(conversations: Sequence[Conversation], system: str | None = None) -> list[dict[str, str]]:
    """The leading system turn(s) and first user turn of the first conversation (else a greeting),
    with ``system`` in front when the conversation has none (what Ollama's SYSTEM adds)."""
    messages: list[dict[str, str]] = []
    for conv in conversations:
        for m in conv:
            messages.append({"role": m["role"], "content": m["content"]})
            if m["role"] == "user":
                break
        if messages and messages[-1]["role"] == "user":
            break
        messages = []
    messages = messages or [{"role": "user", "content": DEFAULT_QUESTION}]
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    return messages


# -- fidelity -----------------------------------------------------------------------------------

def quantization_fidelity(quantized: Path, reference: Path | None, texts: Sequence[str],
                          reporter) -> tuple[dict[str, Any] | None, str | None]:
    """(fidelity figures, note): measured against the F16 reference, or why not; warns when
    quantization hurt the model noticeably."""
    from ftpack.inference.fidelity import FIXED_TEXT, WARN_AGREEMENT, WARN_RATIO, measure_fidelity

    if reference is None or not Path(reference).is_file():
        note = ("skipped: the F16 reference GGUF " + (f"{reference} " if reference else "")
                + "is missing, so quantization fidelity was not measured")
        reporter.warn(f"Fidelity {note}.", "Rebuild it with `--force convert` to include the measure.")
        return None, note
    if Path(reference).resolve() == Path(quantized).resolve():
        return None, "skipped: the model was not quantized"
    fid = measure_fidelity(Path(reference), Path(quantized), list(texts) or [FIXED_TEXT], n_ctx=512)
    reporter.info(f"fidelity: mean KL divergence {fid['mean_kld']:.4f} (p99 {fid['p99_kld']:.4f}), perplexity "
                  f"{fid['perplexity_reference']} -> {fid['perplexity_quantized']} (x{fid['perplexity_ratio']}), "
                  f"top-1 agreement {fid['top1_agreement']:.1%}")
    problems = []
    if fid["perplexity_ratio"] > WARN_RATIO:
        problems.append(f"raised perplexity by x{fid['perplexity_ratio']} (more than x{WARN_RATIO})")
    if fid["top1_agreement"] < WARN_AGREEMENT:
        problems.append(f"changed the most likely next token {1 - fid['top1_agreement']:.0%} of the time "
                        f"(top-1 agreement {fid['top1_agreement']:.1%}, below {WARN_AGREEMENT:.0%})")
    if not problems:
        return fid, None
    message = "Quantization " + " and ".join(problems) + "."
    reporter.warn(message, "Try a larger quant type (--quant Q5_K_M or Q8_0).")
    return fid, "warning: " + message


def verify_gguf(gguf: Path, *, template_name: str, conversations: Sequence[Conversation] = (),
                system: str | None = None, stop: Sequence[str] | None = None,
                max_answer_tokens: int | None = None, reference: Path | None = None, measure_fidelity: bool = True,
                n_ctx: int = 2048, fidelity_texts: tuple[Sequence[str], str] | None = None,
                lora: Path | None = None, reporter=None) -> VerifyReport:
    """Ask one training question with the build's template, and measure fidelity when a reference
    is given, on ``fidelity_texts`` (texts, where from; a build passes its eval split:
    :func:`ftpack.inference.fidelity.heldout_texts`), else on the first conversations.
    Never raises for a model that does not stop: see :func:`require_stop`. ``lora``: a llama.cpp
    LoRA adapter GGUF applied to ``gguf`` (an adapter build, run as Ollama runs an ADAPTER)."""
    from ftpack.core.report import get_reporter
    from ftpack.inference.runtime import open_llama
    from ftpack.training.templates import load_template

    r = reporter or get_reporter()
    tpl = load_template(template_name)
    messages = sample_question(conversations, system if system is not None else (tpl.default_system or None))
    with open_llama(gguf, n_ctx=n_ctx, lora=lora) as llm:
        limit = answer_limit(llm, conversations, max_answer_tokens=max_answer_tokens)
        result = smoke_test(llm, messages, template_name=tpl.name, limit=limit, stop=stop)
    r.info(f"Q: {messages[-1]['content']}")
    r.info(f"A: {result.answer.strip()}")
    r.info(f"{'stopped' if result.stopped else 'did NOT stop'} after {result.tokens} tokens "
           f"(limit {limit.tokens}: {limit.why})")
    report = VerifyReport(gguf=str(gguf) + (f" + {lora}" if lora else ""), template=tpl.name,
                          question=messages[-1]["content"], answer=result.answer,
                          finish_reason=result.finish_reason, answer_tokens=result.tokens,
                          max_answer_tokens=limit.tokens, limit_reason=limit.why, stopped=result.stopped,
                          stop=result.stop)
    if result.stopped and measure_fidelity:
        texts, report.fidelity_texts = fidelity_texts or (
            [tpl.training_text(conv) for conv in list(conversations)[:32]], "the first conversations of the data")
        report.fidelity, report.fidelity_note = quantization_fidelity(gguf, reference, texts, r)
    return report


# -- the pipeline stages --------------------------------------------------------------------------

def build_conversations(layout) -> list[Conversation]:
    """The build's normalised conversations, eval split first (questions the model did not train on)."""
    from ftpack.training.data import read_messages_jsonl

    return [conv for p in (layout.eval_file, layout.train_file) if p.is_file() for conv in read_messages_jsonl(p)]


def extra_stops(parameters: Sequence[str] | None) -> list[str]:
    """User ``--param stop=...`` values (the Modelfile adds them after the template's stops)."""
    from ftpack.ollama.modelfile import parse_parameter_args

    return [v for k, v in parse_parameter_args(parameters or ()) if k == "stop"]


def run_verify_stage(ctx):
    """Stage `verify` (before modelfile and register): local llama.cpp only, never Ollama.

    Reads: ``ctx.upstream_path("quantize")`` (the GGUF), the build's chat template
    (:func:`ftpack.training.templates.template_of_build`), ``data/eval.jsonl`` and
    ``data/train.jsonl`` (the sample question, the answer limit, fidelity texts),
    ``ctx.upstream_path("convert")`` (F16 reference for fidelity), config ``system``,
    ``parameters`` (extra stops), ``max_answer_tokens``, ``max_seq_length``. Writes
    ``verify/verify.json``; fails (FtpackError) when the model does not stop within the
    answer limit, so the model is not registered.
    """
    from ftpack.core.atomic import write_json
    from ftpack.core.runner import StageResult
    from ftpack.inference.fidelity import heldout_texts
    from ftpack.training.templates import template_of_build

    cfg = ctx.config
    layout = ctx.layout
    tpl = template_of_build(layout)
    gguf, lora, reference, note = _verified_files(ctx)
    n_ctx = max(512, min(int(cfg.max_seq_length or 2048), 4096))
    report = verify_gguf(gguf, template_name=tpl.name, lora=lora, measure_fidelity=lora is None,
                         conversations=build_conversations(layout), system=cfg.system,
                         stop=list(tpl.stop) + [s for s in extra_stops(cfg.parameters) if s not in tpl.stop],
                         max_answer_tokens=cfg.max_answer_tokens, reference=reference,
                         n_ctx=n_ctx, fidelity_texts=heldout_texts(layout, tpl), reporter=ctx.reporter)
    report.fidelity_note = report.fidelity_note or note
    out = ctx.stage_dir / "verify.json"
    metrics = report.as_dict()
    metrics.pop("gguf")
    if report.fidelity:
        metrics.update(report.fidelity)  # flat figures for the model card
    write_json(out, metrics)
    require_stop(_as_smoke(report), tpl.name)
    return StageResult(outputs=[out], main_output=out, metrics=metrics)


def _verified_files(ctx) -> tuple[Path, Path | None, Path | None, str | None]:
    """(GGUF, LoRA adapter GGUF or None, F16 reference or None, why fidelity is not measured) of a build.

    A merged build runs its quantized GGUF against the F16 one; an adapter build (``--ship
    adapter``) runs the base GGUF with the adapter, as Ollama will: ftpack quantized
    nothing of the fine-tune, so there is no quantization fidelity to measure.
    """
    from ftpack.gguf.ship import base_of, ships_adapter

    if ships_adapter(ctx.config):
        base = base_of(ctx)
        return (base.gguf, ctx.upstream_path("adapter"), None,
                f"not measured: an adapter build ships the base GGUF ({base.file_type}) as it is, with the "
                "adapter on top, so ftpack quantized nothing of the fine-tune")
    try:
        reference = ctx.upstream_path("convert")
    except FtpackError:
        reference = None
    return ctx.upstream_path("quantize"), None, reference, None


def _as_smoke(report: VerifyReport) -> SmokeResult:
    return SmokeResult("", report.answer, report.finish_reason, report.answer_tokens,
                       AnswerLimit(report.max_answer_tokens, report.limit_reason), report.stop)


def run_roundtrip_stage(ctx):
    """Stage `roundtrip` (after register): one chat through the Ollama server that registered the model.

    Reads ``ctx.upstream("register").metrics`` (mode, name): registered offline, it records
    "skipped: offline"; through a server, it asks the verify stage's question with
    ``POST /api/chat`` when the server answers (else records why not, with a warning).
    Writes ``roundtrip/roundtrip.json``. Fails when the server answers with an empty message,
    when it did not end the answer itself (``done_reason`` must be "stop": the model stopped
    on a stop string or its end-of-turn token), or when the answer differs from verify's
    greedy answer to the same question: both are llama.cpp on the same GGUF, so a different
    answer means Ollama served a different prompt than the one verified (and trained).
    """
    from ftpack.core.atomic import write_json
    from ftpack.core.runner import StageResult
    from ftpack.ollama.probe import probe_server

    cfg = ctx.config
    r = ctx.reporter
    reg = ctx.upstream("register").metrics
    metrics: dict[str, Any] = {"mode": reg.get("mode"), "name": reg.get("name")}
    if reg.get("mode") != "server":
        metrics["roundtrip"] = f"skipped: {reg.get('mode') or 'not registered through a server'}"
        r.info(f"round trip through Ollama {metrics['roundtrip']} (registered in the model store directly)")
    else:
        probe = probe_server(cfg.host)
        if not probe.reachable:
            metrics["roundtrip"] = f"skipped: server not reachable at {probe.host}"
            r.warn(f"The Ollama server is not reachable at {probe.host} now; skipped the /api/chat check.",
                   "Start it and run the build again to include it.")
        else:
            verified = ctx.manifest.stages.get("verify")
            limit = verified.metrics.get("max_answer_tokens") if verified and verified.status == "done" else None
            # no system turn added here: the Modelfile's SYSTEM is the server's to add
            messages = sample_question(build_conversations(ctx.layout))
            answer, done = chat_via_server(reg["name"], messages, host=probe.host,
                                           max_tokens=int(limit or DEFAULT_ANSWER_TOKENS))
            metrics.update(roundtrip="done", question=messages[-1]["content"], ollama_answer=answer,
                           done_reason=done)
            r.info(f"Ollama /api/chat ({reg['name']}): {answer.strip()}")
            if not answer.strip():
                raise FtpackError(f"Ollama answered {reg['name']} with an empty message.",
                                  "Check the model's TEMPLATE with `ollama show --template`.")
            if done != "stop":
                raise FtpackError(f"Ollama did not see {reg['name']} end its answer (done_reason {done!r}): it ran to "
                                  "the token limit.", "Check the model's stop parameters with `ollama show`.")
            said = verified.metrics.get("answer") if verified and verified.status == "done" else None
            if said is not None and said.strip() != answer.strip():
                raise FtpackError(f"Ollama's answer for {reg['name']} differs from verify's greedy answer to the same "
                                  f"question:\n  verify: {said.strip()[:200]!r}\n  Ollama: {answer.strip()[:200]!r}",
                                  "Ollama served another prompt than the one verified and trained: compare "
                                  "`ollama show --modelfile` with build.json's modelfile record (prompt_path).")
    out = ctx.stage_dir / "roundtrip.json"
    write_json(out, metrics)
    return StageResult(outputs=[out], main_output=out, metrics=metrics)


def chat_via_server(name: str, messages: Conversation, *, host: str | None = None, max_tokens: int = 128
                    ) -> tuple[str, str | None]:
    """The registered model's answer through POST /api/chat (greedy, bounded), and its done_reason."""
    from ftpack.ollama.api import OllamaServer

    with OllamaServer(host) as server:
        return server.chat_answer(name, list(messages), options={"temperature": 0, "num_predict": max_tokens})


# -- `ftpack verify BUILD|GGUF` ----------------------------------------------------------------------

def verify_target(path: str | Path, *, max_answer_tokens: int | None = None, template_name: str | None = None,
                  reference: str | Path | None = None, measure_fidelity: bool = True, reporter=None) -> VerifyReport:
    """Verify a build dir (its quantized GGUF, template, data, F16 reference and settings) or a
    plain GGUF (template from ``template_name`` or the GGUF's own chat template; fidelity only
    against an explicit ``reference``). Raises FtpackError when the model does not stop."""
    from ftpack.core.layout import BuildLayout
    from ftpack.core.manifest import Manifest
    from ftpack.inference.chat import resolve_target

    path = Path(path)
    target = resolve_target(path, template_name=template_name)
    conversations: list[Conversation] = []
    settings: dict[str, Any] = {}
    fidelity_texts = None
    if path.is_dir():
        from ftpack.inference.fidelity import heldout_texts

        layout = BuildLayout(path)
        manifest = Manifest.load(layout.root)
        settings = manifest.config
        conversations = build_conversations(layout)
        fidelity_texts = heldout_texts(layout)  # rendered as trained: the build's own template
        convert = manifest.stages.get("convert")
        if reference is None and convert is not None and convert.status == "done" and convert.main_output:
            reference = layout.root / convert.main_output
        if max_answer_tokens is None:
            max_answer_tokens = settings.get("max_answer_tokens")
    elif reference is not None and not Path(reference).is_file():
        raise bad_input(f"Reference GGUF not found: {reference}")
    n_ctx = max(512, min(int(settings.get("max_seq_length") or target.options.get("num_ctx") or 2048), 4096))
    report = verify_gguf(target.gguf, template_name=target.template_name, conversations=conversations,
                         lora=getattr(target, "adapter", None),
                         system=target.system, stop=target.stop, max_answer_tokens=max_answer_tokens,
                         reference=Path(reference) if reference else None,
                         measure_fidelity=measure_fidelity and getattr(target, "adapter", None) is None
                         and (reference is not None or path.is_dir()),
                         n_ctx=n_ctx, fidelity_texts=fidelity_texts, reporter=reporter)
    require_stop(_as_smoke(report), target.template_name)
    return report
