"""Training on an Ollama model's own chat format: its TEMPLATE, SYSTEM and stops.

A model pulled into Ollama will be run with the TEMPLATE, SYSTEM and stop parameters
its manifest carries, so training must render exactly that text. Two ways, in order:

1. **One of ftpack's formats.** When the Ollama TEMPLATE (with the model's SYSTEM) renders
   the probe conversations byte-identically to a ``templates/`` entry's training template,
   that entry is used — the same identity the template tests prove for ftpack's own
   formats — and everything downstream is the usual path.
2. **The Ollama TEMPLATE itself.** Otherwise a :class:`~ftpack.training.templates.ChatTemplate`
   with ``renderer = "ollama"`` is built from the manifest: training text is the TEMPLATE
   rendered by :mod:`ftpack.ollama.gotemplate` (Go's text/template semantics, proven
   byte-identical to Go in tests/test_gotemplate.py) exactly as Ollama's ``/api/chat``
   renders a conversation — the model's SYSTEM put first when a conversation has none.

How the loss is marked (:func:`training_sequences`): for each assistant turn, ``P`` is the
prompt Ollama renders for the conversation up to that turn (ending with the user message)
and ``C`` the rendering with the answer and the next user message (a probe after the last
answer). What follows ``P`` in ``C``, up to and including the first stop string or
end-of-generation token after the answer, is what the model must produce: it is the
trained span. When every ``P`` continues the previous turn's text (the usual case), a
conversation is one training sequence with one span per answer; a template that renders
earlier turns differently once the conversation goes on (e.g. Mistral's, which puts the
system prompt into the last user turn) gets one sequence per answer, each with exactly the
prompt Ollama sends at that turn. Sequences are tokenized here (BOS as the runtime adds it)
and handed to TRL pre-tokenized with their assistant masks.

If neither way works — Ollama's built-in (Go-coded) renderers, a model without TEMPLATE,
a template that does not render an answer verbatim or gives it no end — the build stops
before any work with the reason, suggesting ``--template``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from ftpack.core.errors import bad_input

#: ChatTemplate.renderer of a format rendered from an Ollama TEMPLATE.
RENDERER = "ollama"
#: The user message after the last answer (so the text after it shows how a turn ends).
_NEXT_USER = "Next question."
#: Conversations on which an Ollama TEMPLATE is compared with ftpack's formats and probed.
_PROBE_SYSTEM = "You are a helpful assistant.\nAnswer briefly."
_PROBES: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "What is the capital of France?"},),
    ({"role": "system", "content": _PROBE_SYSTEM}, {"role": "user", "content": "What is the capital of France?"}),
    ({"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."},
     {"role": "user", "content": "  And of Italy?  Use {{ braces }}, <tags> & \"quotes\".\n"},
     {"role": "assistant", "content": "Rome — ünïcødé ✓\n\nTwo paragraphs."}, {"role": "user", "content": "Thanks!"}),
    ({"role": "system", "content": _PROBE_SYSTEM}, {"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}),
)

Message = Mapping[str, str]


def _refuse(ob: Any, why: str):
    return bad_input(f"Cannot train on {ob.reference}'s chat format: {why}.",
                     "Pass --template NAME (see `ftpack templates`) to train and serve it with one of ftpack's "
                     "formats instead.")


@lru_cache(maxsize=64)
def _parsed(text: str):
    from ftpack.ollama.gotemplate import parse_ollama_template

    return parse_ollama_template(text)


def ollama_messages(tpl: Any, messages: Sequence[Message]) -> list[dict[str, str]]:
    """The messages Ollama renders for /api/chat: the model's SYSTEM first when the
    conversation has no system message (routes.go ChatHandler)."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    if tpl.default_system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": tpl.default_system})
    return msgs


def _render(tpl: Any, msgs: Sequence[Message]) -> str:
    return _parsed(tpl.ollama_template).render(msgs)


def ollama_prompt(tpl: Any, messages: Sequence[Message]) -> str:
    """The prompt Ollama renders for ``messages`` (ending with a user turn), without BOS."""
    return _render(tpl, ollama_messages(tpl, messages))


def _markers(tpl: Any, extra: Sequence[str] = ()) -> tuple[str, ...]:
    return tuple(m for m in dict.fromkeys((*tpl.stop, tpl.end_of_turn, *extra)) if m)


class _NoSpan(ValueError):
    """A turn whose answer the template does not render (or never ends)."""


