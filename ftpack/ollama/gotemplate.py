"""Ollama's TEMPLATE language — Go's ``text/template`` — and Ollama's prompt rendering, in Python.

Why here, in Python: training on an Ollama model's own chat format means rendering its
TEMPLATE exactly as the Ollama server will, for every training conversation. Users of
ftpack have Python, not Go, so requiring a Go toolchain at run time (or shipping a
compiled helper per platform) would make ``--base ollama:NAME`` fail for most of them.
This module is therefore a faithful interpreter of the part of Go's template language
that templates use — the lexer and parser of ``text/template/parse`` (trim markers,
comments, pipelines, variables and their scopes, ``if``/``else if``/``range``/``with``/
``break``/``continue``/``define``/``template``/``block``) and the executor's value
semantics (truth, ``missingkey=zero``, field access on maps and structs, the builtins
``and or not len index slice eq ne lt le gt ge print printf println html urlquery``) — plus
Ollama's own functions (``json currentDate yesterdayDate toTypeScriptType``) and its
``template.Execute`` (messages collated, all system messages joined into ``.System``;
the legacy ``.System``/``.Prompt``/``.Response`` path executed per turn, the last one cut
after ``.Response``). tests/test_gotemplate.py proves it byte-identical to Go's real
``text/template`` (tests/gotemplate, a port of Ollama's template package) on Ollama's
shipped templates and on templates written to exercise every construct above, error
cases included. What it cannot reproduce (``js``, ``call``) is refused, never guessed.

Entry points: :func:`parse_ollama_template` → :class:`OllamaTemplate` whose
:meth:`~OllamaTemplate.render` takes chat messages and returns the prompt text.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence


class GoTemplateError(Exception):
    """A TEMPLATE Go refuses to parse or execute (or one this interpreter cannot run)."""


class UnsupportedTemplate(GoTemplateError):
    """A TEMPLATE Go would run but this interpreter does not (it calls ``js`` or ``call``)."""


# -- values ------------------------------------------------------------------------------

class _Invalid:
    """Go's invalid ``reflect.Value``: a missing value (printed ``<no value>``)."""

    _instance: "_Invalid | None" = None

    def __new__(cls) -> "_Invalid":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<invalid>"


INVALID = _Invalid()
_MISSING = object()  # "no final argument" (Go's missingVal)


@dataclass
class GoStruct:
    """A Go struct pointer (Ollama's template message): fields by name, in order."""

    type_name: str
    fields: dict[str, Any]


class NilSlice(tuple):
    """A typed nil slice (``ToolCalls``, ``Images`` of a message): empty, printed ``[]``,
    JSON ``null``."""


def _go_type(v: Any) -> str:
    if v is None or v is INVALID:
        return "interface {}"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, GoStruct):
        return v.type_name
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if isinstance(v, dict):
        return "map[string]interface {}"
    return type(v).__name__


def _is_true(v: Any) -> tuple[bool, bool]:
    """Go's isTrue: (truth, ok)."""
    if v is INVALID or v is None:
        return False, True
    if isinstance(v, bool):
        return v, True
    if isinstance(v, (int, float)):
        return v != 0, True
    if isinstance(v, (str, list, tuple, dict)):
        return len(v) > 0, True
    if isinstance(v, GoStruct):
        return True, True
    return False, False


def _truth(v: Any) -> bool:
    return _is_true(v)[0]


def _fmt_float(f: float) -> str:
    """fmt's %v of a float64: strconv 'g' with the shortest digits (an exponent when the
    decimal exponent is below -4 or at least 6, as strconv does for the shortest form)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    from decimal import Decimal

    sign, digits, exp = Decimal(repr(f)).normalize().as_tuple()
    ds = "".join(map(str, digits))
    x = exp + len(ds) - 1  # decimal exponent of the first digit
    neg = "-" if sign else ""
    if x < -4 or x >= 6:
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{neg}{mant}e{'-' if x < 0 else '+'}{abs(x):02d}"
    point = x + 1
    if point <= 0:
        return f"{neg}0.{'0' * -point}{ds}"
    if point >= len(ds):
        return f"{neg}{ds}{'0' * (point - len(ds))}"
    return f"{neg}{ds[:point]}.{ds[point:]}"


def _fmt_value(v: Any, top: bool = True) -> str:
    """fmt.Sprint of one value (Go's %v)."""
    if v is INVALID or v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _fmt_float(v)
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_fmt_value(x, False) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{_fmt_value(k, False)}:{_fmt_value(v[k], False)}" for k in sorted(v)) + "]"
    if isinstance(v, GoStruct):  # a struct pointer: &{…} at the top, an address inside a value
        return "&{" + " ".join(_fmt_value(x, False) for x in v.fields.values()) + "}" if top else "0xc000000000"
    return str(v)


def _printed(v: Any) -> str:
    """What ``{{ pipeline }}`` writes (printValue)."""
    if v is INVALID:
        return "<no value>"
    return _fmt_value(v)


