"""Ollama model names: ``[host/][namespace/]model[:tag]``, parsed and checked as Ollama does.

Follows ollama/ollama ``types/model/name.go`` (ParseName, IsValid, DisplayShortest,
EqualFold): missing parts default to registry.ollama.ai / library / latest; each part
starts with a letter, digit or ``_`` and holds letters, digits, ``_``, ``-`` and ``.``
(no ``.`` in the namespace; ``:`` only in the host); model and tag are 1-80 characters,
the host 1-350. Ollama compares names case-insensitively.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftpack.core.errors import FtpackError, bad_input

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
PART_KINDS = ("host", "namespace", "model", "tag")
_MISSING = "!MISSING!"  # Ollama's placeholder for an empty part (always invalid)
_ALLOWED = {"host": "letters, digits, '_', '-', '.', ':'", "namespace": "letters, digits, '_', '-'",
            "model": "letters, digits, '_', '-', '.'", "tag": "letters, digits, '_', '-', '.'"}


@dataclass(frozen=True)
class ModelName:
    """A fully qualified Ollama model name: host/namespace/model:tag."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def display(self) -> str:
        """Ollama's DisplayShortest: what `ollama list` shows and `ollama run` accepts."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def same_as(self, other: "ModelName") -> bool:
        """Ollama matches names case-insensitively (getExistingName / EqualFold)."""
        return all(a.lower() == b.lower() for a, b in zip(self.parts, other.parts))


def valid_part(kind: str, s: str) -> bool:
    """Whether ``s`` is a valid ``kind`` part (host, namespace, model, tag) of a name."""
    if not 1 <= len(s) <= (350 if kind == "host" else 80):
        return False
    for i, b in enumerate(s.encode("utf-8")):
        c = chr(b)
        alnum = ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c == "_"
        if i == 0:
            if not alnum:
                return False
        elif c in "-_":
            continue
        elif c == ".":
            if kind == "namespace":
                return False
        elif c == ":":
            if kind != "host":
                return False
        elif not alnum:
            return False
    return True


def _split(s: str) -> tuple[str, str, str, str]:
    """ParseName's split (right to left: tag, model, namespace, host); empty parts stay empty."""
    host = namespace = tag = ""
    if s.rfind(":") > s.rfind("/"):
        s, _, tag = s.rpartition(":")
        s, tag = s or _MISSING, tag or _MISSING
    if "/" not in s:
        return host, namespace, s, tag
    s, _, model = s.rpartition("/")
    s, model = s or _MISSING, model or _MISSING
    if "/" not in s:
        return host, s, model, tag
    s, _, namespace = s.rpartition("/")
    s, namespace = s or _MISSING, namespace or _MISSING
    host = s.split("://", 1)[1] if "://" in s else s
    return host, namespace, model, tag


def parse_model_name(name: str) -> ModelName:
    """Parse and validate ``[host/][namespace/]model[:tag]`` with Ollama's rules.

    Raises a bad-input :class:`FtpackError` that says which part is wrong and why.
    """
    host, namespace, model, tag = _split(name.strip())
    parsed = ModelName(host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG)
    for kind, part in zip(PART_KINDS, parsed.parts):
        if not valid_part(kind, part):
            limit = 350 if kind == "host" else 80
            shown = "" if part == _MISSING else part
            raise bad_input(
                f"Invalid Ollama model name {name!r}: the {kind} {shown!r} is not valid.",
                f"Ollama names are [host/][namespace/]model[:tag]; each part starts with a letter, digit or '_' "
                f"and holds {_ALLOWED[kind]} (1-{limit} characters), e.g. my-model:v1.")
    return parsed


def names_match(text: str, name: ModelName) -> bool:
    """Whether ``text`` names the same model as ``name``; an invalid ``text`` matches nothing."""
    try:
        return parse_model_name(text).same_as(name)
    except FtpackError:
        return False
