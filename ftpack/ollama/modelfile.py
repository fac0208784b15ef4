'''Ollama Modelfiles: render them from ``Modelfile.j2`` and parse them exactly as Ollama does.

The parser is a line-for-line port of Ollama's ``parser/parser.go`` (``ParseFile``: a
rune-by-rune state machine). It matters because Ollama's grammar has sharp edges a
renderer must respect: a value runs to the end of the line and is whitespace-trimmed;
``"…"`` and ``"""…"""`` may span lines and end at the *first* newline where the text so
far is a complete quoted string; there are no escape sequences; non-printable runes
other than tab/newline/CR are silently dropped. So the renderer picks, for every value,
the first of bare / ``"…"`` / ``"""…"""`` that this parser reads back unchanged, refuses
values no quoting can carry (naming the field), and parses the whole rendered file back
before anyone writes it.
'''

from __future__ import annotations

import dataclasses
import math
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from ftpack.core.errors import FtpackError, bad_input

if TYPE_CHECKING:
    from ftpack.training.templates import ChatTemplate

# -- Ollama's grammar --------------------------------------------------------------------

#: Command words Ollama accepts (case-insensitive), from parser.isValidCommand
#: (parser/parser.go@00dc3af), plus CAPABILITY, which Ollama's Modelfile reference documents
#: from October 2026 on (docs/modelfile.mdx@efe43c5) and /api/create takes as ``capabilities``
#: (server/create.go@0029bb5); the parser code that reads it was not available to compare.
COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser",
            "parameter", "message", "requires", "capability")
#: Capability names /api/create accepts (types/model/capability.go, IsValid; 400 "unknown
#: capability" otherwise, server/create.go@0029bb5).
CAPABILITIES = ("completion", "tools", "insert", "vision", "embedding", "thinking", "image", "audio", "decision")
MESSAGE_ROLES = ("system", "user", "assistant")

ERR_INVALID_COMMAND = ('command must be one of "from", "license", "template", "system", "adapter", '
                       '"draft", "renderer", "parser", "parameter", "message", or "requires"')
ERR_INVALID_ROLE = 'message role must be one of "system", "user", or "assistant"'
ERR_MISSING_FROM = "no FROM line"
ERR_UNEXPECTED_EOF = "unexpected EOF"

#: PARAMETER names and value types, from api.Options / api.Runner (json tags) in api/types.go.
PARAMETER_TYPES: dict[str, str] = {
    # Runner options
    "num_ctx": "int", "num_batch": "int", "num_gpu": "int", "main_gpu": "int", "use_mmap": "bool",
    "num_thread": "int", "draft_num_predict": "int",
    # Predict options
    "num_keep": "int", "seed": "int", "num_predict": "int", "top_k": "int", "top_p": "float",
    "min_p": "float", "typical_p": "float", "repeat_last_n": "int", "temperature": "float",
    "repeat_penalty": "float", "presence_penalty": "float", "frequency_penalty": "float",
    "stop": "list",
}
#: Names Ollama still parses but ignores with a warning (parser.deprecatedParameters).
DEPRECATED_PARAMETERS = ("penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only",
                         "use_mlock", "mirostat", "mirostat_tau", "mirostat_eta")

#: Names today's server refuses as *model* parameters (400 at /api/create, whatever the value),
#: with its message: server/create.go@0029bb5 (errTypicalPDeprecated). They stay request options.
REFUSED_PARAMETERS: dict[str, str] = {
    "typical_p": "typical_p is deprecated and cannot be set as a model parameter; pass it as a request option "
                 "instead",
}

_STATE_NIL, _STATE_NAME, _STATE_VALUE, _STATE_PARAMETER, _STATE_MESSAGE, _STATE_COMMENT = range(6)


@dataclass(frozen=True)
class Command:
    """One parsed Modelfile line, as Ollama's ``parser.Command``.

    ``name`` is "model" for FROM, the lower-cased command word otherwise, and the
    parameter's name for PARAMETER; MESSAGE args are "role: content".
    """

    name: str
    args: str


class ModelfileError(FtpackError):
    """A Modelfile Ollama would reject, with Ollama's own message (and ``(line N)``)."""

    def __init__(self, ollama_message: str, source: str | None = None, hint: str | None = None):
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{ollama_message}", hint, code=2)
        self.ollama_message = ollama_message


