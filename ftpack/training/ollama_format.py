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

3. **Ollama's built-in RENDERER.** A model whose config names a renderer (the newest
   families: qwen3.5, gemma4, laguna, nemotron-3-nano) is prompted by that Go code and by
   nothing else. :mod:`ftpack.ollama.renderers` reproduces it (proven against Ollama's own
   outputs); the ChatTemplate carries the renderer, the parser and the ``think`` value the
   model is served with (on, when the parser can think). Renderers are not prefix-stable
   (qwen3.5 drops the think block of earlier answers), so each answer is trained on its own
   sequence: the prompt Ollama serves for that turn, then what the renderer writes for the
   model's own answer (the text after the longest common prefix of the prompt and the
   rendering that ends with the answer), then the end of turn.

4. **The GGUF's own Jinja template.** A model with neither TEMPLATE nor renderer is served
   by llama-server from its GGUF's ``tokenizer.chat_template``; training renders that
   template per turn as llama-server does, and the data stage checks llama.cpp's own engine
   renders every served prompt alike (:func:`check_llama_cpp_renders_alike`).

If none of these works — a renderer ftpack does not reproduce, a GGUF without a chat
template or end-of-sequence token, a template that does not render an answer verbatim or
gives it no end — the build stops before any work with the reason, suggesting ``--template``.
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
    if getattr(tpl, "gguf_jinja", ()):
        return _render_gguf_jinja(tpl, msgs)
    if getattr(tpl, "ollama_renderer", ""):
        from ftpack.ollama.renderers import render

        text = render(tpl.ollama_renderer, msgs, tpl.think)
        # gemma4's textual <bos> never reaches the tokenizer: Ollama removes it, the tokenizer
        # adds BOS (llm/llama_server.go@f427fa0 completionPrompt; tokenizerAddsBOS is forced for gemma4)
        return text[len("<bos>"):] if tpl.ollama_renderer.startswith("gemma4") and text.startswith("<bos>") else text
    return _parsed(tpl.ollama_template).render(msgs)


def ollama_prompt(tpl: Any, messages: Sequence[Message]) -> str:
    """The prompt Ollama renders for ``messages`` (ending with a user turn), without BOS."""
    return _render(tpl, ollama_messages(tpl, messages))


def _markers(tpl: Any, extra: Sequence[str] = ()) -> tuple[str, ...]:
    return tuple(m for m in dict.fromkeys((*tpl.stop, tpl.end_of_turn, *extra)) if m)


class _NoSpan(ValueError):
    """A turn whose answer the template does not render (or never ends)."""


def _render_gguf_jinja(tpl: Any, msgs: Sequence[Message], *, engine: str = "transformers") -> str:
    """The text llama-server renders from the GGUF's Jinja template for /v1/chat/completions:
    the generation prompt after a user turn, ``enable_thinking`` as Ollama sends it, a leading
    BOS text cut when the vocabulary adds BOS (common/chat.cpp). ``engine``: transformers'
    Jinja (training) or llama.cpp's own (the check, ftpack.inference.llama_jinja)."""
    template, bos, eos, add_bos = tpl.gguf_jinja
    gen = not msgs or msgs[-1]["role"] != "assistant"
    thinking = bool(tpl.think)
    if engine == "llama.cpp":
        from ftpack.inference.llama_jinja import render_with_llama_cpp

        return render_with_llama_cpp(template, msgs, add_generation_prompt=gen, bos_token=bos, eos_token=eos,
                                     enable_thinking=thinking, add_bos=add_bos)
    from ftpack.training.templates import render_chat

    text = render_chat(template, [dict(m) for m in msgs], add_generation_prompt=gen, bos_token=bos, eos_token=eos,
                       enable_thinking=thinking)
    return text[len(bos):] if add_bos and bos and text.startswith(bos) else text


def _renderer_turn(tpl: Any, msgs: list[dict[str, str]], k: int, markers: Sequence[str]) -> tuple[str, str, int]:
    """:func:`_turn` for a renderer or a GGUF Jinja template: P is what Ollama serves before
    answer k; the model's part
    is what the rendering ending with that answer adds after their common prefix, cut after
    the first end marker, or closed with the renderer's end of turn (a final answer is a
    prefill there, left open)."""
    import os

    from ftpack.ollama.renderers import _trim

    prompt = _render(tpl, msgs[:k])
    final = _render(tpl, msgs[:k + 1])
    common = os.path.commonprefix([prompt, final])
    if common != prompt:  # the prompt ends in framing the answer's rendering lacks (an opened or an
        # empty think block): the answer starts after the last tag or line both share, never mid-tag
        common = common[:max(common.rfind(">"), common.rfind("\n")) + 1]
    generated = final[len(common):]
    answer = _trim(msgs[k]["content"])
    start = generated.find(answer)
    if start < 0:
        raise _NoSpan(f"the answer {answer[:40]!r} does not appear verbatim in the renderer's text")
    end = start + len(answer)
    cuts = [generated.find(m, end) + len(m) for m in markers if generated.find(m, end) >= 0]
    generated = generated[:min(cuts)] if cuts else generated[:end] + _closing(tpl, msgs, k, answer)
    return prompt, generated, end


