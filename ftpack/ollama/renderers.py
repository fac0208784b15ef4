"""Ollama's built-in RENDERERs, for text chats: the prompt Ollama builds in Go code.

Since 0.12 Ollama prompts the newest model families with a renderer (Go code in
``model/renderers/``) instead of a TEMPLATE, paired with a PARSER that splits the output
into thinking and content. A model whose config names a renderer is prompted by it and by
nothing else: the TEMPLATE layer and the GGUF's Jinja template are ignored
(``server/prompt.go@16739de`` ``renderPrompt``; ``server/routes.go@e0c95a5``
``usesOllamaRenderedChat``). ftpack trains such a model on exactly the text these
functions return, so they must equal Ollama's to the byte.

Ported from ollama/ollama at fb30760 (v0.33.0-rc2), text messages only (roles system,
user, assistant; an assistant's ``thinking``); tools and images are out of scope:

=====================  ===============================================  ==============
renderer               source                                           parser
=====================  ===============================================  ==============
qwen3.5                model/renderers/qwen35.go@b8a6272                qwen3.5
gemma4 (small/large)   model/renderers/gemma4.go@8a0016f                gemma4
laguna                 model/renderers/laguna.go@a18c230                laguna
nemotron-3-nano        model/renderers/nemotron3nano.go@96fb6d2         nemotron-3-nano
=====================  ===============================================  ==============

Every function is checked against 966 outputs of Ollama's own Go renderers and the cases
of its renderer tests (tests/test_renderers.py).

``think`` is Ollama's ``api.ThinkValue``: None (not set), True/False, or a level string.
Over the API, a model whose parser can think gets ``think=True`` when a request sets none
(``server/routes.go@e0c95a5`` ChatHandler), so that is the mode a model is served in.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from ftpack.core.errors import bad_input

Message = Mapping[str, Any]
Think = Any  # None | bool | str

#: Go's unicode.IsSpace (strings.TrimSpace): not Python's str.strip(), which also strips \x1c-\x1f.
_GO_SPACE = ("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
             "\u2028\u2029\u202f\u205f\u3000")


def _trim(s: str) -> str:
    return s.strip(_GO_SPACE)


def _trim_right(s: str) -> str:
    return s.rstrip(_GO_SPACE)


def think_enabled(think: Think) -> bool:
    """``api.ThinkValue.Bool()``: unset is False; a level string is True when it is a level."""
    if think is None:
        return False
    if isinstance(think, bool):
        return think
    return think in ("high", "medium", "low", "max")


# -- qwen3.5 (model/renderers/qwen35.go@b8a6272: Qwen35Renderer{isThinking: true,
#    emitEmptyThinkOnNoThink: true}) ----------------------------------------------------------

_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"


def _qwen35_reasoning(content: str, thinking: str, think_block: bool) -> tuple[str, str]:
    """(reasoning, content): the message's thinking, else what ``<think>…</think>`` in the
    content holds (removed from the content either way)."""
    if think_block and thinking != "":
        return _trim(thinking), content
    reasoning = ""
    idx = content.find("</think>")
    if idx != -1:
        before = content[:idx]
        op = before.rfind("<think>")
        reasoning = before[op + len("<think>"):] if op != -1 else before
        content = content[idx + len("</think>"):].lstrip("\n")
    return _trim(reasoning), content


def render_qwen35(messages: Sequence[Message], think: Think = None) -> str:
    """Thinking is on unless ``think`` says otherwise. Assistant turns after the last user
    message carry a ``<think>`` block, earlier ones do not; a final assistant message is a
    prefill (not closed); the generation prompt opens ``<think>`` (thinking) or writes an
    empty one (no thinking)."""
    out: list[str] = []
    thinking = True if think is None else think_enabled(think)
    if messages and messages[0]["role"] == "system":
        out.append(f"{_IM_START}system\n{_trim(messages[0].get('content', ''))}{_IM_END}\n")
    last_query = len(messages) - 1
    for i in range(len(messages) - 1, -1, -1):  # the last user message that is not a tool response
        if messages[i]["role"] == "user":
            c = _trim(messages[i].get("content", ""))
            if not (c.startswith("<tool_response>") and c.endswith("</tool_response>")):
                last_query = i
                break
    for i, m in enumerate(messages):
        role, content = m["role"], _trim(m.get("content", ""))
        last = i == len(messages) - 1
        prefill = last and role == "assistant"
        if role == "user" or (role == "system" and i != 0):
            out.append(f"{_IM_START}{role}\n{content}{_IM_END}\n")
        elif role == "assistant":
            think_block = thinking and i > last_query
            reasoning, content = _qwen35_reasoning(content, m.get("thinking", "") or "", think_block)
            if think_block:
                out.append(f"{_IM_START}assistant\n<think>\n{reasoning}\n</think>\n\n{content}")
            else:
                out.append(f"{_IM_START}assistant\n{content}")
            if not prefill:
                out.append(f"{_IM_END}\n")
        if last and not prefill:
            out.append(f"{_IM_START}assistant\n" + ("<think>\n" if thinking else "<think>\n\n</think>\n\n"))
    return "".join(out)


# -- gemma4 (model/renderers/gemma4.go@8a0016f; the name resolved to small or large by
#    server/renderer_resolution.go@50bbda5) -------------------------------------------------

def _gemma4_strip_thinking(text: str) -> str:
    res = []
    while True:
        start = text.find("<|channel>")
        if start == -1:
            res.append(text)
            break
        res.append(text[:start])
        end = text.find("<channel|>", start)
        if end == -1:
            break
        text = text[end + len("<channel|>"):]
    return _trim("".join(res))


def render_gemma4(messages: Sequence[Message], think: Think = None, *, large: bool = False) -> str:
    """Starts with the text ``<bos>`` (Ollama drops it when the tokenizer adds BOS itself).
    Thinking puts ``<|think|>`` into a system turn; consecutive assistant messages share one
    model turn; the generation prompt is ``<|turn>model\\n`` (large models without thinking
    add an empty thought channel)."""
    out = ["<bos>"]
    has_sys = bool(messages) and messages[0]["role"] in ("system", "developer")
    system = messages[0].get("content", "") if has_sys else ""
    loop = list(messages[1:] if has_sys else messages)
    has_think = think_enabled(think)
    if has_sys or has_think:
        out.append("<|turn>system\n")
        if has_think:
            out.append("<|think|>\n")
        if system != "":
            out.append(_trim(system))
        out.append("<turn|>\n")
    last_user = max((i for i, m in enumerate(loop) if m["role"] == "user"), default=-1)
    prev_role = ""
    for i, m in enumerate(loop):
        role = "model" if m["role"] == "assistant" else m["role"]
        if not (role == "model" and prev_role == "assistant"):
            out.append(f"<|turn>{role}\n")
        thinking = m.get("thinking", "") or ""
        if m["role"] == "assistant" and thinking != "" and i > last_user:
            out.append(f"<|channel>thought\n{thinking}\n<channel|>")
        content = m.get("content", "")
        if role == "model":
            if content != "":
                out.append(_gemma4_strip_thinking(content))
        else:
            out.append(_trim(content))
        next_role = loop[i + 1]["role"] if i + 1 < len(loop) else ""
        if not (role == "model" and next_role == "assistant"):
            out.append("<turn|>\n")
        prev_role = m["role"]
    out.append("<|turn>model\n")
    if large and not has_think:
        out.append("<|channel>thought\n<channel|>")
    return "".join(out)


def gemma4_size(model_name: str = "", model_type: str = "") -> str:
    """``gemma4-small`` or ``gemma4-large`` for a model Ollama calls ``gemma4``: by the name
    (e2b/e4b small; 12b/26b/31b large), else the parameter count (>= 12B large)."""
    lower = model_name.lower()
    if "e2b" in lower or "e4b" in lower:
        return "gemma4-small"
    if any(s in lower for s in ("12b", "26b", "31b")):
        return "gemma4-large"
    count = _human_count(model_type)
    return "gemma4-large" if count is not None and count >= 12_000_000_000 else "gemma4-small"


def _human_count(text: str) -> int | None:
    """``"25.2B"`` → 25_200_000_000 (Ollama's model_type); None when unreadable."""
    t = text.strip().upper()
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}.get(t[-1:] if t else "")
    try:
        return int(float(t[:-1]) * scale) if scale else int(float(t))
    except ValueError:
        return None