def _go_json(v: Any) -> str:
    """json.Marshal: maps with sorted keys, structs in field order, nil slices as null."""
    from ftpack.ollama.gojson import go_json

    if v is INVALID or v is None or isinstance(v, NilSlice):
        return "null"
    if isinstance(v, GoStruct):
        return "{" + ",".join(go_json(k) + ":" + _go_json(x) for k, x in v.fields.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_go_json(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(go_json(str(k)) + ":" + _go_json(v[k]) for k in sorted(v)) + "}"
    return go_json(v)


# -- lexer -------------------------------------------------------------------------------

_SPACE = " \t\r\n"
_KEYWORDS = {"block", "break", "continue", "define", "else", "end", "if", "range", "template", "with", "nil"}


@dataclass
class _Item:
    typ: str  # text left right space ident field var dot string raw charconst number bool nil ( ) | := = char eof, keywords
    val: str
    pos: int


def _alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or unicodedata.category(c) == "Nd"


def _line(src: str, pos: int) -> int:
    return src.count("\n", 0, pos) + 1


def _lex(src: str) -> list[_Item]:
    """Go's text/template lexer (delimiters ``{{`` ``}}``, comments dropped)."""
    items: list[_Item] = []
    n = len(src)
    pos = 0

    def err(msg: str, at: int) -> GoTemplateError:
        return GoTemplateError(f"template: :{_line(src, at)}: {msg}")

    def left_trim_at(p: int) -> bool:  # "- " right after "{{"
        return p + 1 < n and src[p] == "-" and src[p + 1] in _SPACE

    def right_delim_at(p: int) -> tuple[bool, bool]:  # (delimiter, with trim marker " -}}")
        if p + 1 < n and src[p] in _SPACE and src[p + 1] == "-" and src.startswith("}}", p + 2):
            return True, True
        return src.startswith("}}", p), False

    def skip_space(p: int) -> int:
        while p < n and src[p] in _SPACE:
            p += 1
        return p

    while True:
        x = src.find("{{", pos)
        if x < 0:
            if pos < n:
                items.append(_Item("text", src[pos:], pos))
            items.append(_Item("eof", "", n))
            return items
        text = src[pos:x]
        if left_trim_at(x + 2):
            text = text.rstrip(_SPACE)
        if text:
            items.append(_Item("text", text, pos))
        pos = x + 2
        after = 2 if left_trim_at(pos) else 0
        if src.startswith("/*", pos + after):  # comment
            end = src.find("*/", pos + after + 2)
            if end < 0:
                raise err("unclosed comment", pos)
            pos = end + 2
            delim, trim = right_delim_at(pos)
            if not delim:
                raise err("comment ends before closing delimiter", pos)
            pos += (2 if trim else 0) + 2
            if trim:
                pos = skip_space(pos)
            continue
        items.append(_Item("left", "{{", x))
        pos += after
        depth = 0
        while True:  # inside the action
            delim, trim = right_delim_at(pos)
            if delim:
                if depth:
                    raise err("unclosed left paren", pos)
                pos += (2 if trim else 0) + 2
                items.append(_Item("right", "}}", pos))
                if trim:
                    pos = skip_space(pos)
                break
            if pos >= n:
                raise err("unclosed action", pos)
            c = src[pos]
            start = pos
            if c in _SPACE:
                while pos < n and src[pos] in _SPACE:
                    pos += 1
                if right_delim_at(pos - 1) == (True, True):
                    pos -= 1  # the last space belongs to the trim marker
                    if pos == start:
                        continue
                items.append(_Item("space", src[start:pos], start))
            elif c == "=":
                items.append(_Item("=", c, pos))
                pos += 1
            elif c == ":":
                if not src.startswith(":=", pos):
                    raise err("expected :=", pos)
                items.append(_Item(":=", ":=", pos))
                pos += 2
            elif c == "|":
                items.append(_Item("|", c, pos))
                pos += 1
            elif c == '"':
                pos += 1
                while True:
                    if pos >= n or src[pos] == "\n":
                        raise err("unterminated quoted string", start)
                    if src[pos] == "\\":
                        pos += 1
                        if pos >= n or src[pos] == "\n":
                            raise err("unterminated quoted string", start)
                    elif src[pos] == '"':
                        pos += 1
                        break
                    pos += 1
                items.append(_Item("string", src[start:pos], start))
            elif c == "`":
                end = src.find("`", pos + 1)
                if end < 0:
                    raise err("unterminated raw quoted string", start)
                pos = end + 1
                items.append(_Item("raw", src[start:pos], start))
            elif c == "'":
                pos += 1
                while True:
                    if pos >= n or src[pos] == "\n":
                        raise err("unterminated character constant", start)
                    if src[pos] == "\\":
                        pos += 2
                        continue
                    if src[pos] == "'":
                        pos += 1
                        break
                    pos += 1
                items.append(_Item("charconst", src[start:pos], start))
            elif c in "$." and not (c == "." and pos + 1 < n and src[pos + 1] in "0123456789"):
                pos += 1
                typ = "var" if c == "$" else "field"
                if _at_terminator(src, pos):
                    items.append(_Item("var" if c == "$" else "dot", c, start))
                    continue
                while pos < n and _alnum(src[pos]):
                    pos += 1
                if not _at_terminator(src, pos):
                    raise err(f"bad character {_char_name(src, pos)}", pos)
                items.append(_Item(typ, src[start:pos], start))
            elif c in "+-.0123456789":
                pos = _scan_number(src, pos)
                if pos < 0:
                    raise err(f"bad number syntax: {src[start:-pos]!r}", start)
                items.append(_Item("number", src[start:pos], start))
            elif _alnum(c):
                while pos < n and _alnum(src[pos]):
                    pos += 1
                word = src[start:pos]
                if not _at_terminator(src, pos):
                    raise err(f"bad character {_char_name(src, pos)}", pos)
                if word in _KEYWORDS:
                    items.append(_Item(word, word, start))
                elif word in ("true", "false"):
                    items.append(_Item("bool", word, start))
                else:
                    items.append(_Item("ident", word, start))
            elif c == "(":
                depth += 1
                items.append(_Item("(", c, pos))
                pos += 1
            elif c == ")":
                depth -= 1
                if depth < 0:
                    raise err("unexpected right paren", pos)
                items.append(_Item(")", c, pos))
                pos += 1
            elif ord(c) < 128 and c.isprintable():
                items.append(_Item("char", c, pos))
                pos += 1
            else:
                raise err(f"unrecognized character in action: {_char_name(src, pos)}", pos)


def _char_name(src: str, pos: int) -> str:
    return f"U+{ord(src[pos]):04X} {src[pos]!r}" if pos < len(src) else "EOF"


def _at_terminator(src: str, pos: int) -> bool:
    if pos >= len(src):
        return True
    c = src[pos]
    return c in _SPACE or c in ".,|:)(" or src.startswith("}}", pos)


def _scan_number(src: str, pos: int) -> int:
    """Go's scanNumber: the end position, or -(end) for bad syntax."""
    n = len(src)

    def accept(chars: str) -> bool:
        nonlocal pos
        if pos < n and src[pos] in chars:
            pos += 1
            return True
        return False

    def accept_run(chars: str) -> None:
        nonlocal pos
        while pos < n and src[pos] in chars:
            pos += 1

    accept("+-")
    digits = "0123456789_"
    if accept("0"):
        if accept("xX"):
            digits = "0123456789abcdefABCDEF_"
        elif accept("oO"):
            digits = "01234567_"
        elif accept("bB"):
            digits = "01_"
    accept_run(digits)
    if accept("."):
        accept_run(digits)
    if len(digits) == 11 and accept("eE"):
        accept("+-")
        accept_run("0123456789_")
    if len(digits) == 23 and accept("pP"):
        accept("+-")
        accept_run("0123456789_")
    accept("i")
    if pos < n and _alnum(src[pos]):
        return -(pos + 1)
    return pos


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\",
            "'": "'", '"': '"'}


def _unquote(text: str) -> str:
    """strconv.Unquote for "…" and `…` literals."""
    if text[0] == "`":
        return text[1:-1].replace("\r", "")
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        i += 1
        e = body[i] if i < len(body) else ""
        if e in _ESCAPES and e != "'":
            out.append(_ESCAPES[e])
            i += 1
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            hexits = body[i + 1:i + 1 + width]
            if len(hexits) != width or any(h not in "0123456789abcdefABCDEF" for h in hexits):
                raise GoTemplateError(f"template: invalid syntax in {text}")
            code = int(hexits, 16)
            out.append(chr(code) if e != "x" else bytes([code]).decode("latin-1"))
            i += 1 + width
        elif e in "01234567":
            octal = body[i:i + 3]
            if len(octal) != 3 or any(o not in "01234567" for o in octal) or int(octal, 8) > 255:
                raise GoTemplateError(f"template: invalid syntax in {text}")
            out.append(chr(int(octal, 8)))
            i += 3
        else:
            raise GoTemplateError(f"template: invalid syntax in {text}")
    return "".join(out)


def _char_value(text: str) -> int:
    inner = text[1:-1]
    value = _unquote('"' + inner.replace('"', '\\"') + '"') if inner != "\\'" else "'"
    if len(value) != 1:
        raise GoTemplateError(f"template: malformed character constant: {text}")
    return ord(value)


def _number_value(text: str) -> int | float:
    if text.startswith("'"):
        return _char_value(text)
    if text.endswith("i"):
        raise GoTemplateError(f"template: complex constants are not supported: {text}")
    clean = text.replace("_", "")
    try:
        if any(c in clean.lower() for c in ".ep") and not clean.lower().lstrip("+-").startswith("0x"):
            return float(clean)
        return int(clean, 0) if not _leading_zero_octal(clean) else int(clean.lstrip("+-"), 8) * (
            -1 if clean.startswith("-") else 1)
    except ValueError:
        try:
            return float.fromhex(clean)
        except ValueError:
            raise GoTemplateError(f"template: illegal number syntax: {text!r}") from None


def _leading_zero_octal(text: str) -> bool:
    digits = text.lstrip("+-")
    return len(digits) > 1 and digits[0] == "0" and digits[1].isdigit()


# -- parse tree ----------------------------------------------------------------------------

@dataclass
class TextNode:
    text: str


@dataclass
class FieldNode:
    ident: list[str]


@dataclass
class VariableNode:
    ident: list[str]


@dataclass
class ChainNode:
    node: Any
    fields: list[str]


@dataclass
class IdentifierNode:
    name: str


@dataclass
class DotNode:
    pass


@dataclass
class NilNode:
    pass


@dataclass
class BoolNode:
    value: bool


@dataclass
class NumberNode:
    value: int | float
    text: str


@dataclass
class StringNode:
    value: str


@dataclass
class CommandNode:
    args: list[Any]


@dataclass
class PipeNode:
    decl: list[str]
    is_assign: bool
    cmds: list[CommandNode]


@dataclass
class ActionNode:
    pipe: PipeNode


@dataclass
class ListNode:
    nodes: list[Any] = field(default_factory=list)


@dataclass
class BranchNode:
    """``if``, ``range`` or ``with``: Go's IfNode/RangeNode/WithNode around a BranchNode."""

    kind: str
    pipe: PipeNode
    list: ListNode
    else_list: ListNode | None


@dataclass
class TemplateNode:
    name: str
    pipe: PipeNode | None


@dataclass
class BreakNode:
    pass


@dataclass
class ContinueNode:
    pass


@dataclass
class _End:
    pass


@dataclass
class _Else:
    pass


#: Go's builtin functions (the parser knows these names).
BUILTINS = ("and", "call", "html", "index", "slice", "js", "len", "not", "or", "print", "printf", "println",
            "urlquery", "eq", "ge", "gt", "le", "lt", "ne")
#: Functions Ollama's template package adds.
OLLAMA_FUNCS = ("json", "currentDate", "yesterdayDate", "toTypeScriptType")


class _Parser:
    """Go's text/template/parse, producing the same tree shapes."""

    def __init__(self, src: str, funcs: Sequence[str]):
        self.src = src
        self.items = _lex(src)
        self.i = 0
        self.funcs = set(funcs) | set(BUILTINS)
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.templates: dict[str, ListNode] = {}

    # token access (spaces are tokens inside actions, as in Go)
    def next(self) -> _Item:
        item = self.items[self.i]
        self.i += 1
        return item

    def backup(self, n: int = 1) -> None:
        self.i -= n

    def peek(self) -> _Item:
        return self.items[self.i]

    def next_non_space(self) -> _Item:
        item = self.next()
        while item.typ == "space":
            item = self.next()
        return item

    def peek_non_space(self) -> _Item:
        j = self.i
        while self.items[j].typ == "space":
            j += 1
        return self.items[j]

    def error(self, msg: str, item: _Item | None = None) -> GoTemplateError:
        at = item.pos if item is not None else self.items[min(self.i, len(self.items) - 1)].pos
        return GoTemplateError(f"template: :{_line(self.src, at)}: {msg}")

    def unexpected(self, item: _Item, context: str) -> GoTemplateError:
        shown = "EOF" if item.typ == "eof" else f"<{item.val}>" if item.typ in _KEYWORDS else repr(item.val)
        return self.error(f"unexpected {shown} in {context}", item)

    # top level
    def parse(self) -> tuple[ListNode, dict[str, ListNode]]:
        root = ListNode()
        while self.peek().typ != "eof":
            if self.peek().typ == "left":
                save = self.i
                self.next()
                if self.next_non_space().typ == "define":
                    self.parse_definition()
                    continue
                self.i = save
            node = self.text_or_action()
            if isinstance(node, (_End, _Else)):
                raise self.error(f"unexpected {{{{{'end' if isinstance(node, _End) else 'else'}}}}}")
            root.nodes.append(node)
        return root, self.templates

    def parse_definition(self) -> None:
        name_item = self.next_non_space()
        if name_item.typ not in ("string", "raw"):
            raise self.unexpected(name_item, "define clause")
        name = _unquote(name_item.val)
        if self.next_non_space().typ != "right":
            raise self.error("unexpected token in define clause")
        saved_vars = self.vars
        self.vars = ["$"]
        body, end = self.item_list()
        self.vars = saved_vars
        if not isinstance(end, _End):
            raise self.error(f"unexpected {end} in definition")
        self._add_template(name, body)

    def _add_template(self, name: str, body: ListNode) -> None:
        old = self.templates.get(name)
        if old is not None and not _is_empty(old) and not _is_empty(body):
            raise self.error(f"template: multiple definition of template {name!r}")
        if old is None or _is_empty(old):
            self.templates[name] = body

    def item_list(self) -> tuple[ListNode, Any]:
        out = ListNode()
        while self.peek_non_space().typ != "eof":
            node = self.text_or_action()
            if isinstance(node, (_End, _Else)):
                return out, node
            out.nodes.append(node)
        raise self.error("unexpected EOF")

    def text_or_action(self) -> Any:
        item = self.next_non_space()
        if item.typ == "text":
            return TextNode(item.val)
        if item.typ == "left":
            return self.action()
        raise self.unexpected(item, "input")

    def action(self) -> Any:
        item = self.next_non_space()
        kind = item.typ
        if kind == "block":
            return self.block_control()
        if kind in ("break", "continue"):
            closing = self.next_non_space()
            if closing.typ != "right":
                raise self.unexpected(closing, f"{{{{{kind}}}}}")
            if self.range_depth == 0:
                raise self.error(f"{{{{{kind}}}}} outside {{{{range}}}}", item)
            return BreakNode() if kind == "break" else ContinueNode()
        if kind == "else":
            peek = self.peek_non_space()
            if peek.typ in ("if", "with"):
                return _Else()  # "else if"/"else with": the if/with stays pending
            closing = self.next_non_space()
            if closing.typ != "right":
                raise self.error("unexpected token in else", closing)
            return _Else()
        if kind == "end":
            closing = self.next_non_space()
            if closing.typ != "right":
                raise self.unexpected(closing, "end")
            return _End()
        if kind in ("if", "range", "with"):
            return self.control(kind)
        if kind == "template":
            return self.template_control()
        self.backup()
        return ActionNode(self.pipeline("command", "right"))

    def control(self, context: str) -> BranchNode:
        depth = len(self.vars)
        pipe = self.pipeline(context, "right")
        if context == "range":
            self.range_depth += 1
        body, nxt = self.item_list()
        if context == "range":
            self.range_depth -= 1
        else_list = None
        if isinstance(nxt, _Else):
            if context in ("if", "with") and self.peek_non_space().typ == context:
                self.next_non_space()
                else_list = ListNode([self.control(context)])
            else:
                else_list, nxt = self.item_list()
                if not isinstance(nxt, _End):
                    raise self.error("expected end; found {{else}}")
        del self.vars[depth:]
        return BranchNode(context, pipe, body, else_list)

    def block_control(self) -> TemplateNode:
        name_item = self.next_non_space()
        if name_item.typ not in ("string", "raw"):
            raise self.unexpected(name_item, "block clause")
        name = _unquote(name_item.val)
        pipe = self.pipeline("block clause", "right")
        saved_vars, saved_depth = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        body, end = self.item_list()
        self.vars, self.range_depth = saved_vars, saved_depth
        if not isinstance(end, _End):
            raise self.error("unexpected {{else}} in block clause")
        self._add_template(name, body)
        return TemplateNode(name, pipe)

    def template_control(self) -> TemplateNode:
        name_item = self.next_non_space()
        if name_item.typ not in ("string", "raw"):
            raise self.unexpected(name_item, "template clause")
        name = _unquote(name_item.val)
        pipe = None
        if self.next_non_space().typ != "right":
            self.backup()
            pipe = self.pipeline("template clause", "right")
        return TemplateNode(name, pipe)

    def pipeline(self, context: str, end: str) -> PipeNode:
        pipe = PipeNode([], False, [])
        while True:  # declarations
            v = self.peek_non_space()
            if v.typ != "var":
                break
            start = self.i
            self.next_non_space()
            nxt = self.peek_non_space()
            if nxt.typ in ("=", ":="):
                pipe.is_assign = nxt.typ == "="
                self.next_non_space()
                pipe.decl.append(v.val)
                self.vars.append(v.val)
                break
            if nxt.typ == "char" and nxt.val == ",":
                self.next_non_space()
                pipe.decl.append(v.val)
                self.vars.append(v.val)
                if context == "range" and len(pipe.decl) < 2:
                    if self.peek_non_space().typ in ("var", "right", ")"):
                        continue
                    raise self.error("range can only initialize variables")
                raise self.error(f"too many declarations in {context}")
            self.i = start
            break
        while True:
            item = self.next_non_space()
            if item.typ == end:
                self.check_pipeline(pipe, context)
                return pipe
            if item.typ in ("bool", "charconst", "dot", "field", "ident", "number", "nil", "raw", "string", "var",
                            "("):
                self.backup()
                pipe.cmds.append(self.command())
            else:
                raise self.unexpected(item, context)

    def check_pipeline(self, pipe: PipeNode, context: str) -> None:
        if not pipe.cmds:
            raise self.error(f"missing value for {context}")
        for i, cmd in enumerate(pipe.cmds[1:], start=1):
            if isinstance(cmd.args[0], (BoolNode, DotNode, NilNode, NumberNode, StringNode)):
                raise self.error(f"non executable command in pipeline stage {i + 1}")

    def command(self) -> CommandNode:
        cmd = CommandNode([])
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            item = self.next()
            if item.typ == "space":
                continue
            if item.typ in ("right", ")"):
                self.backup()
            elif item.typ != "|":
                raise self.unexpected(item, "operand")
            break
        if not cmd.args:
            raise self.error("empty command")
        return cmd

    def operand(self) -> Any:
        node = self.term()
        if node is None:
            return None
        if self.peek().typ == "field":
            fields = []
            while self.peek().typ == "field":
                fields.append(self.next().val[1:])
            if isinstance(node, FieldNode):
                return FieldNode(node.ident + fields)
            if isinstance(node, VariableNode):
                return VariableNode(node.ident + fields)
            if isinstance(node, (BoolNode, StringNode, NumberNode, NilNode, DotNode)):
                raise self.error("unexpected . after term")
            return ChainNode(node, fields)
        return node

    def term(self) -> Any:
        item = self.next_non_space()
        t = item.typ
        if t == "ident":
            if item.val not in self.funcs:
                raise self.error(f"function {item.val!r} not defined", item)
            return IdentifierNode(item.val)
        if t == "dot":
            return DotNode()
        if t == "nil":
            return NilNode()
        if t == "var":
            name = item.val.split(".")[0]
            if name not in self.vars:
                raise self.error(f"undefined variable {name!r}", item)
            return VariableNode([name])
        if t == "field":
            return FieldNode([item.val[1:]])
        if t == "bool":
            return BoolNode(item.val == "true")
        if t in ("charconst", "number"):
            return NumberNode(_number_value(item.val), item.val)
        if t == "(":
            return self.pipeline("parenthesized pipeline", ")")
        if t in ("string", "raw"):
            return StringNode(_unquote(item.val))
        self.backup()
        return None


def _is_empty(node: Any) -> bool:
    if isinstance(node, ListNode):
        return all(_is_empty(n) for n in node.nodes)
    if isinstance(node, TextNode):
        return not node.text.strip(_SPACE)
    return False


def parse(src: str, funcs: Sequence[str] = OLLAMA_FUNCS) -> tuple[ListNode, dict[str, ListNode]]:
    """Parse a Go template: (root list, templates it defines)."""
    return _Parser(src, funcs).parse()


# -- execution -----------------------------------------------------------------------------

class _Break(Exception):
    pass


class _Continue(Exception):
    pass


@dataclass
class _Func:
    fixed: tuple[str, ...]  # argument kinds: "value" (reflect.Value), "any", "string"
    variadic: str | None
    fn: Callable[..., Any]
    returns_error: bool = False


class _FuncError(Exception):
    pass


def _indirect(v: Any) -> Any:
    return INVALID if v is None else v


def _basic_kind(v: Any) -> str:
    """text/template's basicKind: the kind comparisons work on ("invalid" for the rest)."""
    return "invalid" if v is None or v is INVALID else {
        "bool": "bool", "int": "int", "float64": "float", "string": "string"}.get(_go_type(v), "invalid")


def _eq(a: Any, *bs: Any) -> bool:
    a = _indirect(a)
    if not bs:
        raise _FuncError("missing argument for comparison")
    k1 = _basic_kind(a)
    for b in bs:
        b = _indirect(b)
        k2 = _basic_kind(b)
        if k1 != k2:
            if a is not INVALID and b is not INVALID:
                raise _FuncError("incompatible types for comparison")
            truth = False
        elif k1 != "invalid":
            truth = a == b
        else:
            if isinstance(a, (list, tuple, dict)) or isinstance(b, (list, tuple, dict)):
                raise _FuncError(f"non-comparable types {_fmt_value(a)}: {_go_type(a)}, {_go_type(b)}: "
                                 f"{_fmt_value(b)}")
            truth = a is b
        if truth:
            return True
    return False


def _lt(a: Any, b: Any) -> bool:
    a, b = _indirect(a), _indirect(b)
    k1, k2 = _basic_kind(a), _basic_kind(b)
    if k1 == "invalid" or k2 == "invalid":
        raise _FuncError("invalid type for comparison")
    if k1 != k2:
        raise _FuncError("incompatible types for comparison")
    if k1 == "bool":
        raise _FuncError("invalid type for comparison")
    return a < b


def _index_arg(i: Any, cap: int) -> int:
    i = _indirect(i)
    if i is INVALID:
        raise _FuncError("cannot index slice/array with nil")
    if isinstance(i, bool) or not isinstance(i, int):
        raise _FuncError(f"cannot index slice/array with type {_go_type(i)}")
    if i < 0 or i > cap:
        raise _FuncError(f"index out of range: {i}")
    return i


def _index(item: Any, *indexes: Any) -> Any:
    item = _indirect(item)
    if item is INVALID:
        raise _FuncError("index of untyped nil")
    for idx in indexes:
        idx = _indirect(idx)
        if item is INVALID:
            raise _FuncError("index of nil pointer")
        if isinstance(item, (list, tuple, str)):
            seq = item.encode("utf-8") if isinstance(item, str) else item
            x = _index_arg(idx, len(seq))
            if x >= len(seq):
                raise _FuncError(f"reflect: slice index out of range")
            item = seq[x]
        elif isinstance(item, dict):
            key = "" if idx is INVALID else idx
            if not isinstance(key, str):
                raise _FuncError(f"value has type {_go_type(key)}; should be string")
            item = item.get(key)
        else:
            raise _FuncError(f"can't index item of type {_go_type(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    item = _indirect(item)
    if item is INVALID:
        raise _FuncError("slice of untyped nil")
    if len(indexes) > 3:
        raise _FuncError(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise _FuncError("cannot 3-index slice a string")
        seq: Any = item.encode("utf-8")
    elif isinstance(item, (list, tuple)):
        seq = item
    else:
        raise _FuncError(f"can't slice item of type {_go_type(item)}")
    idx = [0, len(seq), len(seq)]
    for i, x in enumerate(indexes):
        idx[i] = _index_arg(x, len(seq))
    if idx[0] > idx[1]:
        raise _FuncError(f"invalid slice index: {idx[0]} > {idx[1]}")
    if len(indexes) == 3 and idx[1] > idx[2]:
        raise _FuncError(f"invalid slice index: {idx[1]} > {idx[2]}")
    out = seq[idx[0]:idx[1]]
    if isinstance(item, str):
        return out.decode("utf-8", errors="surrogateescape")
    return type(item)(out) if isinstance(item, NilSlice) else list(out)


def _length(item: Any) -> int:
    if item is None:
        raise _FuncError("len of nil pointer")
    if isinstance(item, str):
        return len(item.encode("utf-8"))
    if isinstance(item, (list, tuple, dict)):
        return len(item)
    raise _FuncError(f"len of type {_go_type(item)}")


def _sprint(*args: Any) -> str:
    out, prev_string = [], False
    for i, a in enumerate(args):
        is_string = isinstance(a, str)
        if i > 0 and not is_string and not prev_string:
            out.append(" ")
        out.append(_fmt_value(a))
        prev_string = is_string
    return "".join(out)


def _sprintln(*args: Any) -> str:
    return " ".join(_fmt_value(a) for a in args) + "\n"


def _go_quote(s: str) -> str:
    """strconv.Quote."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                        "\v": "\\v"}[ch])
        elif 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif o < 0x10000:
            out.append(f"\\x{o:02x}" if o < 0x80 else f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "".join(out) + '"'


def _sprintf(fmt: str, *args: Any) -> str:
    """fmt.Sprintf for the verbs templates use (v s d q t f e g x X c %), flags - + # 0 space,
    width and precision; Go's %!verb(…) forms for mismatches."""
    out: list[str] = []
    i, argn, n = 0, 0, len(fmt)
    while i < n:
        c = fmt[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        i += 1
        flags = ""
        while i < n and fmt[i] in "-+# 0":
            flags += fmt[i]
            i += 1
        width = ""
        while i < n and fmt[i].isdigit():
            width += fmt[i]
            i += 1
        prec = None
        if i < n and fmt[i] == ".":
            i += 1
            p = ""
            while i < n and fmt[i].isdigit():
                p += fmt[i]
                i += 1
            prec = int(p or 0)
        if i >= n:
            out.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            out.append("%")
            continue
        if argn >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[argn]
        argn += 1
        out.append(_pad(_format_one(verb, arg, flags, prec), flags, width))
    if argn < len(args):
        extra = ", ".join(f"{_go_type(a)}={_fmt_value(a)}" if a is not None else "<nil>" for a in args[argn:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _pad(s: str, flags: str, width: str) -> str:
    if not width:
        return s
    w = int(width)
    if len(s) >= w:
        return s
    if "-" in flags:
        return s + " " * (w - len(s))
    if "0" in flags and s[:1] in "+-" and s[1:].replace(".", "").isdigit():
        return s[0] + "0" * (w - len(s)) + s[1:]
    if "0" in flags and s.replace(".", "").isdigit():
        return "0" * (w - len(s)) + s
    return " " * (w - len(s)) + s


def _format_one(verb: str, arg: Any, flags: str, prec: int | None) -> str:
    bad = f"%!{verb}({_go_type(arg)}={_fmt_value(arg)})" if arg is not None else f"%!{verb}(<nil>)"
    if verb == "v":
        return _fmt_value(arg)
    if verb == "s":
        if isinstance(arg, (int, float, bool)) and not isinstance(arg, str):
            return bad
        s = _fmt_value(arg)
        return s[:prec] if prec is not None else s
    if verb == "q":
        if isinstance(arg, str):
            return _go_quote(arg)
        if isinstance(arg, int) and not isinstance(arg, bool):
            return "'" + chr(arg) + "'"
        return bad
    if verb == "t":
        return ("true" if arg else "false") if isinstance(arg, bool) else bad
    if verb in "dxXoc":
        if isinstance(arg, bool) or not isinstance(arg, int):
            if verb in "xX" and isinstance(arg, str):
                h = arg.encode("utf-8").hex()
                return h.upper() if verb == "X" else h
            return bad
        if verb == "c":
            return chr(arg)
        body = {"d": str(abs(arg)), "x": format(abs(arg), "x"), "X": format(abs(arg), "X"),
                "o": format(abs(arg), "o")}[verb]
        sign = "-" if arg < 0 else ("+" if "+" in flags else (" " if " " in flags else ""))
        return sign + body
    if verb in "feEgG":
        if isinstance(arg, bool) or not isinstance(arg, (int, float)) or isinstance(arg, int):
            return bad
        if verb in "gG" and prec is None:
            s = _fmt_float(arg)
            return s.upper() if verb == "G" else s
        spec = ("+" if "+" in flags else "") + f".{6 if prec is None else prec}{verb}"
        s = format(arg, spec)
        if verb in "eE":  # Go: at least two exponent digits, like Python
            pass
        return s
    return bad


def _html_escape(s: str) -> str:
    return (s.replace("&", "&amp;").replace("'", "&#39;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&#34;").replace("\0", "\ufffd"))


def _eval_args_text(args: Sequence[Any]) -> str:
    """text/template's evalArgs: one string as is, else Sprint with nil shown as <no value>."""
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return _sprint(*("<no value>" if a is None or a is INVALID else a for a in args))


def _query_escape(s: str) -> str:
    out = []
    for b in s.encode("utf-8"):
        c = chr(b)
        if c.isascii() and (c.isalnum() or c in "-_.~"):
            out.append(c)
        elif c == " ":
            out.append("+")
        else:
            out.append(f"%{b:02X}")
    return "".join(out)


def _unsupported(name: str) -> Callable[..., Any]:
    def fn(*args: Any) -> Any:
        raise UnsupportedTemplate(f"the template calls {name}, which ftpack's renderer does not implement")
    return fn


def _builtins() -> dict[str, _Func]:
    return {
        "and": _Func(("value",), "value", lambda *a: a[-1]),  # short-circuit evaluation in _call
        "or": _Func(("value",), "value", lambda *a: a[-1]),
        "not": _Func(("value",), None, lambda a: not _truth(a)),
        "len": _Func(("value",), None, _length, True),
        "index": _Func(("value",), "value", _index, True),
        "slice": _Func(("value",), "value", _slice, True),
        "eq": _Func(("value",), "value", _eq, True),
        "ne": _Func(("value", "value"), None, lambda a, b: not _eq(a, b), True),
        "lt": _Func(("value", "value"), None, _lt, True),
        "le": _Func(("value", "value"), None, lambda a, b: _lt(a, b) or _eq(a, b), True),
        "gt": _Func(("value", "value"), None, lambda a, b: not (_lt(a, b) or _eq(a, b)), True),
        "ge": _Func(("value", "value"), None, lambda a, b: not _lt(a, b), True),
        "print": _Func((), "any", _sprint),
        "printf": _Func(("string",), "any", _sprintf),
        "println": _Func((), "any", _sprintln),
        "html": _Func((), "any", lambda *a: _html_escape(_eval_args_text(a))),
        "urlquery": _Func((), "any", lambda *a: _query_escape(_eval_args_text(a))),
        "js": _Func((), "any", _unsupported("js")),
        "call": _Func(("value",), "value", _unsupported("call")),
    }


def _ollama_funcs(today: _dt.date | None = None) -> dict[str, _Func]:
    def day(offset: int) -> str:
        return ((today or _dt.date.today()) + _dt.timedelta(days=offset)).strftime("%Y-%m-%d")

    return {
        "json": _Func(("any",), None, _go_json),
        "currentDate": _Func((), "string", lambda *a: day(0)),
        "yesterdayDate": _Func((), "string", lambda *a: day(-1)),
        "toTypeScriptType": _Func(("any",), None, lambda v: "any"),
    }


class _State:
    """One execution: Go's exec.state (variable stack, output, templates, functions)."""

    def __init__(self, templates: Mapping[str, ListNode], funcs: Mapping[str, _Func], missingkey_zero: bool,
                 data: Any):
        self.templates = templates
        self.funcs = funcs
        self.builtins = _builtins()
        self.missingkey_zero = missingkey_zero
        self.vars: list[list[Any]] = [["$", data]]
        self.out: list[str] = []
        self.depth = 0

    def error(self, msg: str) -> GoTemplateError:
        return GoTemplateError(f"template: executing: {msg}")

    # variables
    def push(self, name: str, value: Any) -> None:
        self.vars.append([name, value])

    def pop(self, mark: int) -> None:
        del self.vars[mark:]

    def set_var(self, name: str, value: Any) -> None:
        for v in reversed(self.vars):
            if v[0] == name:
                v[1] = value
                return
        raise self.error(f"undefined variable: {name}")

    def var_value(self, name: str) -> Any:
        for v in reversed(self.vars):
            if v[0] == name:
                return v[1]
        raise self.error(f"undefined variable: {name}")

    # walking
    def walk(self, dot: Any, node: Any) -> None:
        if isinstance(node, ListNode):
            for n in node.nodes:
                self.walk(dot, n)
        elif isinstance(node, TextNode):
            self.out.append(node.text)
        elif isinstance(node, ActionNode):
            val = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.out.append(_printed(val))
        elif isinstance(node, BranchNode):
            if node.kind == "range":
                self.walk_range(dot, node)
            else:
                mark = len(self.vars)
                val = self.eval_pipeline(dot, node.pipe)
                truth, ok = _is_true(val)
                if not ok:
                    raise self.error(f"if/with can't use {_fmt_value(val)}")
                if truth:
                    self.walk(val if node.kind == "with" else dot, node.list)
                elif node.else_list is not None:
                    self.walk(dot, node.else_list)
                self.pop(mark)
        elif isinstance(node, TemplateNode):
            body = self.templates.get(node.name)
            if body is None:
                raise self.error(f"template {node.name!r} not defined")
            if self.depth >= 100000:
                raise self.error("exceeded maximum template depth")
            new_dot = self.eval_pipeline(dot, node.pipe) if node.pipe is not None else INVALID
            saved = self.vars
            self.vars = [["$", new_dot]]
            self.depth += 1
            try:
                self.walk(new_dot, body)
            finally:
                self.depth -= 1
                self.vars = saved
        elif isinstance(node, BreakNode):
            raise _Break()
        elif isinstance(node, ContinueNode):
            raise _Continue()
        else:  # pragma: no cover - the parser makes nothing else
            raise self.error(f"unknown node: {node!r}")

    def walk_range(self, dot: Any, node: BranchNode) -> None:
        mark = len(self.vars)
        val = self.eval_pipeline(dot, node.pipe)
        val = INVALID if val is None else val
        inner = len(self.vars)
        decl, is_assign = node.pipe.decl, node.pipe.is_assign

        def one(index: Any, elem: Any) -> None:
            if decl:
                if is_assign:
                    self.set_var(decl[0], index if len(decl) > 1 else elem)
                else:
                    self.vars[-1][1] = elem
            if len(decl) > 1:
                if is_assign:
                    self.set_var(decl[1], elem)
                else:
                    self.vars[-2][1] = index
            try:
                self.walk(elem, node.list)
            except _Continue:
                pass
            finally:
                self.pop(inner)

        try:
            if isinstance(val, (list, tuple)):
                if val:
                    for i, e in enumerate(val):
                        one(i, e)
                    return
            elif isinstance(val, dict):
                if val:
                    for k in sorted(val):
                        one(k, val[k])
                    return
            elif isinstance(val, int) and not isinstance(val, bool):
                if len(decl) > 1:
                    raise self.error(f"can't use {val} to iterate over more than one variable")
                if val > 0:
                    for i in range(val):
                        one(i, i)
                    return
            elif val is not INVALID:
                raise self.error(f"range can't iterate over {_fmt_value(val)}")
            if node.else_list is not None:
                self.walk(dot, node.else_list)
        except _Break:
            pass
        finally:
            self.pop(mark)

    # evaluation
    def eval_pipeline(self, dot: Any, pipe: PipeNode | None) -> Any:
        if pipe is None:
            return INVALID
        value: Any = _MISSING
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
            if value is None:  # an interface holding nil: dig down to the invalid value
                value = INVALID
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(name, value)
            else:
                self.push(name, value)
        return value

    def not_a_function(self, args: Sequence[Any], final: Any) -> None:
        if len(args) > 1 or final is not _MISSING:
            raise self.error(f"can't give argument to non-function {args[0]!r}")

    def eval_command(self, dot: Any, cmd: CommandNode, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, FieldNode):
            return self.eval_field_chain(dot, dot, first.ident, cmd.args, final)
        if isinstance(first, ChainNode):
            return self.eval_chain(dot, first, cmd.args, final)
        if isinstance(first, IdentifierNode):
            return self.eval_function(dot, first, cmd.args, final)
        if isinstance(first, PipeNode):
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        if isinstance(first, VariableNode):
            return self.eval_variable(dot, first, cmd.args, final)
        self.not_a_function(cmd.args, final)
        if isinstance(first, BoolNode):
            return first.value
        if isinstance(first, DotNode):
            return dot
        if isinstance(first, NilNode):
            raise self.error("nil is not a command")
        if isinstance(first, NumberNode):
            return first.value
        if isinstance(first, StringNode):
            return first.value
        raise self.error(f"can't evaluate command {first!r}")  # pragma: no cover

    def eval_chain(self, dot: Any, chain: ChainNode, args: Sequence[Any] | None, final: Any) -> Any:
        if isinstance(chain.node, NilNode):
            raise self.error("indirection through explicit nil")
        receiver = self.eval_arg(dot, None, chain.node)
        return self.eval_field_chain(dot, receiver, chain.fields, args, final)

    def eval_variable(self, dot: Any, var: VariableNode, args: Sequence[Any] | None, final: Any) -> Any:
        value = self.var_value(var.ident[0])
        if len(var.ident) == 1:
            self.not_a_function(args or [var], final)
            return value
        return self.eval_field_chain(dot, value, var.ident[1:], args, final)

    def eval_field_chain(self, dot: Any, receiver: Any, ident: Sequence[str], args: Sequence[Any] | None,
                         final: Any) -> Any:
        for name in ident[:-1]:
            receiver = self.eval_field(name, None, _MISSING, receiver)
        return self.eval_field(ident[-1], args, final, receiver)

    def eval_field(self, name: str, args: Sequence[Any] | None, final: Any, receiver: Any) -> Any:
        if receiver is INVALID:
            return INVALID
        has_args = (args is not None and len(args) > 1) or final is not _MISSING
        if receiver is None:
            raise self.error(f"nil pointer evaluating interface {{}}.{name}")
        if isinstance(receiver, GoStruct):
            if name in receiver.fields:
                if has_args:
                    raise self.error(f"{name} has arguments but cannot be invoked as function")
                return receiver.fields[name]
            raise self.error(f"can't evaluate field {name} in type {receiver.type_name}")
        if isinstance(receiver, dict):
            if has_args:
                raise self.error(f"{name} is not a method but has arguments")
            if name in receiver:
                return receiver[name]
            return None if self.missingkey_zero else INVALID
        raise self.error(f"can't evaluate field {name} in type {_go_type(receiver)}")

    def lookup(self, name: str) -> tuple[_Func, bool]:
        if name in self.funcs:
            return self.funcs[name], False
        if name in self.builtins:
            return self.builtins[name], True
        raise self.error(f"{name!r} is not a defined function")

    def eval_function(self, dot: Any, node: IdentifierNode, args: Sequence[Any] | None, final: Any) -> Any:
        fn, builtin = self.lookup(node.name)
        return self.call(dot, node.name, fn, builtin, list(args[1:]) if args is not None else [], final)

    def call(self, dot: Any, name: str, fn: _Func, builtin: bool, args: list[Any], final: Any) -> Any:
        num_in = len(args) + (0 if final is _MISSING else 1)
        if fn.variadic is not None:
            if num_in < len(fn.fixed):
                raise self.error(f"wrong number of args for {name}: want at least {len(fn.fixed)} got {num_in}")
        elif num_in != len(fn.fixed):
            raise self.error(f"wrong number of args for {name}: want {len(fn.fixed)} got {num_in}")
        if builtin and name in ("and", "or"):
            v: Any = INVALID
            for a in args:
                v = self.eval_arg(dot, "value", a)
                if _truth(v) == (name == "or"):
                    return v
            if final is not _MISSING:
                v = final
            return v
        argv = []
        for i, a in enumerate(args):
            argv.append(self.eval_arg(dot, fn.fixed[i] if i < len(fn.fixed) else fn.variadic, a))
        if final is not _MISSING:
            kind = fn.fixed[num_in - 1] if num_in - 1 < len(fn.fixed) else fn.variadic
            argv.append(self.validate(final, kind))
        try:
            return fn.fn(*argv)
        except _FuncError as exc:
            raise self.error(f"error calling {name}: {exc}") from None

    def validate(self, value: Any, kind: str | None) -> Any:
        if kind is None or kind == "value":
            return value
        if kind == "any":
            return None if value is INVALID else value
        if value is INVALID:
            raise self.error(f"invalid value; expected {kind}")
        if not isinstance(value, str):
            raise self.error(f"wrong type for value; expected string; got {_go_type(value)}")
        return value

    def eval_arg(self, dot: Any, kind: str | None, node: Any) -> Any:
        if isinstance(node, DotNode):
            return self.validate(dot, kind)
        if isinstance(node, NilNode):
            if kind == "string":
                raise self.error("cannot assign nil to string")
            return INVALID if kind == "value" else None
        if isinstance(node, FieldNode):
            return self.validate(self.eval_field_chain(dot, dot, node.ident, [node], _MISSING), kind)
        if isinstance(node, VariableNode):
            return self.validate(self.eval_variable(dot, node, None, _MISSING), kind)
        if isinstance(node, PipeNode):
            return self.validate(self.eval_pipeline(dot, node), kind)
        if isinstance(node, IdentifierNode):
            return self.validate(self.eval_function(dot, node, None, _MISSING), kind)
        if isinstance(node, ChainNode):
            return self.validate(self.eval_chain(dot, node, None, _MISSING), kind)
        if kind == "string":
            if isinstance(node, StringNode):
                return node.value
            raise self.error(f"expected string; found {_node_text(node)}")
        if isinstance(node, BoolNode):
            return node.value
        if isinstance(node, NumberNode):
            return node.value
        if isinstance(node, StringNode):
            return node.value
        raise self.error(f"can't handle {node!r} for arg")  # pragma: no cover


def _node_text(node: Any) -> str:
    if isinstance(node, NumberNode):
        return node.text
    if isinstance(node, BoolNode):
        return "true" if node.value else "false"
    return repr(node)


def execute(root: ListNode, templates: Mapping[str, ListNode], data: Any, *, funcs: Mapping[str, _Func] | None = None,
            missingkey_zero: bool = True) -> str:
    """Run a parsed template on ``data`` (Go's Template.Execute)."""
    state = _State(templates, funcs if funcs is not None else _ollama_funcs(), missingkey_zero, data)
    try:
        state.walk(data, root)
    except (_Break, _Continue):  # pragma: no cover - the parser keeps them inside range
        raise GoTemplateError("template: break/continue outside range") from None
    except RecursionError:
        raise GoTemplateError("template: exceeded maximum template depth") from None
    return "".join(state.out)


# -- Ollama's template package ------------------------------------------------------------------

def _identifiers(node: Any) -> list[str]:
    """Ollama's template.Identifiers (what Vars() collects)."""
    if isinstance(node, ListNode):
        return [x for n in node.nodes for x in _identifiers(n)]
    if isinstance(node, TemplateNode):
        if node.pipe is None:
            raise GoTemplateError("undefined template specified")
        return _identifiers(node.pipe)
    if isinstance(node, ActionNode):
        return _identifiers(node.pipe)
    if isinstance(node, BranchNode):
        names = _identifiers(node.pipe)
        for lst in (node.list, node.else_list):
            if lst is not None:
                names += _identifiers(lst)
        return names
    if isinstance(node, PipeNode):
        return [x for c in node.cmds for a in c.args for x in _identifiers(a)]
    if isinstance(node, (FieldNode, VariableNode)):
        return list(node.ident)
    return []


class _Cut(Exception):
    """deleteNode met a case where Go's type assertion on nil would panic."""


def _delete_after_response(root: ListNode) -> ListNode:
    """Ollama's deleteNode: drop everything after the first ``.Response`` field (kept)."""
    cut = False

    def fn(n: Any) -> bool:
        nonlocal cut
        if isinstance(n, FieldNode) and "Response" in n.ident:
            cut = True
            return False
        return cut

    def walk(n: Any) -> Any:
        if fn(n):
            return None
        if isinstance(n, ListNode):
            n.nodes = [m for m in (walk(c) for c in n.nodes) if m is not None]
            return n
        if isinstance(n, BranchNode):
            if fn(n):  # Go walks the embedded BranchNode as a node of its own
                raise _Cut()
            lst = walk(n.list)
            if lst is None:
                raise _Cut()
            n.list = lst
            if n.else_list is not None:
                els = walk(n.else_list)
                if els is None:
                    raise _Cut()
                n.else_list = els
            return n
        if isinstance(n, ActionNode):
            pipe = walk(n.pipe)
            if pipe is None:
                return None
            n.pipe = pipe
            return n
        if isinstance(n, PipeNode):
            commands = []
            for c in n.cmds:
                args = [m for m in (walk(a) for a in c.args) if m is not None]
                if not args:
                    return None
                c.args = args
                commands.append(c)
            if not commands:
                return None
            n.cmds = commands
            return n
        return n

    out = walk(copy.deepcopy(root))
    return out if out is not None else ListNode()


def _response_action() -> ActionNode:
    return ActionNode(PipeNode([], False, [CommandNode([FieldNode(["Response"])])]))


MESSAGE_TYPE = "*main.templateMessage"


def template_message(role: str, content: str) -> GoStruct:
    """A message as a template sees it (Ollama's template message: Role, Content, Thinking,
    Images, ToolCalls, ToolName, ToolCallID)."""
    return GoStruct(MESSAGE_TYPE, {"Role": role, "Content": content, "Thinking": "", "Images": NilSlice(),
                                   "ToolCalls": NilSlice(), "ToolName": "", "ToolCallID": ""})


def collate(messages: Sequence[Mapping[str, str]]) -> tuple[str, list[dict[str, str]]]:
    """Ollama's collate: all system messages joined into the system prompt; consecutive
    messages of the same role (but tool) merged with a blank line."""
    system: list[str] = []
    out: list[dict[str, str]] = []
    for m in messages:
        role, content = str(m["role"]), str(m["content"])
        if role == "system":
            system.append(content)
        if out and out[-1]["role"] == role and role != "tool":
            out[-1]["content"] += "\n\n" + content
        else:
            out.append({"role": role, "content": content})
    return "\n\n".join(system), out


@dataclass
class OllamaTemplate:
    """A parsed Ollama TEMPLATE, rendered as Ollama's server renders prompts."""

    text: str
    root: ListNode
    templates: dict[str, ListNode]
    vars: tuple[str, ...]

    @property
    def uses_messages(self) -> bool:
        """True for the modern ``.Messages`` form, False for legacy ``.Prompt``/``.Response``."""
        return "messages" in self.vars

    def render(self, messages: Sequence[Mapping[str, str]], *, today: _dt.date | None = None) -> str:
        """The prompt Ollama renders for ``messages`` (template.Execute on a chat request)."""
        funcs = _ollama_funcs(today)
        system, msgs = collate(messages)
        if self.uses_messages:
            data = {"System": system, "Messages": [template_message(m["role"], m["content"]) for m in msgs],
                    # Values.Tools is a typed []api.Tool (template/template.go): nil, yet `len .Tools` is 0
                    "Tools": NilSlice(), "Response": "", "Think": False, "ThinkLevel": "", "IsThinkSet": False}
            return execute(self.root, self.templates, data, funcs=funcs)
        out: list[str] = []
        state = {"system": "", "prompt": "", "response": ""}

        def values() -> dict[str, Any]:
            return {"System": state["system"], "Prompt": state["prompt"], "Response": state["response"],
                    "Think": False, "ThinkLevel": "", "IsThinkSet": False}

        def run() -> None:
            out.append(execute(self.root, self.templates, values(), funcs=funcs))
            state.update(system="", prompt="", response="")

        for m in msgs:
            role = m["role"]
            if role == "system":
                if state["prompt"] or state["response"]:
                    run()
                state["system"] = m["content"]
            elif role == "user":
                if state["response"]:
                    run()
                state["prompt"] = m["content"]
            elif role == "assistant":
                state["response"] = m["content"]
        try:
            cut = _delete_after_response(self.root)
        except _Cut:
            raise GoTemplateError("template: Ollama cannot cut this template after .Response "
                                  "(a .Response inside a branch with an else)") from None
        out.append(execute(cut, {}, values(), funcs={}, missingkey_zero=False))
        return "".join(out)


def parse_ollama_template(text: str) -> OllamaTemplate:
    """Parse a TEMPLATE as Ollama's template.Parse does (Ollama's functions available; a
    ``{{ .Response }}`` appended when the template names neither messages nor response)."""
    root, templates = parse(text, OLLAMA_FUNCS)
    names: set[str] = set()
    for tree in [root, *templates.values()]:
        for node in tree.nodes:
            names.update(x.lower() for x in _identifiers(node))
    if "messages" not in names and "response" not in names:
        root.nodes.append(_response_action())
    return OllamaTemplate(text, root, templates, tuple(sorted(names)))


def render_prompt(template: str, messages: Sequence[Mapping[str, str]]) -> str:
    """Convenience: parse ``template`` and render ``messages`` as Ollama would."""
    return parse_ollama_template(template).render(messages)