def _closing(tpl: Any, msgs: list[dict[str, str]], k: int, answer: str) -> str:
    """How the renderer closes answer k once the conversation goes on: the text after the
    answer up to its end of turn (``\n</assistant>`` for laguna, ``<|im_end|>`` for qwen3.5)."""
    closed = _render(tpl, [*msgs[:k + 1], {"role": "user", "content": _NEXT_USER}])
    at = closed.rfind(answer, 0, closed.rfind(_NEXT_USER))
    after = closed[at + len(answer):] if at >= 0 else ""
    j = after.find(tpl.end_of_turn)
    return after[:j + len(tpl.end_of_turn)] if j >= 0 else tpl.end_of_turn


def _turn(tpl: Any, msgs: list[dict[str, str]], k: int, markers: Sequence[str]) -> tuple[str, str, int]:
    """(prompt P, what the model must produce after P, index in it where the answer ends)
    for the assistant message ``msgs[k]``."""
    if getattr(tpl, "ollama_renderer", "") or getattr(tpl, "gguf_jinja", ()):
        return _renderer_turn(tpl, msgs, k, markers)
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


def training_sequences(tpl: Any, messages: Sequence[Message], *, extra_markers: Sequence[str] = (),
                       split: bool = False) -> list[tuple[str, list[tuple[int, int]]]]:
    """[(text without BOS, [(start, end) of each trained span])] for one conversation: one
    sequence when every answer's prompt continues the text before it, else (or with
    ``split``) one per answer. The text before each span is exactly the prompt Ollama serves
    for that answer."""
    msgs = ollama_messages(tpl, messages)
    markers = _markers(tpl, extra_markers)
    turns = [(k, *_turn(tpl, msgs, k, markers)) for k, m in enumerate(msgs) if m["role"] == "assistant"]
    if not turns:
        return [(_render(tpl, msgs), [])]
    text, spans, consistent = "", [], not split
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
    with ``masks``, the assistant mask (1 on every token of a trained span) per sequence.

    Ids are assembled per turn, as Ollama produces them: the prompt served before an answer
    is tokenized on its own (Ollama tokenizes the whole rendered prompt at every turn) and the
    answer after it, so a token never spans the boundary (``<think>`` ``\n\n`` in one string
    can be ``<think>`` ``\n`` at inference). A sequence holding several answers is kept only
    when each earlier answer's served prompt tokenizes to exactly the ids before it; otherwise
    the conversation is trained as one sequence per answer."""
    return [row for _, _, row in encoded_sequences(tpl, tokenizer, messages, masks=masks)]


def encoded_sequences(tpl: Any, tokenizer: Any, messages: Sequence[Message], *, masks: bool = True
                      ) -> list[tuple[str, list[tuple[int, int]], dict[str, list[int]]]]:
    """[(text, trained spans, row)] of :func:`encode_conversation`, with the texts the rows encode."""
    seqs = training_sequences(tpl, messages)
    rows = [_encode(tokenizer, text, spans, masks) for text, spans in seqs]
    if any(row is None for row in rows):
        seqs = training_sequences(tpl, messages, split=True)
        rows = [_encode(tokenizer, text, spans, masks, exact=False) for text, spans in seqs]
    return [(text, spans, row) for (text, spans), row in zip(seqs, rows)]  # type: ignore[misc]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _encode(tokenizer: Any, text: str, spans: Sequence[tuple[int, int]], masks: bool, *, exact: bool = True
            ) -> dict[str, list[int]] | None:
    """One sequence: tok(prompt before the last answer) + tok(last answer) + tok(rest); None
    when ``exact`` and an earlier answer's served prompt would tokenize differently."""
    from ftpack.training.templates import tokenizer_adds_bos

    bos = [tokenizer.bos_token_id] if tokenizer_adds_bos(tokenizer) else []
    if not spans:
        ids = _ids(tokenizer, text)
        return {"input_ids": bos + ids, **({"assistant_masks": [0] * (len(bos) + len(ids))} if masks else {})}
    start, end = spans[-1]
    enc = tokenizer(text[:start], add_special_tokens=False, return_offsets_mapping=True) if start else None
    head = list(enc["input_ids"]) if enc else []
    offsets = list(enc["offset_mapping"]) if enc else []
    answer, rest = _ids(tokenizer, text[start:end]), _ids(tokenizer, text[end:])
    inside = [int(any(a < e and b > s for s, e in spans[:-1])) for a, b in offsets]
    if exact:
        for s, _ in spans[:-1]:  # the served prompt of each earlier answer is a token prefix
            cut = next((i for i, (a, b) in enumerate(offsets) if b > s), len(head))
            if (cut < len(offsets) and offsets[cut][0] != s) or _ids(tokenizer, text[:s]) != head[:cut]:
                return None
    row: dict[str, list[int]] = {"input_ids": bos + head + answer + rest}
    if masks:
        row["assistant_masks"] = [0] * len(bos) + inside + [1] * len(answer) + [0] * len(rest)
    return row


