"""Chat-template registry: one file in ``templates/`` per chat format.

Each ``templates/<name>.toml`` is the single source of truth for a format: the Hugging
Face Jinja ``chat_template`` used for training (assistant text and its end-of-turn token
wrapped in ``{% generation %}`` so TRL's assistant-only loss learns to stop), the Ollama
Go ``ollama_template`` that renders the same text at inference, the stop strings, the
default system prompt, and base-model name patterns / tokenizer-template fingerprints
used to pick a format for a base model.

The BOS rule (why training and inference see the same token ids)
-----------------------------------------------------------------
* ``chat_template`` and ``ollama_template`` never write the *leading* BOS. For every
  conversation, ``render_chat(tpl.chat_template, msgs, add_generation_prompt=True)`` is
  byte-identical to what Ollama renders from ``tpl.ollama_template`` (see the tests).
* At inference llama.cpp/Ollama tokenizes that text with special-token parsing and puts
  BOS in front itself when the GGUF says ``tokenizer.ggml.add_bos_token``.
* TRL tokenizes the rendered chat with ``add_special_tokens=False``, so the tokenizer
  will *not* add BOS there. :func:`training_chat_template` therefore returns
  ``"{{ bos_token }}" + tpl.chat_template`` exactly when the tokenizer adds a BOS
  (:func:`tokenizer_adds_bos`), and the plain template otherwise. That text is installed
  in the tokenizer for training and saved with the model, so it also lands in the GGUF
  (HF convention: a chat template writes its own BOS), and the GGUF's ``add_bos_token``
  must be ``tokenizer_adds_bos(tokenizer)``.
* Result: training ids == [BOS] + ids(ollama text) when the tokenizer adds BOS, else
  ids(ollama text); BOS appears exactly once. A format's *later* BOS markers (Llama 2's
  ``</s><s>[INST]``) are literal text on both sides, read as the special token by both
  tokenizers.

``default_system`` is part of the format where the format always has a system prompt
(FastChat's vicuna_v1.1): both templates fall back to it when a conversation has none,
so training, the GGUF template and Ollama agree even without a Modelfile SYSTEM.

A base pulled into Ollama (``--base ollama:NAME``) brings its own format: its TEMPLATE maps
to a file here when it renders identically, else a ChatTemplate with ``renderer = "ollama"``
renders that TEMPLATE itself (:mod:`ftpack.training.ollama_format`; no Jinja, no
``{% generation %}``: its sequences reach TRL tokenized, with their assistant masks).

One choice per build
--------------------
The data stage chooses the format once (:func:`choose_template`: ``--template``, else the
base tokenizer's own chat template, else the base's name matched against each file's
``aliases``). Training receives that :class:`ChatTemplate` and saves it, whole, beside
the trained weights (:data:`TEMPLATE_FILE`). Every later reader — convert, Modelfile,
verify, chat, held-out answers — asks :func:`template_of_build`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ftpack.core.config import toml_loads
from ftpack.core.errors import bad_input
from ftpack.core.resources import templates_dir

#: Fields every template file must define.
REQUIRED_FIELDS = ("name", "description", "chat_template", "ollama_template", "stop", "end_of_turn")

_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")
_END_GENERATION_RE = re.compile(r"\{%-?\s*endgeneration\s*-?%\}")

Message = Mapping[str, str]


@dataclass(frozen=True)
class ChatTemplate:
    """One chat format: the training Jinja, the Ollama TEMPLATE and what goes with them."""

    name: str
    description: str
    chat_template: str  # HF Jinja, BOS-free, with {% generation %} markers
    ollama_template: str  # Go text/template for Ollama's TEMPLATE
    stop: tuple[str, ...]  # Ollama PARAMETER stop values
    end_of_turn: str  # text ending an assistant turn (inside the generation markers)
    default_system: str = ""  # system prompt the format uses when a conversation has none
    bos: str = "runtime"  # leading BOS: added by the tokenizer/runtime, never template text
    aliases: tuple[str, ...] = ()  # regexes matched against lower-cased base names
    fingerprint: tuple[str, ...] = ()  # substrings that identify a tokenizer's own template
    priority: int = 50  # lower is tried first when several formats match
    renderer: str = "jinja"  # "ollama": training text is ollama_template rendered as Ollama does
    # An Ollama model prompted by a built-in RENDERER (Go code; ftpack.ollama.renderers) instead
    # of a TEMPLATE: its name as the model's config holds it, the PARSER, and the ``think`` value
    # it is served with. Only with renderer == "ollama".
    ollama_renderer: str = ""
    ollama_parser: str = ""
    think: Any = None
    # An Ollama model without a TEMPLATE: Ollama hands its GGUF's own Jinja chat template to
    # llama-server. (template, bos_token text, eos_token text, whether the vocabulary adds BOS).
    gguf_jinja: tuple = ()
    path: Path | None = field(default=None, compare=False)

    @property
    def renders_ollama(self) -> bool:
        """True for an Ollama model's own TEMPLATE (no Jinja: see ftpack.training.ollama_format)."""
        return self.renderer == "ollama"

    def inference_prompt(self, messages: Sequence[Message]) -> str:
        """The text Ollama renders for ``messages`` (ending with a user turn), without BOS."""
        if self.renders_ollama:
            from ftpack.training.ollama_format import ollama_prompt

            return ollama_prompt(self, messages)
        return render_chat(self, messages, add_generation_prompt=True)

    def training_text(self, messages: Sequence[Message]) -> str:
        """The text of a whole conversation as trained on, without the leading BOS."""
        return render_chat(self, messages)

    def as_dict(self) -> dict[str, Any]:
        """Every field but the source path (what :func:`save_template` writes)."""
        return {"name": self.name, "description": self.description, "chat_template": self.chat_template,
                "ollama_template": self.ollama_template, "stop": list(self.stop), "end_of_turn": self.end_of_turn,
                "default_system": self.default_system, "bos": self.bos, "aliases": list(self.aliases),
                "fingerprint": list(self.fingerprint), "priority": self.priority, "renderer": self.renderer,
                "ollama_renderer": self.ollama_renderer, "ollama_parser": self.ollama_parser, "think": self.think,
                "gguf_jinja": list(self.gguf_jinja)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path | None = None) -> "ChatTemplate":
        return cls(name=data["name"], description=data["description"], chat_template=data["chat_template"],
                   ollama_template=data["ollama_template"], stop=tuple(data["stop"]),
                   end_of_turn=data["end_of_turn"], default_system=data.get("default_system", ""),
                   bos=data.get("bos", "runtime"), aliases=tuple(data.get("aliases", ())),
                   fingerprint=tuple(data.get("fingerprint", ())), priority=int(data.get("priority", 50)),
                   renderer=str(data.get("renderer", "jinja")), ollama_renderer=str(data.get("ollama_renderer", "")),
                   ollama_parser=str(data.get("ollama_parser", "")), think=data.get("think"),
                   gguf_jinja=tuple(data.get("gguf_jinja") or ()), path=path)


