"""Which of its three prompt paths today's Ollama serves a model with, and why.

Ollama 0.30+ builds a chat prompt one of three ways (``server/routes.go@fb30760``
``chatModeForModel``, ``usesOllamaRenderedChat``, ``shouldUseGoTemplate``;
``server/images.go@fb30760`` ``GetModel``, ``shouldPreferChatTemplate``):

1. ``renderer``: a built-in RENDERER (Go code) when the model's config names one; a PARSER
   without a renderer renders the Go TEMPLATE.
2. ``template``: the Go TEMPLATE, unless ``OLLAMA_GO_TEMPLATE`` is set false, or it is unset
   and the GGUF's Jinja template shows more capabilities (tools, thinking: a count) than the
   TEMPLATE, with tool-round-trip tie-breaks.
3. ``jinja``: otherwise the GGUF's own ``tokenizer.chat_template``, rendered by llama.cpp's
   llama-server (no TEMPLATE layer, ``OLLAMA_GO_TEMPLATE=0``, or the preference above).

ftpack decides the path once per build from what it registers, records it with the reason,
and makes sure it is the path training rendered. Pure functions; no I/O.
"""

from __future__ import annotations

import re

RENDERER, TEMPLATE, JINJA = "renderer", "template", "jinja"


def template_capabilities(go_template: str) -> list[str]:
    """goTemplateCapabilities: ``tools`` when the template uses ``.Tools``, ``insert`` for
    ``.Suffix``, ``thinking`` for ``.Thinking`` inside ``range .Messages`` (Vars() is
    case-insensitive; thinking.InferTags looks inside the Messages range)."""
    low = go_template.lower()
    caps = [cap for cap, var in (("tools", "tools"), ("insert", "suffix")) if re.search(rf"\.{var}\b", low)]
    if re.search(r"range\b[^}]*\.messages\b", low) and re.search(r"\.thinking\b", low):
        caps.append("thinking")
    return caps


def jinja_capabilities(chat_template: str) -> list[str]:
    """chatTemplateCapabilities: plain substring tests on the Jinja text."""
    caps = []
    if "tools" in chat_template or "tool_call" in chat_template:
        caps.append("tools")
    split = "content.split('</think>')" in chat_template or 'content.split("</think>")' in chat_template
    if ("<think>" in chat_template and "</think>" in chat_template) or (
            split and "reasoning_content" not in chat_template and "<SPECIAL_12>" not in chat_template):
        caps.append("thinking")
    return caps


def _jinja_round_trip(t: str) -> bool:
    if "tools" not in t and "tool_call" not in t:
        return False
    calls = "tool_calls" in t or "assistant_tool_call" in t
    markers = ("tool_response", "tool_results", "role'] == 'tool'", 'role\'] == "tool"', "role\"] == 'tool'",
               'role"] == "tool"', "message.role == 'tool'", 'message.role == "tool"', "ipython")
    return calls and any(m in t for m in markers)


def _template_round_trip(t: str) -> bool:
    caps = template_capabilities(t)
    return "tools" in caps and bool(re.search(r"\.toolcalls\b", t.lower())) and (
        'eq .Role "tool"' in t or "tool_response" in t or "TOOL_RESULTS" in t)


def prefers_chat_template(chat_template: str, go_template: str) -> bool:
    """shouldPreferChatTemplate: the Jinja template shows more capabilities (by count), unless
    only the TEMPLATE round-trips tool calls; with equal sets that include tools, the Jinja
    template wins only when it alone round-trips them."""
    jc, gc = jinja_capabilities(chat_template), template_capabilities(go_template)
    if len(jc) > len(gc):
        return not _template_round_trip(go_template) or _jinja_round_trip(chat_template)
    if sorted(jc) != sorted(gc) or "tools" not in jc:
        return False
    return _jinja_round_trip(chat_template) and not _template_round_trip(go_template)


def served_path(*, renderer: str | None, parser: str | None, go_template: str | None,
                gguf_chat_template: str | None, go_template_env: str | None = None) -> tuple[str, str]:
    """(path, reason) Ollama serves a model with; ``go_template_env`` is OLLAMA_GO_TEMPLATE."""
    if renderer:
        return RENDERER, f"its config names the built-in renderer {renderer!r}, which Ollama uses before anything else"
    if parser:
        return TEMPLATE, f"its config names the parser {parser!r}: Ollama renders the TEMPLATE in Go"
    if not go_template:
        return JINJA, "it has no TEMPLATE: llama-server renders the GGUF's own Jinja chat template"
    if go_template_env is not None:
        on = go_template_env.strip().lower() not in ("0", "f", "false")
        return (TEMPLATE, "OLLAMA_GO_TEMPLATE is set true") if on else (
            JINJA, "OLLAMA_GO_TEMPLATE is set false: llama-server renders the GGUF's Jinja chat template")
    if gguf_chat_template and prefers_chat_template(gguf_chat_template, go_template):
        shown = ", ".join(jinja_capabilities(gguf_chat_template))
        return JINJA, (f"the GGUF's Jinja template shows more capabilities ({shown}) than the TEMPLATE "
                       f"({', '.join(template_capabilities(go_template)) or 'none'})")
    return TEMPLATE, ("the TEMPLATE shows at least the capabilities of the GGUF's Jinja template"
                      if gguf_chat_template else "the GGUF has no Jinja chat template")