def _is_alpha(c: str) -> bool:
    return "a" <= c <= "z" or "A" <= c <= "Z"


def _is_number(c: str) -> bool:
    return "0" <= c <= "9"


def _is_space(c: str) -> bool:
    return c == " " or c == "\t"


def _is_newline(c: str) -> bool:
    return c == "\r" or c == "\n"


def is_go_printable(c: str) -> bool:
    """Go's ``strconv.IsPrint``: letters, marks, numbers, punctuation, symbols, ASCII space.

    Python's Unicode tables may be older than Go's: a rune newer than them counts as
    unprintable here, which only makes ftpack stricter than Ollama, never looser.
    """
    return c == " " or unicodedata.category(c)[0] in "LMNPS"


def _go_trim_space(s: str) -> str:
    # strings.TrimSpace trims Unicode White_Space; only these can reach the buffer
    # (other white space is unprintable and dropped before).
    return s.strip(" \t\n\r\v\f\x85\xa0")


def _unquote(s: str) -> tuple[str, bool]:
    """parser.unquote: strip ``\"\"\"`` or ``\"`` pairs; (value, complete)."""
    if s[:3] == '"""':
        if len(s) >= 6 and s[-3:] == '"""':
            return s[3:-3], True
        return "", False
    if s[:1] == '"':
        if len(s) >= 2 and s[-1] == '"':
            return s[1:-1], True
        return "", False
    return s, True


def _decode(data: bytes | str) -> str:
    """Text as Ollama reads it: UTF-8, or UTF-16 when a BOM says so; a UTF-8 BOM is dropped."""
    if isinstance(data, str):
        return data[1:] if data.startswith("\ufeff") else data
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    if data.startswith(b"\xff\xfe"):
        return data[2:].decode("utf-16-le", errors="replace")
    if data.startswith(b"\xfe\xff"):
        return data[2:].decode("utf-16-be", errors="replace")
    return data.decode("utf-8", errors="replace")


def _next_state(r: str, cs: int) -> tuple[int, str, str | None]:
    """parser.parseRuneForState: (next state, rune to keep or "", error message)."""
    if cs == _STATE_NIL:
        if r == "#":
            return _STATE_COMMENT, "", None
        if _is_space(r) or _is_newline(r):
            return _STATE_NIL, "", None
        return _STATE_NAME, r, None
    if cs == _STATE_NAME:
        if _is_alpha(r):
            return _STATE_NAME, r, None
        if _is_space(r):
            return _STATE_VALUE, "", None
        return _STATE_NIL, "", ERR_INVALID_COMMAND
    if cs == _STATE_VALUE:
        if _is_newline(r) or _is_space(r):
            return _STATE_NIL, r, None
        return _STATE_VALUE, r, None
    if cs == _STATE_PARAMETER:
        if _is_alpha(r) or _is_number(r) or r == "_":
            return _STATE_PARAMETER, r, None
        if _is_space(r):
            return _STATE_VALUE, "", None
        return _STATE_NIL, "", ERR_UNEXPECTED_EOF
    if cs == _STATE_MESSAGE:
        if _is_alpha(r):
            return _STATE_MESSAGE, r, None
        if _is_space(r):
            return _STATE_VALUE, "", None
        return _STATE_NIL, "", ERR_UNEXPECTED_EOF
    if cs == _STATE_COMMENT:
        if _is_newline(r):
            return _STATE_NIL, "", None
        return _STATE_COMMENT, "", None
    return _STATE_NIL, "", ""  # pragma: no cover - unreachable, as in Go