# -- laguna (model/renderers/laguna.go@a18c230, LagunaRenderer) --------------------------------

LAGUNA_BOS = "\u3008|EOS|\u3009"  # 〈|EOS|〉: U+3008/U+3009, not ASCII angle brackets
LAGUNA_DEFAULT_SYSTEM = ("You are a helpful, conversationally-fluent assistant made by Poolside. "
                         "You are here to be helpful to users through natural language conversations.")


def _laguna_split(content: str, reasoning: str) -> tuple[str, str]:
    parts = content.split("</think>")
    if len(parts) == 1:
        return content, reasoning
    if reasoning == "":
        before = parts[0].rstrip("\n")
        i = before.rfind("<think>")
        if i >= 0:
            before = before[i + len("<think>"):]
        reasoning = before.lstrip("\n")
    return parts[-1].lstrip("\n"), reasoning


def render_laguna(messages: Sequence[Message], think: Think = None) -> str:
    """Starts with ``〈|EOS|〉``; a default Poolside system prompt unless the first message is
    a system one; thinking off unless ``think`` turns it on."""
    out = [LAGUNA_BOS]
    thinking = think_enabled(think)
    first_sys = bool(messages) and messages[0]["role"] == "system"
    system = messages[0].get("content", "") if first_sys else LAGUNA_DEFAULT_SYSTEM
    if _trim(system) != "":
        out.append(f"<system>\n\n{_trim_right(system)}\n</system>\n")
    for i, m in enumerate(messages):
        if i == 0 and first_sys:
            continue
        role, content = m["role"], m.get("content", "")
        if role == "user":
            out.append(f"<user>\n{content}\n</user>\n")
        elif role == "assistant":
            content, reasoning = _laguna_split(content, m.get("thinking", "") or "")
            prefill = i == len(messages) - 1 and (_trim(content) != "" or _trim(reasoning) != "")
            out.append("<assistant>\n")
            r = _trim(reasoning)
            out.append(f"<think>\n{r}\n</think>\n" if r != "" else "</think>\n")
            if _trim(content) != "":
                out.append(_trim(content) + "\n")
            if not prefill:
                out.append("</assistant>\n")
        elif role == "system":
            out.append(f"<system>\n{content}\n</system>\n")
    if not messages or messages[-1]["role"] != "assistant":
        out.append("<assistant>\n" + ("<think>" if thinking else "</think>"))
    return "".join(out)