def served_turns(tpl: Any, tokenizer: Any, messages: Sequence[Message]) -> list[tuple[str, list[int]]]:
    """For every trained answer, (the prompt Ollama serves before it, the training ids before
    its first trained token): what the per-turn token check compares with llama.cpp."""
    out = []
    for text, spans, row in encoded_sequences(tpl, tokenizer, messages):
        mask = row["assistant_masks"]
        starts = [i for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1])]
        out += [(text[:s], row["input_ids"][:first]) for (s, _), first in zip(spans, starts)]
    return out


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
    from ftpack.training.templates import ChatTemplate

    if ob.renderer:
        return renderer_chat_template(ob)
    if not ob.template or not ob.template.strip():
        return gguf_jinja_chat_template(ob)
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

    end_of_turn = generated[end:].strip() or generated[end:]
    tpl = dataclasses.replace(draft, end_of_turn=end_of_turn)
    return _remember_as(ob, tpl, tpl.ollama_template, tpl.default_system, list(tpl.stop), tpl.end_of_turn)


def _remember_as(ob: Any, tpl: Any, *content: Any) -> Any:
    """``tpl`` named ``<base>@<digest of what defines it>`` (one name, one format) and made
    loadable by that name in this process."""
    import dataclasses
    import hashlib

    from ftpack.training.templates import remember_template

    digest = hashlib.sha256(json.dumps(list(content)).encode()).hexdigest()[:8]
    return remember_template(dataclasses.replace(tpl, name=f"{ob.reference}@{digest}"))


def renderer_chat_template(ob: Any) -> Any:
    """The format of a model Ollama prompts with a built-in renderer (``ob``: an
    :class:`~ftpack.ollama.base.OllamaBase`, or anything with ``renderer``, ``parser``,
    ``system``, ``stop``, ``display``, ``reference``, ``model_type``): served with the think
    value its parser gives, trained per turn on exactly that text."""
    from ftpack.ollama import renderers
    from ftpack.training.templates import ChatTemplate

    renderers.check_supported(ob.renderer, ob.reference)
    resolved = renderers.resolve_name(ob.renderer, model_name=ob.display, model_type=getattr(ob, "model_type", ""))
    parser = getattr(ob, "parser", "") or ""
    eot = renderers.END_OF_TURN[resolved]
    tpl = ChatTemplate(name=ob.reference, description=f"Ollama's {resolved} renderer ({ob.display})",
                       chat_template="", ollama_template="", stop=tuple(ob.stop) or (eot,), end_of_turn=eot,
                       default_system=ob.system, renderer=RENDERER, aliases=(), fingerprint=(), priority=100,
                       ollama_renderer=resolved, ollama_parser=parser, think=renderers.served_think(parser))
    try:
        for probe in _PROBES:
            training_sequences(tpl, probe)
    except _NoSpan as exc:
        raise _refuse(ob, f"its {resolved} renderer: {exc}") from None
    return _remember_as(ob, tpl, resolved, parser, tpl.think, tpl.default_system, list(tpl.stop))