def parse_modelfile(data: bytes | str, *, source: str | None = None) -> list[Command]:
    """Parse a Modelfile exactly as Ollama's ``parser.ParseFile`` does.

    Raises :class:`ModelfileError` with Ollama's message, e.g. ``(line 3): command must
    be one of …``, ``unexpected EOF``, ``no FROM line``.
    """
    text = _decode(data)
    commands: list[Command] = []
    cmd_name = ""
    curr = _STATE_NIL
    line = 1
    buf: list[str] = []
    role = ""

    for r in text:
        if _is_newline(r):
            line += 1
        nxt, keep, err = _next_state(r, curr)
        if err == ERR_UNEXPECTED_EOF:
            raise ModelfileError(f"{ERR_UNEXPECTED_EOF}: {''.join(buf)}", source)
        if err is not None:
            raise ModelfileError(f"(line {line}): {err}", source)
        r = keep
        if nxt != curr:
            if curr == _STATE_NAME:
                word = "".join(buf)
                if word.lower() not in COMMANDS:
                    raise ModelfileError(f"(line {line}): {ERR_INVALID_COMMAND}", source)
                s = word.lower()
                if s == "from":
                    cmd_name = "model"
                elif s == "parameter":
                    nxt = _STATE_PARAMETER
                elif s == "message":
                    nxt = _STATE_MESSAGE
                    cmd_name = s
                else:
                    cmd_name = s
            elif curr == _STATE_PARAMETER:
                cmd_name = "".join(buf)
            elif curr == _STATE_MESSAGE:
                word = "".join(buf)
                if word not in MESSAGE_ROLES:
                    raise ModelfileError(f"(line {line}): {ERR_INVALID_ROLE}", source)
                role = word
            elif curr == _STATE_VALUE:
                value, ok = _unquote(_go_trim_space("".join(buf)))
                if not ok or _is_space(r):
                    buf.append(r)
                    continue
                if role:
                    value = f"{role}: {value}"
                    role = ""
                commands.append(Command(cmd_name, value))
            buf = []
            curr = nxt
        if r and is_go_printable(r):
            buf.append(r)

    if curr == _STATE_VALUE:
        value, ok = _unquote(_go_trim_space("".join(buf)))
        if not ok:
            raise ModelfileError(ERR_UNEXPECTED_EOF, source)
        if role:
            value = f"{role}: {value}"
        commands.append(Command(cmd_name, value))
    elif curr not in (_STATE_NIL, _STATE_COMMENT):
        raise ModelfileError(ERR_UNEXPECTED_EOF, source)

    if not any(c.name == "model" for c in commands):
        raise ModelfileError(ERR_MISSING_FROM, source)
    return commands


# -- quoting ------------------------------------------------------------------------------

def _parses_back(candidate: str, value: str) -> bool:
    try:
        cmds = parse_modelfile(f"FROM x\nSYSTEM {candidate}\n")
    except ModelfileError:
        return False
    return len(cmds) == 2 and cmds[1] == Command("system", value)


def quote_value(value: str, field_name: str) -> str:
    """The Modelfile spelling of ``value`` that Ollama's parser reads back exactly.

    Tries bare, ``\"\"\"…\"\"\"`` and ``"…"`` in that order and keeps the first that parses
    back unchanged. Raises a bad-input :class:`FtpackError` naming ``field_name`` when
    none does (unprintable characters; ``\"\"\"`` at the end of a line inside the text).
    """
    for i, c in enumerate(value):
        if c not in "\t\n\r" and not is_go_printable(c):
            name = unicodedata.name(c, None) or f"a control/format character, category {unicodedata.category(c)}"
            raise bad_input(
                f"{field_name}: the text contains the invisible character U+{ord(c):04X} ({name}) at "
                f"position {i}, which Ollama's Modelfile parser silently drops.",
                "Remove it from the text (only tab, newline and printable characters survive a Modelfile).")
    candidates = []
    if value and value == value.strip() and "\n" not in value and "\r" not in value \
            and not value.startswith('"'):
        candidates.append(value)
    candidates += [f'"""{value}"""', f'"{value}"']  # triple first: the usual look of TEMPLATE/SYSTEM
    for cand in candidates:
        if _parses_back(cand, value):
            return cand
    line_no = _premature_end_line(value)
    raise bad_input(
        f"{field_name}: Ollama's Modelfile cannot represent this text: line {line_no} of it ends with "
        f'a quote ("""), which would close the quoted value early.',
        'Change the text so that no line ends with """ (for example add a character after it).')


def _premature_end_line(value: str) -> int:
    prefix = '"""'
    for i, c in enumerate(value):
        if c in "\r\n":
            s = _go_trim_space(prefix + value[:i])
            if len(s) >= 6 and s.endswith('"""'):
                return value[:i].count("\n") + 1
    return value.count("\n") + 1