# -- registry ---------------------------------------------------------------------------

def _parse_template_file(path: Path) -> ChatTemplate:
    try:
        data = toml_loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: tomllib's / tomli's TOMLDecodeError
        raise bad_input(f"Chat template file {path} is not valid TOML: {exc}") from exc
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise bad_input(f"Chat template file {path} lacks {', '.join(missing)}.")
    if data["name"] != path.stem:
        raise bad_input(f"Chat template file {path} says name = {data['name']!r}; it must match the file name.")
    if not _GENERATION_RE.search(data["chat_template"]):
        raise bad_input(f"Chat template {data['name']!r} has no {{% generation %}} markers.",
                        "Wrap the assistant text and its end-of-turn token in {% generation %}...{% endgeneration %}.")
    return ChatTemplate.from_dict(data, path)


@lru_cache(maxsize=None)
def _registry(folder: str) -> dict[str, ChatTemplate]:
    templates = {}
    for path in sorted(Path(folder).glob("*.toml")):
        tpl = _parse_template_file(path)
        templates[tpl.name] = tpl
    return templates


def _all(folder: Path | None = None) -> dict[str, ChatTemplate]:
    return _registry(str(folder or templates_dir()))


def list_templates(folder: Path | None = None) -> list[ChatTemplate]:
    """Every chat format shipped in ``templates/``, sorted by name."""
    return sorted(_all(folder).values(), key=lambda t: t.name)