def gguf_jinja_chat_template(ob: Any) -> Any:
    """The format of an Ollama model without a TEMPLATE: Ollama serves it through llama-server,
    which renders the GGUF's own Jinja chat template (server/routes.go@fb30760 chatModeForModel:
    no TEMPLATE, no renderer → the native path). Training renders that template as llama-server
    does, per turn; the data stage checks llama.cpp's own engine gives the same text. Thinking
    is on when the template shows it (Ollama then sends enable_thinking=true)."""
    from ftpack.gguf.header import read_gguf_header
    from ftpack.ollama.prompt_path import jinja_capabilities
    from ftpack.training.templates import ChatTemplate

    header = read_gguf_header(ob.model_blob, arrays=("tokenizer.ggml.tokens",))
    template = header.get("tokenizer.chat_template") or ""
    if not template.strip():
        raise _refuse(ob, "it has neither a TEMPLATE nor a chat template in its GGUF, so Ollama sends prompts as "
                          "they are and the model has no chat format to train")
    tokens = header.arrays.get("tokenizer.ggml.tokens") or []

    def token(key: str) -> str:
        i = header.get(key)
        return str(tokens[i]) if isinstance(i, int) and 0 <= i < len(tokens) else ""

    add_bos = bool(header.get("tokenizer.ggml.add_bos_token"))
    eos = token("tokenizer.ggml.eos_token_id")
    if not eos:
        raise _refuse(ob, "its GGUF names no end-of-sequence token, so the model could not learn where to stop")
    think = True if "thinking" in jinja_capabilities(template) else None
    tpl = ChatTemplate(name=ob.reference, description=f"the GGUF's own Jinja chat template of {ob.display}",
                       chat_template="", ollama_template="", stop=tuple(ob.stop) or ((eos,) if eos else ()),
                       end_of_turn=eos, default_system=ob.system, renderer=RENDERER, aliases=(), fingerprint=(),
                       priority=100, think=think,
                       gguf_jinja=(template, token("tokenizer.ggml.bos_token_id"), eos, add_bos))
    try:
        for probe in _PROBES:
            training_sequences(tpl, probe, extra_markers=(eos,) if eos else ())
    except _NoSpan as exc:
        raise _refuse(ob, f"its GGUF's chat template: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a template transformers' Jinja cannot render
        raise _refuse(ob, f"its GGUF's chat template does not render a plain chat ({exc})") from None
    return _remember_as(ob, tpl, template, tpl.default_system, list(tpl.stop), think)


def check_llama_cpp_renders_alike(tpl: Any, conversations: Sequence[Sequence[Message]], *, sample: int = 32) -> int:
    """For a format from a GGUF's Jinja template: the prompt of every answer of up to ``sample``
    conversations, rendered by llama.cpp's own engine as llama-server does, equals the one
    training used. Returns the number of prompts compared; a user error names the first
    difference."""
    compared = 0
    for i, conv in enumerate(list(conversations)[:sample]):
        msgs = ollama_messages(tpl, conv)
        for k in [k for k, m in enumerate(msgs) if m["role"] == "assistant"]:
            ours = _render_gguf_jinja(tpl, msgs[:k])
            theirs = _render_gguf_jinja(tpl, msgs[:k], engine="llama.cpp")
            compared += 1
            if ours != theirs:
                at = next((j for j, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
                raise bad_input(f"llama.cpp's Jinja engine renders record {i}, answer {k}'s prompt differently from "
                                f"training (character {at}):\n  training : {ours[max(0, at - 30):at + 30]!r}\n"
                                f"  llama.cpp: {theirs[max(0, at - 30):at + 30]!r}",
                                "Ollama would serve this model another prompt than it was trained on. Pass "
                                "--template NAME to train and serve it with one of ftpack's formats.")
    return compared


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
    from ftpack.ollama.renderers import ARCHITECTURE_RENDERERS
    from ftpack.training.templates import load_template

    if explicit and ob.architecture in ARCHITECTURE_RENDERERS:
        raise bad_input(f"--template {explicit}: Ollama serves a {ob.architecture} GGUF with its built-in "
                        f"{ARCHITECTURE_RENDERERS[ob.architecture][0]!r} renderer whatever TEMPLATE it is given "
                        "(server/create.go@0029bb5), so the model would not be prompted the way it was trained.",
                        "Leave --template out: ftpack trains on the renderer's text.")
    if explicit:
        tpl = load_template(explicit)
        if reporter is not None:
            reporter.info(f"Chat template {tpl.name}: as asked (--template); the model is trained and served with it, "
                          f"not with {ob.display}'s own TEMPLATE.")
        return tpl
    own = ollama_chat_template(ob, eog=eog)
    if own.gguf_jinja:
        if reporter is not None:
            reporter.info(f"Chat format: {ob.display} has no TEMPLATE, so Ollama serves it with its GGUF's own Jinja "
                          "chat template (llama-server); training renders that template per turn, checked against "
                          "llama.cpp's engine.")
        return own
    if own.ollama_renderer:
        if reporter is not None:
            think = {True: "thinking on", None: "think not set", False: "thinking off"}[own.think]
            reporter.info(f"Chat format: Ollama's built-in {own.ollama_renderer} renderer (with parser "
                          f"{own.ollama_parser or 'none'}, served {think}), as {ob.display} is prompted; each answer "
                          f"is trained on the exact prompt Ollama sends for its turn.")
        return own
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