# -- parameters ---------------------------------------------------------------------------

_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_GO_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
             "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}
_FLOAT32_MAX = 3.4028234663852886e38


def parameter_value(name: str, text: str) -> Any:
    """Check one PARAMETER like Ollama's ``api.FormatParams`` and return its typed value.

    Ints are int64, floats are rounded to float32 (what the ``ollama`` CLI sends, so
    the stored params blob is the same), bools follow Go's ``strconv.ParseBool``.
    ``stop`` values stay text. Errors are bad-input FtpackErrors naming the parameter.
    """
    if name in REFUSED_PARAMETERS:
        raise bad_input(f"PARAMETER {name}: Ollama 0.34 and later refuse it: \"{REFUSED_PARAMETERS[name]}\".",
                        f"Remove it; pass {name} per request instead (`ollama run` /set parameter, or the "
                        "API's options).")
    if name in DEPRECATED_PARAMETERS:
        raise bad_input(f"PARAMETER {name}: Ollama no longer supports this parameter (it is ignored with "
                        "a warning).", "Remove it.")
    kind = PARAMETER_TYPES.get(name)
    if kind is None:
        import difflib

        close = difflib.get_close_matches(name, list(PARAMETER_TYPES), n=1)
        raise bad_input(f"PARAMETER {name}: unknown parameter '{name}' (Ollama would refuse it).",
                        f"Did you mean {close[0]!r}?" if close else
                        "Known parameters: " + ", ".join(sorted(PARAMETER_TYPES)) + ".")
    if kind == "list":
        return text
    if kind == "int":
        if not _INT_RE.fullmatch(text) or not -(2**63) <= int(text) < 2**63:
            raise bad_input(f"PARAMETER {name}: expected an integer, got {text!r}.")
        return int(text)
    if kind == "bool":
        if text not in _GO_BOOLS:
            raise bad_input(f"PARAMETER {name}: expected true or false, got {text!r}.")
        return _GO_BOOLS[text]
    if not _FLOAT_RE.fullmatch(text):
        raise bad_input(f"PARAMETER {name}: expected a number, got {text!r}.")
    value = float(text)
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise bad_input(f"PARAMETER {name}: {text!r} is out of range for Ollama (a 32-bit float).")
    return float32_shortest(value)


def float32_shortest(value: float) -> float:
    """The float64 Ollama stores for a PARAMETER float: shortest float32 text, re-read."""
    import numpy as np

    return float(str(np.float32(value)))


def format_parameter(value: Any) -> str:
    """The Modelfile text of a typed parameter value (inverse of :func:`parameter_value`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        r = repr(value)
        return r[:-2] if r.endswith(".0") else r
    return str(value)


def parse_parameter_args(items: Iterable[str]) -> list[tuple[str, str]]:
    """``KEY=VALUE`` strings (the ``--param`` flag) into checked (name, text) pairs."""
    pairs = []
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise bad_input(f"--param {item!r}: expected KEY=VALUE, e.g. temperature=0.7.")
        parameter_value(key, value)
        pairs.append((key, value))
    return pairs


def parse_message_args(items: Iterable[str]) -> list[tuple[str, str]]:
    """``ROLE:TEXT`` strings (the ``--message`` flag) into (role, text) pairs."""
    out = []
    for item in items:
        role, sep, text = str(item).partition(":")
        if not sep or role.strip() not in MESSAGE_ROLES:
            raise bad_input(f"--message {item!r}: expected ROLE:TEXT with ROLE system, user or assistant.")
        out.append((role.strip(), text[1:] if text.startswith(" ") else text))
    return out


# -- the Modelfile as data ----------------------------------------------------------------

@dataclass
class ModelfileSpec:
    """Everything a Modelfile says, in Ollama's words; ``from_path`` as written (relative)."""

    from_path: str
    template: str | None = None
    system: str | None = None
    parameters: list[tuple[str, str]] = field(default_factory=list)  # (name, text), stop repeated
    messages: list[tuple[str, str]] = field(default_factory=list)  # (role, content)
    licenses: list[str] = field(default_factory=list)
    adapter: str | None = None
    comment: str | None = None  # header comment lines (not part of the model)
    renderer: str | None = None  # RENDERER: Ollama's built-in prompt renderer (replaces TEMPLATE)
    parser: str | None = None  # PARSER: Ollama's built-in output parser (thinking, tool calls)
    requires: str | None = None  # REQUIRES: the oldest Ollama version that runs the model
    draft: str | None = None  # DRAFT: a draft model for speculative decoding (a path)
    capabilities: list[str] = field(default_factory=list)  # CAPABILITY lines

    def commands(self) -> list[Command]:
        """The commands Ollama's parser must read from the rendered file, in order."""
        cmds = [Command("model", self.from_path)]
        if self.adapter is not None:
            cmds.append(Command("adapter", self.adapter))
        if self.draft is not None:
            cmds.append(Command("draft", self.draft))
        for name in ("renderer", "parser", "requires"):
            if getattr(self, name) is not None:
                cmds.append(Command(name, getattr(self, name)))
        cmds += [Command("capability", c) for c in self.capabilities]
        if self.template is not None:
            cmds.append(Command("template", self.template))
        if self.system is not None:
            cmds.append(Command("system", self.system))
        cmds += [Command(name, text) for name, text in self.parameters]
        cmds += [Command("message", f"{role}: {content}") for role, content in self.messages]
        cmds += [Command("license", text) for text in self.licenses]
        return cmds

    def typed_parameters(self) -> dict[str, Any]:
        """Parameters as /api/create wants them: typed values, ``stop`` as a list."""
        out: dict[str, Any] = {}
        for name, text in self.parameters:
            value = parameter_value(name, text)
            if PARAMETER_TYPES[name] == "list":
                out.setdefault(name, []).append(value)
            else:
                out[name] = value
        return out