def template_names(folder: Path | None = None) -> list[str]:
    return [t.name for t in list_templates(folder)]


#: Formats that are not files in templates/ (an Ollama model's own TEMPLATE), by name, as this
#: process has met them (:func:`remember_template`): so code that passes a format by name —
#: verify, chat, held-out answers — finds it. Their names carry a digest of their content.
_MET: dict[str, ChatTemplate] = {}


def remember_template(tpl: ChatTemplate) -> ChatTemplate:
    """Make a format that is not in templates/ loadable by its name in this process."""
    _MET[tpl.name] = tpl
    return tpl


def load_template(name: str | ChatTemplate, folder: Path | None = None) -> ChatTemplate:
    """The chat format called ``name`` (a ChatTemplate is returned as it is); an unknown name
    is a user error listing the choices."""
    if isinstance(name, ChatTemplate):
        return name
    templates = _all(folder)
    if name in templates:
        return templates[name]
    if name in _MET:
        return _MET[name]
    folded = {k.lower().replace("-", "_"): v for k, v in templates.items()}
    key = name.lower().replace("-", "_")
    if key in folded:
        return folded[key]
    raise bad_input(f"Unknown chat template {name!r}.",
                    f"Choose one of: {', '.join(sorted(templates))} (see `ftpack templates`).")


# -- rendering --------------------------------------------------------------------------

def _jinja_text(tpl_or_jinja: ChatTemplate | str) -> str:
    return tpl_or_jinja.chat_template if isinstance(tpl_or_jinja, ChatTemplate) else tpl_or_jinja


def render_chat_with_spans(tpl_or_jinja: ChatTemplate | str, messages: Sequence[Message], *,
                           add_generation_prompt: bool = False, bos_token: str = "<s>",
                           eos_token: str = "</s>", **extra: Any) -> tuple[str, list[tuple[int, int]]]:
    """Render like ``tokenizer.apply_chat_template`` and return the ``{% generation %}`` spans.

    Uses transformers' own Jinja environment (sandbox, trim_blocks, lstrip_blocks, the
    generation tag), so the text is exactly what TRL trains on. A format rendered from an
    Ollama TEMPLATE gives its training text and trained spans (its last sequence).
    """
    if isinstance(tpl_or_jinja, ChatTemplate) and tpl_or_jinja.renders_ollama:
        from ftpack.training.ollama_format import ollama_prompt, training_sequences

        if add_generation_prompt:
            return ollama_prompt(tpl_or_jinja, messages), []
        text, spans = training_sequences(tpl_or_jinja, messages)[-1]
        return text, list(spans)
    from transformers.utils.chat_template_utils import render_jinja_template

    chat = [dict(m) for m in messages]
    rendered, spans = render_jinja_template(
        conversations=[chat], chat_template=_jinja_text(tpl_or_jinja),
        return_assistant_tokens_mask=True, add_generation_prompt=add_generation_prompt,
        bos_token=bos_token, eos_token=eos_token, **extra)
    return rendered[0], [tuple(s) for s in spans[0]]


def render_chat(tpl_or_jinja: ChatTemplate | str, messages: Sequence[Message], *,
                add_generation_prompt: bool = False, bos_token: str = "<s>", eos_token: str = "</s>",
                **extra: Any) -> str:
    """Render a chat template exactly as transformers does (generation tags supported)."""
    return render_chat_with_spans(tpl_or_jinja, messages, add_generation_prompt=add_generation_prompt,
                                  bos_token=bos_token, eos_token=eos_token, **extra)[0]


# -- BOS --------------------------------------------------------------------------------