# -- nemotron-3-nano (model/renderers/nemotron3nano.go@96fb6d2, v3, not v3.5) ----------------

def _strip_think_toggles(s: str) -> str:
    s = s.replace("</think>", "<_end_think>").replace("/think", "").replace("/no_think", "")
    return s.replace("<_end_think>", "</think>")


def render_nemotron3_nano(messages: Sequence[Message], think: Think = None) -> str:
    """ChatML with an always-present system turn; thinking on unless ``think`` is False, and
    ``/think`` / ``/no_think`` in a user or system message switch it (and are removed)."""
    enable = think is None or think_enabled(think)
    for m in messages:
        if m["role"] in ("user", "system"):
            c = m.get("content", "")
            if "/think" in c.replace("</think>", ""):
                enable = True
            elif "/no_think" in c:
                enable = False
    system, loop = "", list(messages)
    if messages and messages[0]["role"] == "system":
        system, loop = _strip_think_toggles(messages[0].get("content", "")), list(messages[1:])
    last_user = max((i for i, m in enumerate(loop) if m["role"] == "user"), default=-1)
    out = [f"{_IM_START}system\n{system}{_IM_END}\n"]
    for i, m in enumerate(loop):
        role = m["role"]
        if role == "assistant":
            content, thinking = m.get("content", ""), m.get("thinking", "") or ""
            if thinking != "":
                content = f"<think>\n{thinking}\n</think>\n{content}"
            elif "<think>" not in content and "</think>" not in content:
                content = "<think></think>" + content
            if i < last_user and "<think>" in content and "</think>" in content:
                content = "<think></think>" + content.split("</think>")[-1]
            out.append(f"{_IM_START}assistant\n{_trim(content)}{_IM_END}\n")
        elif role in ("user", "system"):
            out.append(f"{_IM_START}{role}\n{_trim(_strip_think_toggles(m.get('content', '')))}{_IM_END}\n")
        else:
            out.append(f"{_IM_START}{role}\n{m.get('content', '')}{_IM_END}\n")
    out.append(f"{_IM_START}assistant\n" + ("<think>\n" if enable else "<think></think>"))
    return "".join(out)