def spec_from_commands(commands: Sequence[Command]) -> ModelfileSpec:
    """A parsed Modelfile as a :class:`ModelfileSpec` (one FROM and at most one ADAPTER)."""
    froms = [c.args for c in commands if c.name == "model"]
    if len(froms) != 1:
        raise bad_input(f"This Modelfile has {len(froms)} FROM lines; ftpack registers exactly one GGUF.")
    spec = ModelfileSpec(from_path=froms[0])
    for c in commands:
        if c.name == "model":
            continue
        if c.name == "adapter":
            if spec.adapter is not None:
                raise bad_input("Ollama supports only one ADAPTER per model.")
            spec.adapter = c.args
        elif c.name == "template":
            spec.template = c.args
        elif c.name == "system":
            spec.system = c.args
        elif c.name == "license":
            spec.licenses.append(c.args)
        elif c.name == "message":
            role, _, content = c.args.partition(": ")
            spec.messages.append((role, content))
        elif c.name in ("draft", "renderer", "parser", "requires"):
            if getattr(spec, c.name) is not None:
                raise bad_input(f"This Modelfile has more than one {c.name.upper()} line.")
            setattr(spec, c.name, check_requires(c.args) if c.name == "requires" else c.args)
        elif c.name == "capability":
            spec.capabilities.append(check_capability(c.args))
        else:
            parameter_value(c.name, c.args)
            spec.parameters.append((c.name, c.args))
    return spec