def _turn(tpl: Any, msgs: list[dict[str, str]], k: int, markers: Sequence[str]) -> tuple[str, str, int]:
    """(prompt P, what the model must produce after P, index in it where the answer ends)
    for the assistant message ``msgs[k]``."""
    prompt = _render(tpl, msgs[:k])
    nxt = next((i for i in range(k + 1, len(msgs)) if msgs[i]["role"] == "assistant"), None)
    after = msgs[:nxt] if nxt is not None else msgs[:k + 1] + [{"role": "user", "content": _NEXT_USER}]
    full = _render(tpl, after)
    answer = msgs[k]["content"]
    if full.startswith(prompt):
        generated = full[len(prompt):]
    else:  # the context is rendered differently once the turn exists: align on the last user message
        generated = _after_prompt(prompt, full, msgs[k - 1]["content"] if k else "", answer)
    start = generated.find(answer)
    if start < 0:
        raise _NoSpan(f"the answer {answer[:40]!r} does not appear verbatim after the prompt")
    end = start + len(answer)
    cuts = [generated.find(m, end) + len(m) for m in markers if generated.find(m, end) >= 0]
    if not cuts:
        raise _NoSpan("no stop string or end-of-generation token follows the answer, so the model could not "
                      "learn where to stop")
    cut = min(cuts)
    early = [m for m in markers if 0 <= generated.find(m) and generated.find(m) + len(m) <= start]
    if early:
        raise _NoSpan(f"the stop string {early[0]!r} comes before the answer: Ollama would stop at once")
    return prompt, generated[:cut], end


def _after_prompt(prompt: str, full: str, user: str, answer: str) -> str:
    """What follows ``prompt``'s last user message in ``full`` (where the same closing text
    is found after that message): the generation when the earlier context differs."""
    pu = prompt.rfind(user) if user else -1
    if pu < 0:
        raise _NoSpan("the prompt does not contain the last user message verbatim")
    closing = prompt[pu + len(user):]
    pos = full.find(user)
    while pos >= 0:
        rest = full[pos + len(user):]
        if rest.startswith(closing) and answer in rest:
            return rest[len(closing):]
        pos = full.find(user, pos + 1)
    raise _NoSpan("the template renders the conversation so differently with the answer that the answer's "
                  "place cannot be found")


def training_sequences(tpl: Any, messages: Sequence[Message], *, extra_markers: Sequence[str] = ()
                       ) -> list[tuple[str, list[tuple[int, int]]]]:
    """[(text without BOS, [(start, end) of each trained span])] for one conversation."""
    msgs = ollama_messages(tpl, messages)
    markers = _markers(tpl, extra_markers)
    turns = [(k, *_turn(tpl, msgs, k, markers)) for k, m in enumerate(msgs) if m["role"] == "assistant"]
    if not turns:
        return [(_render(tpl, msgs), [])]
    text, spans, consistent = "", [], True
    for k, prompt, generated, _ in turns:
        if not prompt.startswith(text):
            consistent = False
            break
        spans.append((len(prompt), len(prompt) + len(generated)))
        text = prompt + generated
    if consistent:
        return [(text, spans)]
    return [(prompt + generated, [(len(prompt), len(prompt) + len(generated))]) for _, prompt, generated, _ in turns]


def conversation_text(tpl: Any, messages: Sequence[Message]) -> str:
    """The training text of a conversation (its last sequence: the whole conversation when
    the template renders it as one)."""
    return training_sequences(tpl, messages)[-1][0]


def encode_conversation(tpl: Any, tokenizer: Any, messages: Sequence[Message], *, masks: bool = True
                        ) -> list[dict[str, list[int]]]:
    """Token ids (BOS first when the tokenizer adds one, as llama.cpp does from the GGUF) and,
    with ``masks``, the assistant mask (1 on every token of a trained span) per sequence."""
    from ftpack.training.templates import tokenizer_adds_bos

    bos = [tokenizer.bos_token_id] if tokenizer_adds_bos(tokenizer) else []
    rows = []
    for text, spans in training_sequences(tpl, messages):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = bos + list(enc["input_ids"])
        row: dict[str, list[int]] = {"input_ids": ids}
        if masks:
            inside = [int(any(a < e and b > s for s, e in spans)) for a, b in enc["offset_mapping"]]
            row["assistant_masks"] = [0] * len(bos) + inside
        rows.append(row)
    return rows


def pretokenized_rows(tpl: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]], *, train_on_prompts: bool
                      ) -> list[dict[str, list[int]]]:
    """``[{"messages": …}]`` → TRL's pre-tokenized rows (``input_ids`` + ``assistant_masks``)."""
    return [seq for row in rows for seq in encode_conversation(tpl, tokenizer, row["messages"],
                                                                masks=not train_on_prompts)]


# -- the format of an Ollama model --------------------------------------------------------------