def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer(text)`` puts the BOS token in front (what GGUF add_bos_token records).

    Measured rather than read from a flag: tokenizers spell it ``add_bos_token``, a
    post-processor, or a SentencePiece setting.
    """
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bool(with_special) and with_special[0] == bos_id and (not without or without[0] != bos_id)


def training_chat_template(tpl: ChatTemplate, tokenizer: Any = None, *, adds_bos: bool | None = None) -> str:
    """The Jinja to install in the tokenizer for training (and to ship in the GGUF).

    ``{{ bos_token }}`` + the format's template when the tokenizer adds a BOS (TRL
    tokenizes chats with ``add_special_tokens=False``), the plain template otherwise. A
    format rendered from an Ollama TEMPLATE trains without Jinja: the tokenizer keeps the
    base's own chat template.
    """
    if tpl.renders_ollama:
        return str(getattr(tokenizer, "chat_template", None) or "")
    if adds_bos is None:
        adds_bos = tokenizer is not None and tokenizer_adds_bos(tokenizer)
    return ("{{ bos_token }}" + tpl.chat_template) if adds_bos else tpl.chat_template


def install_chat_template(tpl: ChatTemplate, tokenizer: Any) -> str:
    """Set ``tokenizer.chat_template`` to the training template; returns it."""
    text = training_chat_template(tpl, tokenizer)
    if not tpl.renders_ollama:
        tokenizer.chat_template = text
    return text


def trainer_rows(tpl: ChatTemplate, tokenizer: Any, rows: Sequence[Mapping[str, Any]], *,
                 train_on_prompts: bool = False) -> list[dict[str, Any]]:
    """The rows TRL trains on: ``{"messages": …}`` as they are (TRL renders the Jinja), or for a
    format rendered from an Ollama TEMPLATE the tokenized sequences with their assistant
    masks (TRL then takes them as they are: SFTConfig.assistant_only_loss must be off)."""
    if not tpl.renders_ollama:
        return [dict(r) for r in rows]
    from ftpack.training.ollama_format import pretokenized_rows

    return pretokenized_rows(tpl, tokenizer, rows, train_on_prompts=train_on_prompts)


def choose_base_template(explicit: str | None, resolved: Any, tokenizer: Any = None, *,
                         reporter: Any = None) -> ChatTemplate:
    """:func:`choose_template` for a resolved base; a base from Ollama brings its own format
    (:func:`ftpack.training.ollama_format.template_for_ollama_base`)."""
    if getattr(resolved, "ollama", None) is not None:
        from ftpack.training.ollama_format import template_for_ollama_base

        return template_for_ollama_base(resolved.ollama, explicit=explicit, reporter=reporter)
    served = architecture_renderer(resolved)
    if served is not None:
        return served_by_renderer(explicit, resolved, served, reporter=reporter)
    return choose_template(explicit, resolved.names, tokenizer, reporter=reporter)


#: Hugging Face model types whose GGUF architecture Ollama gives a built-in renderer at create
#: (server/create.go@0029bb5: gemma4, laguna, nemotron_h*; ftpack.ollama.renderers.ARCHITECTURE_RENDERERS).
_RENDERED_MODEL_TYPES = {"gemma4": "gemma4", "gemma4_text": "gemma4", "laguna": "laguna",
                         "nemotron_h": "nemotron_h", "nemotron_h_moe": "nemotron_h_moe"}


def architecture_renderer(resolved: Any) -> tuple[str, str, tuple[str, ...]] | None:
    """(renderer, parser, stop) Ollama serves a base of this architecture with, whatever TEMPLATE
    is sent; None for the architectures Ollama prompts with the TEMPLATE."""
    import json

    from ftpack.ollama.renderers import ARCHITECTURE_RENDERERS

    try:
        config = json.loads((Path(resolved.path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None
    arch = _RENDERED_MODEL_TYPES.get(str(config.get("model_type") or ""))
    return ARCHITECTURE_RENDERERS.get(arch) if arch else None


def served_by_renderer(explicit: str | None, resolved: Any, served: tuple[str, str, tuple[str, ...]], *,
                       reporter: Any = None) -> ChatTemplate:
    """The format of a base whose GGUF Ollama serves with a built-in renderer: that renderer's
    text (a ``--template`` would be ignored by Ollama, so it is refused)."""
    from types import SimpleNamespace

    from ftpack.training.ollama_format import renderer_chat_template

    renderer, parser, stop = served
    if explicit:
        raise bad_input(f"--template {explicit}: Ollama serves a GGUF of this architecture with its built-in "
                        f"{renderer!r} renderer whatever TEMPLATE it is given (server/create.go@0029bb5), so the "
                        "model would not be prompted the way it was trained.",
                        f"Leave --template out: ftpack trains on the {renderer} renderer's text.")
    ob = SimpleNamespace(renderer=renderer, parser=parser, system="", stop=stop, display=resolved.model_id,
                         reference=resolved.model_id, model_type=_parameter_count_text(resolved))
    tpl = renderer_chat_template(ob)
    if reporter is not None:
        reporter.info(f"Chat format: Ollama's built-in {tpl.ollama_renderer} renderer (parser {parser}, thinking "
                      "on as served): Ollama gives it to every GGUF of this architecture.")
    return tpl


def _parameter_count_text(resolved: Any) -> str:
    """The base's parameter count as Ollama writes model_type ("4.0B"), from its safetensors
    headers; "" when unknown (gemma4 then resolves to its small renderer, as Ollama does)."""
    import json
    import struct

    total = 0
    for f in Path(resolved.path).glob("*.safetensors"):
        try:
            with open(f, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                header = json.loads(fh.read(n))
        except (OSError, ValueError, struct.error):
            return ""
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for d in info.get("shape", []):
                    count *= int(d)
                total += count
    return f"{total / 1e9:.1f}B" if total else ""


# -- choosing a format for a base model -------------------------------------------------

def _base_key(base: str) -> str:
    """The part of a base reference that names the model: ``org/name`` or a file's name."""
    parts = [p for p in re.split(r"[\\/]", str(base).strip()) if p]
    return "/".join(parts[-2:]).lower()