def check_requires(text: str) -> str:
    """REQUIRES as Ollama's client reads it: a semantic version, a leading ``v`` dropped
    (parser/parser.go@00dc3af: "requires must be a valid semver (e.g. 0.14.0)")."""
    value = text.strip()
    value = value[1:] if value[:1] in ("v", "V") else value
    if not re.fullmatch(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?", value):
        raise bad_input(f"REQUIRES {text!r}: requires must be a valid semver (e.g. 0.14.0).")
    return value


def check_capability(text: str) -> str:
    value = text.strip()
    if value not in CAPABILITIES:
        raise bad_input(f'CAPABILITY {text!r}: unknown capability: "{value}" (Ollama answers 400).',
                        "Capabilities: " + ", ".join(CAPABILITIES) + ".")
    return value


def read_modelfile(path: str | os.PathLike) -> ModelfileSpec:
    """Parse a Modelfile on disk (Ollama's grammar) into a :class:`ModelfileSpec`."""
    path = Path(path)
    if not path.is_file():
        raise bad_input(f"Modelfile not found: {path}")
    return spec_from_commands(parse_modelfile(path.read_bytes(), source=str(path)))


# -- rendering ----------------------------------------------------------------------------

def render_modelfile(spec: ModelfileSpec) -> str:
    """Render ``Modelfile.j2`` for ``spec``; parse the result back and demand the same commands.

    Every value goes through :func:`quote_value`; parameters are type-checked first.
    """
    import jinja2

    from ftpack.core.resources import modelfile_template

    for name, text in spec.parameters:
        parameter_value(name, text)
        if "\n" in name or not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise bad_input(f"PARAMETER {name!r}: not a valid parameter name.")
    for role, _ in spec.messages:
        if role not in MESSAGE_ROLES:
            raise bad_input(f"MESSAGE role {role!r}: must be system, user or assistant.")
    env = jinja2.Environment(keep_trailing_newline=True, autoescape=False, undefined=jinja2.StrictUndefined)
    tmpl = env.from_string(modelfile_template().read_text(encoding="utf-8"))
    q = quote_value
    comment_lines = [] if spec.comment is None else spec.comment.splitlines()
    for line in comment_lines:
        if any(not is_go_printable(c) and c != "\t" for c in line):
            raise bad_input("Modelfile comment: contains characters Ollama's parser cannot read.")
    text = tmpl.render(
        comment_lines=comment_lines,
        from_path=q(spec.from_path, "FROM"),
        adapter=None if spec.adapter is None else q(spec.adapter, "ADAPTER"),
        draft=None if spec.draft is None else q(spec.draft, "DRAFT"),
        renderer=None if spec.renderer is None else q(spec.renderer, "RENDERER"),
        parser=None if spec.parser is None else q(spec.parser, "PARSER"),
        requires=None if spec.requires is None else q(spec.requires, "REQUIRES"),
        capabilities=[q(c, "CAPABILITY") for c in spec.capabilities],
        template=None if spec.template is None else q(spec.template, "TEMPLATE"),
        system=None if spec.system is None else q(spec.system, "SYSTEM"),
        parameters=[(n, q(v, f"PARAMETER {n}")) for n, v in spec.parameters],
        messages=[(r, q(c, f"MESSAGE {r}")) for r, c in spec.messages],
        licenses=[q(text, "LICENSE") for text in spec.licenses],
    )
    check_round_trip(text, spec)
    return text


def check_round_trip(text: str, spec: ModelfileSpec) -> None:
    """Parse ``text`` with Ollama's grammar and demand exactly ``spec``'s commands."""
    try:
        got = parse_modelfile(text)
    except ModelfileError as exc:  # a bug in the renderer, not the user's mistake
        raise FtpackError(f"Internal error: the rendered Modelfile does not parse: {exc.message}") from None
    want = spec.commands()
    if got != want:
        diff = next((f"{w} != {g}" for w, g in zip(want, got) if w != g), f"{len(want)} vs {len(got)} commands")
        raise FtpackError(f"Internal error: the rendered Modelfile reads back differently ({diff}).")


def write_modelfile(path: str | os.PathLike, spec: ModelfileSpec) -> Path:
    """Render, verify and atomically write a Modelfile; return its path."""
    from ftpack.core.atomic import write_text

    text = render_modelfile(spec)
    return write_text(path, text)


def relative_from(gguf: str | os.PathLike, modelfile: str | os.PathLike) -> str:
    """The FROM/ADAPTER path of ``gguf`` relative to the Modelfile's folder (``./x`` form)."""
    rel = os.path.relpath(Path(gguf).resolve(), Path(modelfile).resolve().parent)
    rel = rel.replace(os.sep, "/")
    return rel if rel.startswith("../") else f"./{rel}"


def build_spec(gguf: str | os.PathLike, modelfile: str | os.PathLike, *, template_name: str | None = None,
               template: ChatTemplate | None = None,
               system: str | None = None, parameters: Sequence[tuple[str, str]] = (),
               messages: Sequence[tuple[str, str]] = (), license_text: str | None = None,
               adapter: str | os.PathLike | None = None, num_ctx: int | None = None,
               comment: str | None = None) -> ModelfileSpec:
    """The Modelfile for ``gguf`` with a chat format: ``template`` (a build's, as trained) or
    ``template_name`` (one from ``templates/``).

    TEMPLATE (or, for a format Ollama prompts with a built-in renderer, RENDERER and PARSER)
    and one ``PARAMETER stop`` per stop string come from the template entry
    (user ``stop`` parameters are added after them); SYSTEM defaults to the template's
    default system prompt; ``num_ctx`` (the training max length) is used unless the user
    gave one.
    """
    from ftpack.training.templates import load_template

    if (template is None) == (template_name is None):
        raise TypeError("build_spec: give exactly one of template and template_name")
    tmpl = template if template is not None else load_template(template_name)
    user_params = list(parameters)
    params: list[tuple[str, str]] = [("stop", s) for s in tmpl.stop]
    have = {n for n, _ in user_params}
    if num_ctx is not None and "num_ctx" not in have:
        params.append(("num_ctx", str(int(num_ctx))))
    for name, text in user_params:
        if name == "stop" and ("stop", text) in params:
            continue
        params.append((name, text))
    if system is None:
        system = tmpl.default_system or None
    renderer = getattr(tmpl, "ollama_renderer", "") or None  # a built-in renderer replaces TEMPLATE
    # no TEMPLATE either for a format that is the GGUF's own Jinja template: llama-server renders it
    gguf_jinja = bool(getattr(tmpl, "gguf_jinja", ()))
    return ModelfileSpec(
        from_path=relative_from(gguf, modelfile),
        template=None if renderer or gguf_jinja else tmpl.ollama_template,
        renderer=renderer,
        parser=(getattr(tmpl, "ollama_parser", "") or None) if renderer else None,
        system=system,
        parameters=params,
        messages=list(messages),
        licenses=[license_text] if license_text else [],
        adapter=None if adapter is None else relative_from(adapter, modelfile),
        comment=comment,
    )


def spec_to_dict(spec: ModelfileSpec) -> dict[str, Any]:
    """JSON-friendly view (for ``--json`` results)."""
    return {"from": spec.from_path, "adapter": spec.adapter, "renderer": spec.renderer, "parser": spec.parser,
            "requires": spec.requires, "draft": spec.draft, "capabilities": list(spec.capabilities),
            "template": spec.template, "system": spec.system,
            "parameters": [list(p) for p in spec.parameters], "messages": [list(m) for m in spec.messages],
            "license": spec.licenses}


def resolve_path(value: str, modelfile: str | os.PathLike) -> Path:
    """A FROM/ADAPTER path as Ollama resolves it: ``~`` expands, relative to the Modelfile."""
    if value.startswith("~"):
        return Path(os.path.expanduser(value))
    p = Path(value)
    return p if p.is_absolute() else Path(modelfile).resolve().parent / p



# -- the pipeline stage ---------------------------------------------------------------------

def build_spec_of(cfg: Any, layout: Any, gguf: Path, out: Path, *, adapter: Path | None = None,
                  comment: str | None = None) -> ModelfileSpec:
    """The Modelfile a build serves ``gguf`` (+ ``adapter``) with: its chat format as trained
    (:func:`ftpack.training.templates.template_of_build`), the config's SYSTEM, PARAMETERs,
    MESSAGEs, LICENSE file and ``max_seq_length`` as num_ctx; FROM/ADAPTER relative to ``out``."""
    from ftpack.training.templates import template_of_build

    license_text = None
    if cfg.license is not None:
        lic = Path(cfg.license)
        if not lic.is_file():
            raise bad_input(f"License file not found: {lic}")
        license_text = lic.read_text(encoding="utf-8")
    spec = build_spec(gguf, out, template=template_of_build(layout), system=cfg.system,
                      parameters=parse_parameter_args(cfg.parameters or ()),
                      messages=parse_message_args(cfg.messages or ()), license_text=license_text,
                      adapter=adapter, num_ctx=cfg.max_seq_length, comment=comment)
    return inherit_ollama_base(spec, cfg)


def inherit_ollama_base(spec: ModelfileSpec, cfg: Any) -> ModelfileSpec:
    """A model made from an ``ollama:`` base keeps what its config declares beyond the prompt
    format, as Ollama's own ``from`` inherits the base's config (server/create.go@0029bb5):
    REQUIRES and CAPABILITY lines (the renderer and parser come with the chat format)."""
    from ftpack.ollama.base import is_ollama_base, read_ollama_base

    if spec.adapter is not None or not is_ollama_base(getattr(cfg, "base", None)):
        return spec  # (an adapter model is FROM the base model itself: Ollama copies its config)
    ob = read_ollama_base(cfg.base, models_dir=getattr(cfg, "models_dir", None), use_server=False)
    return dataclasses.replace(spec, requires=spec.requires or (ob.requires or None),
                               capabilities=list(dict.fromkeys([*spec.capabilities, *ob.capabilities])))


def run_modelfile_stage(ctx):
    """Stage `modelfile`: write ``ollama/Modelfile`` for the quantized GGUF.

    Reads: ``ctx.upstream_path("quantize")`` (the GGUF; FROM is written relative to the
    Modelfile), the build's chat format as trained
    (:func:`ftpack.training.templates.template_of_build`), config ``system``,
    ``parameters`` (KEY=VALUE), ``messages`` (ROLE:TEXT), ``license`` (a file),
    ``max_seq_length`` (default ``num_ctx``). Writes: ``ollama/Modelfile`` (atomically,
    after parsing it back with Ollama's grammar).
    """
    from ftpack.core.runner import StageResult
    from ftpack.training.templates import template_of_build

    cfg = ctx.config
    template = template_of_build(ctx.layout)
    out = ctx.layout.modelfile
    spec = build_spec_of(cfg, ctx.layout, ctx.upstream_path("quantize"), out,
                         comment=f"Modelfile for {cfg.name}, written by ftpack (chat format: {template.name}).\n"
                                 f"Create the model: ollama create {cfg.name} -f Modelfile")
    path, why = check_prompt_path(spec, ctx.upstream_path("quantize"), template)
    write_modelfile(out, spec)
    ctx.reporter.info(f"wrote {out} (template {template.name}, {len(spec.parameters)} parameters); Ollama prompts "
                      f"it with its {path} path: {why}")
    return StageResult(outputs=[out], main_output=out,
                       metrics={"template": template.name, "from": spec.from_path,
                                "stop": [v for n, v in spec.parameters if n == "stop"],
                                "parameters": spec.typed_parameters(), "prompt_path": path,
                                "prompt_path_reason": why})


def check_prompt_path(spec: ModelfileSpec, gguf: Path, template: Any) -> tuple[str, str]:
    """The prompt path today's Ollama serves ``spec`` + ``gguf`` with (ftpack.ollama.prompt_path),
    which must be the one training rendered: the renderer for a renderer-based format, the
    GGUF's Jinja template (the very one trained) for a format that is that template, the
    TEMPLATE otherwise (its text is the training text). A mismatch is a user error here,
    before anything is registered."""
    from ftpack.gguf.header import read_gguf_header
    from ftpack.ollama.prompt_path import JINJA, RENDERER, TEMPLATE, served_path
    from ftpack.ollama.renderers import ARCHITECTURE_RENDERERS

    header = read_gguf_header(gguf)
    renderer, parser = spec.renderer, spec.parser
    arch = header.get("general.architecture") or ""
    if arch in ARCHITECTURE_RENDERERS and not (renderer and parser):  # what `ollama create` fills in
        renderer = renderer or ARCHITECTURE_RENDERERS[arch][0]
        parser = parser or ARCHITECTURE_RENDERERS[arch][1]
    path, why = served_path(renderer=renderer, parser=parser, go_template=spec.template,
                            gguf_chat_template=header.get("tokenizer.chat_template") or "")
    trained = RENDERER if getattr(template, "ollama_renderer", "") else JINJA if getattr(template, "gguf_jinja", ()) \
        else TEMPLATE
    if trained == JINJA and (header.get("tokenizer.chat_template") or "") != template.gguf_jinja[0]:
        raise FtpackError(f"{gguf} carries another Jinja chat template than the one training rendered, and Ollama "
                          "serves this model with it.", "Run the build again with --force convert.", code=2)
    if path != trained:
        raise FtpackError(f"Ollama would not prompt this model the way it was trained: it would use its {path} path "
                          f"({why}), while training rendered its {trained}.",
                          "Train with one of ftpack's formats (--template NAME), whose GGUF chat template never "
                          "takes over from the TEMPLATE.", code=2)
    return path, why