# -- the registry ------------------------------------------------------------------------------

#: Renderer name (as resolved at chat time) → function.
_RENDER: dict[str, Callable[[Sequence[Message], Think], str]] = {
    "qwen3.5": render_qwen35,
    "gemma4-small": lambda m, t=None: render_gemma4(m, t, large=False),
    "gemma4-large": lambda m, t=None: render_gemma4(m, t, large=True),
    "laguna": render_laguna,
    "nemotron-3-nano": render_nemotron3_nano,
}

#: Renderer names a model's config may carry that ftpack reproduces, with the parser Ollama
#: pairs them with (model/renderers/renderer.go@5512797, model/parsers/parsers.go@96fb6d2).
SUPPORTED: dict[str, str] = {"qwen3.5": "qwen3.5", "gemma4": "gemma4", "gemma4-small": "gemma4",
                             "gemma4-large": "gemma4", "laguna": "laguna", "nemotron-3-nano": "nemotron-3-nano"}

#: Parsers that can think: a model with one is served with think=True unless a request says
#: otherwise (server/images.go@a5165c5 parserCapabilities; server/routes.go@e0c95a5).
THINKING_PARSERS = frozenset({"qwen3.5", "gemma4", "laguna", "nemotron-3-nano"})

#: What ``ollama create`` sets by itself for a GGUF of these architectures when the request
#: names no renderer/parser: (renderer, parser, stop added when the request gives none);
#: server/create.go@0029bb5 (same in v0.33.0-rc2), "Auto-detect renderer, parser, and stop tokens".
ARCHITECTURE_RENDERERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "gemma4": ("gemma4", "gemma4", ("<turn|>",)),
    "laguna": ("laguna", "laguna", ()),
    "nemotron_h": ("nemotron-3-nano", "nemotron-3-nano", ()),
    "nemotron_h_moe": ("nemotron-3-nano", "nemotron-3-nano", ()),
    "nemotron_h_omni": ("nemotron-3-nano", "nemotron-3-nano", ()),
}

#: What closes an assistant turn in each renderer's text: what the model must generate to stop
#: (the text after a non-final assistant message, before the next turn).
END_OF_TURN = {"qwen3.5": "<|im_end|>", "gemma4-small": "<turn|>", "gemma4-large": "<turn|>",
               "laguna": "</assistant>", "nemotron-3-nano": "<|im_end|>"}

#: Text a renderer starts its prompt with that stands for BOS: Ollama removes it before
#: tokenizing when the tokenizer adds BOS itself (llm/llama_server.go@f427fa0 completionPrompt).
LEADING_BOS = {"gemma4-small": "<bos>", "gemma4-large": "<bos>", "laguna": LAGUNA_BOS}


def check_supported(renderer: str, what: str) -> None:
    """A user error, before any work, for a renderer ftpack cannot reproduce."""
    if renderer not in SUPPORTED:
        raise bad_input(f"{what} is prompted by Ollama's built-in {renderer!r} renderer, which ftpack does not "
                        f"reproduce: the trained text would not be what Ollama serves.",
                        "Renderers ftpack trains on: " + ", ".join(sorted(SUPPORTED)) + ". Or pass --template NAME "
                        "to train and serve the model with one of ftpack's formats instead.")


def resolve_name(renderer: str, *, model_name: str = "", model_type: str = "") -> str:
    """The renderer that runs at chat time: ``gemma4`` becomes small or large
    (server/renderer_resolution.go@50bbda5); other names are themselves."""
    return gemma4_size(model_name, model_type) if renderer == "gemma4" else renderer


def served_think(parser: str) -> Think:
    """The ``think`` a request without one is served with: True when the parser can think."""
    return True if parser in THINKING_PARSERS else None


def render(renderer: str, messages: Sequence[Message], think: Think = None) -> str:
    """The prompt Ollama's ``renderer`` (a resolved name) builds for ``messages``."""
    try:
        fn = _RENDER[renderer]
    except KeyError:
        raise bad_input(f"Unknown Ollama renderer {renderer!r}.",
                        "Known: " + ", ".join(sorted(_RENDER)) + ".") from None
    return fn([{k: v for k, v in m.items()} for m in messages], think)