def template_for_tokenizer_template(chat_template: str | None, folder: Path | None = None) -> str | None:
    """The format whose fingerprint a tokenizer's own chat template carries, if any."""
    if not chat_template:
        return None
    for tpl in sorted(list_templates(folder), key=lambda t: (t.priority, t.name)):
        if tpl.fingerprint and all(marker in chat_template for marker in tpl.fingerprint):
            return tpl.name
    return None


def template_for_name(base: str | Sequence[str], folder: Path | None = None) -> str | None:
    """The format a base model's name points to (``vicuna`` → vicuna_v1.1...), if any: the
    ``aliases`` patterns of ``templates/*.toml``, the one base → format map. Several names
    (a hub id and the ``_name_or_path`` a copy records) are tried in order."""
    for name in ([base] if isinstance(base, str) else list(base)):
        key = _base_key(name)
        for tpl in sorted(list_templates(folder), key=lambda t: (t.priority, t.name)):
            if any(re.search(pattern, key) for pattern in tpl.aliases):
                return tpl.name
    return None


def template_for_base(base: str | Sequence[str] | None, tokenizer_chat_template: str | None = None,
                      folder: Path | None = None) -> str | None:
    """Pick a format: the tokenizer's own chat template wins (it is what the model was
    tuned with), then the base model's name; ``None`` when nothing fits."""
    return (template_for_tokenizer_template(tokenizer_chat_template, folder)
            or (template_for_name(base, folder) if base else None))


def choose_template(explicit: str | None, base: str | Sequence[str] | None, tokenizer: Any = None,
                    folder: Path | None = None, *, reporter: Any = None) -> ChatTemplate:
    """``--template`` if given, else the format detected for the base (its tokenizer's own
    chat template, then its name); otherwise a user error that lists the choices.
    With a ``reporter``, say which format was chosen and why."""
    if explicit:
        tpl, why = load_template(explicit, folder), "as asked (--template)"
    else:
        own = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        if isinstance(own, dict):  # tokenizers with several named templates
            own = own.get("default") or next(iter(own.values()), None)
        by_own = template_for_tokenizer_template(own, folder)
        name = by_own or (template_for_name(base, folder) if base else None)
        if name is None:
            shown = base if isinstance(base, str) or base is None else (list(base) or [None])[0]
            raise bad_input(f"Cannot tell which chat format base model {shown!r} uses "
                            "(no known name and no recognised chat template in its tokenizer).",
                            f"Pass --template NAME, one of: {', '.join(template_names(folder))}.")
        tpl = load_template(name, folder)
        why = ("the base's own chat template is this format" if by_own
               else "the base's name matches this format (its tokenizer has no chat template ftpack knows)")
    if reporter is not None:
        reporter.info(f"Chat template {tpl.name}: {why}.")
    return tpl