def eog_texts(gguf: Path) -> tuple[str, ...]:
    """The texts of the tokens llama.cpp ends generation on (EOS, EOT, …) for this GGUF."""
    import llama_cpp

    from ftpack.core.quiet import quiet_libraries
    from ftpack.inference.runtime import open_llama

    with quiet_libraries(stderr=True), open_llama(Path(gguf), vocab_only=True) as llm:
        vocab = llm._model.vocab
        ids = [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        return tuple(dict.fromkeys(t for t in (llm.detokenize([i], special=True).decode("utf-8", "replace")
                                               for i in ids) if t))


def ollama_chat_template(ob: Any, *, eog: Sequence[str] | None = None) -> Any:
    """The model's own format as a ChatTemplate rendered by Ollama's TEMPLATE; refuses (user
    error with the reason) when that cannot be trained faithfully."""
    from ftpack.ollama.gotemplate import GoTemplateError, UnsupportedTemplate
    from ftpack.training.templates import ChatTemplate, remember_template

    if ob.renderer:
        raise _refuse(ob, f"Ollama prompts it with its built-in {ob.renderer!r} renderer (Go code inside Ollama), "
                          "not with a TEMPLATE ftpack can reproduce")
    if not ob.template or not ob.template.strip():
        raise _refuse(ob, "it has no TEMPLATE, so Ollama sends prompts as they are and the model has no chat "
                          "format to train")
    try:
        parsed = _parsed(ob.template)
    except GoTemplateError as exc:
        raise _refuse(ob, f"its TEMPLATE cannot be parsed ({exc})") from None
    eog = tuple(eog if eog is not None else eog_texts(ob.model_blob))
    draft = ChatTemplate(name=ob.reference, description=f"Ollama TEMPLATE of {ob.display} ({ob.model_digest[:19]}…)",
                         chat_template="", ollama_template=ob.template, stop=ob.stop, end_of_turn="",
                         default_system=ob.system, renderer=RENDERER, aliases=(), fingerprint=(), priority=100)
    del parsed
    msgs = ollama_messages(draft, _PROBES[2])
    try:
        _, generated, end = _turn(draft, msgs, next(i for i, m in enumerate(msgs) if m["role"] == "assistant"),
                                  _markers(draft, eog))
        for probe in _PROBES:
            _render(draft, ollama_messages(draft, probe))
    except UnsupportedTemplate as exc:
        raise _refuse(ob, str(exc)) from None
    except GoTemplateError as exc:
        raise _refuse(ob, f"its TEMPLATE fails on a plain chat, as it would in Ollama ({exc})") from None
    except _NoSpan as exc:
        raise _refuse(ob, str(exc)) from None
    import dataclasses
    import hashlib

    end_of_turn = generated[end:].strip() or generated[end:]
    tpl = dataclasses.replace(draft, end_of_turn=end_of_turn)
    content = json.dumps([tpl.ollama_template, tpl.default_system, list(tpl.stop), tpl.end_of_turn])
    name = f"{ob.reference}@{hashlib.sha256(content.encode()).hexdigest()[:8]}"  # one name, one format
    return remember_template(dataclasses.replace(tpl, name=name))


def registry_match(own: Any, folder: Path | None = None) -> Any:
    """The ``templates/`` format whose training text equals ``own``'s Ollama rendering on every
    probe conversation (prompts and answers, with the model's SYSTEM), or None."""
    from ftpack.training.templates import list_templates

    want = [_render(own, ollama_messages(own, p)) for p in _PROBES]
    for tpl in sorted(list_templates(folder), key=lambda t: (t.priority, t.name)):
        try:
            if all(tpl.inference_prompt(list(p)) == w for p, w in zip(_PROBES, want)):
                return tpl
        except Exception:  # noqa: BLE001 - a format that cannot render a probe is no match
            continue
    return None


def template_for_ollama_base(ob: Any, *, explicit: str | None = None, reporter: Any = None,
                             eog: Sequence[str] | None = None) -> Any:
    """The chat format a build on ``ob`` trains with: ``--template`` when given, else ftpack's
    format when the Ollama TEMPLATE renders identically, else the Ollama TEMPLATE itself."""
    from ftpack.training.templates import load_template

    if explicit:
        tpl = load_template(explicit)
        if reporter is not None:
            reporter.info(f"Chat template {tpl.name}: as asked (--template); the model is trained and served with it, "
                          f"not with {ob.display}'s own TEMPLATE.")
        return tpl
    own = ollama_chat_template(ob, eog=eog)
    match = registry_match(own)
    if match is not None:
        if reporter is not None:
            reporter.info(f"Chat template {match.name}: {ob.display}'s own TEMPLATE renders every probe conversation "
                          f"byte-identically to ftpack's {match.name}.")
        return match
    if reporter is not None:
        stops = ", ".join(repr(s) for s in own.stop) or "none (end-of-generation tokens only)"
        reporter.info(f"Chat template: {ob.display}'s own Ollama TEMPLATE (not one of ftpack's formats), rendered as "
                      f"Ollama renders it; an answer ends with {own.end_of_turn!r}; stops {stops}.")
    return own