def check_generation_markers(tpl: ChatTemplate) -> None:
    """Fail when a template's generation markers are unbalanced (TRL needs them paired)."""
    if tpl.renders_ollama:  # no Jinja: the spans come from ftpack.training.ollama_format
        return
    opens = len(_GENERATION_RE.findall(tpl.chat_template))
    closes = len(_END_GENERATION_RE.findall(tpl.chat_template))
    if opens == 0 or opens != closes:
        raise bad_input(f"Chat template {tpl.name!r} has {opens} {{% generation %}} and {closes} "
                        "{% endgeneration %} markers.")


def templates_table(templates: Iterable[ChatTemplate]) -> list[dict[str, Any]]:
    """Plain data for `ftpack templates` (table rows and --json)."""
    return [{"name": t.name, "description": t.description, "stop": list(t.stop),
             "default_system": t.default_system, "aliases": list(t.aliases)} for t in templates]


# -- the build's template: saved beside the trained weights, read back in one place ---------

#: File beside the trained weights (train/adapter/ or train/model/) holding the whole format.
TEMPLATE_FILE = "ftpack_template.json"


def save_template(tpl: ChatTemplate, folder: str | Path) -> Path:
    """Write the whole format beside trained weights, so the weights say how to prompt them
    even if ``templates/`` changes later."""
    from ftpack.core.atomic import write_json

    return write_json(Path(folder) / TEMPLATE_FILE, {"ftpack_template": 1, **tpl.as_dict()})


def template_of_weights(folder: str | Path) -> ChatTemplate | None:
    """The format saved beside trained weights by :func:`save_template`; None when absent."""
    import json

    from ftpack.core.errors import FtpackError

    path = Path(folder) / TEMPLATE_FILE
    if not path.is_file():
        return None
    try:
        tpl = ChatTemplate.from_dict(json.loads(path.read_text(encoding="utf-8")), path)
        return remember_template(tpl) if tpl.renders_ollama else tpl
    except (ValueError, KeyError, TypeError) as exc:
        raise FtpackError(f"{path} is damaged ({type(exc).__name__}: {exc}).",
                          "Train again (ftpack build … --force train) to rewrite it.") from None


def template_of_build(build: Any) -> ChatTemplate:
    """The chat format a build trains and serves with: the one accessor every stage and
    command uses (``build``: a :class:`~ftpack.core.layout.BuildLayout` or its folder).

    Once training has finished: the copy saved beside the trained weights. Before that
    (the train stage itself): the data stage's choice recorded in build.json. The
    config's ``template`` is never read here; it only feeds the data stage, whose input
    hash reruns it (and everything after) when the value changes. A folder written by
    ``ftpack train --out`` has no build.json: its weights' copy is used.
    """
    from ftpack.core.errors import FtpackError
    from ftpack.core.layout import BuildLayout
    from ftpack.core.manifest import Manifest

    layout = build if isinstance(build, BuildLayout) else BuildLayout(Path(build))
    if layout.manifest.is_file():
        stages = Manifest.load(layout.root).stages
        train, data = stages.get("train"), stages.get("data")
        if train is not None and train.status == "done" and train.main_output:
            saved = template_of_weights(layout.root / train.main_output)
            if saved is not None:
                return saved
        if data is not None and data.status == "done" and data.metrics.get("template"):
            chosen = template_of_weights(layout.data_dir)  # a format that is not in templates/ (Ollama's)
            if chosen is not None and chosen.name == data.metrics["template"]:
                return chosen
            return load_template(data.metrics["template"])
    else:
        saved = [t for t in (template_of_weights(d) for d in (layout.adapter_dir, layout.model_dir)) if t]
        if saved:
            return max(saved, key=lambda t: t.path.stat().st_mtime_ns if t.path else 0)
    raise FtpackError(f"{layout.root}: no chat template recorded (the data stage has not finished there).",
                      "Run `ftpack build` for it first, or pass --template NAME.")
