"""`ftpack chat`: talk to a GGUF locally with the same template and stops Ollama will use.

A way to try a model without Ollama: llama-cpp-python runs the GGUF; every turn is
rendered with the build's chat template (byte-identical to its Ollama TEMPLATE) and
generation stops at the template's stop strings or EOS, exactly like ``ollama run``.
The session is a plain object that yields text pieces; the command prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ftpack.core.errors import FtpackError, bad_input


@dataclass
class ChatTarget:
    """What to load and how to prompt it."""

    gguf: Path
    template_name: str
    system: str | None = None
    stop: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # Modelfile PARAMETERs (temperature, num_ctx...)
    source: str = ""
    adapter: Path | None = None  # an adapter build's LoRA GGUF, applied to ``gguf`` (its base)


def resolve_target(target: str | Path, *, template_name: str | None = None, system: str | None = None) -> ChatTarget:
    """A GGUF file, or a build dir (its quantized GGUF, chat template and, once written, Modelfile)."""
    from ftpack.training.templates import load_template

    target = Path(target)
    options: dict[str, Any] = {}
    stop: list[str] | None = None
    mf_system = None
    adapter = None
    if target.is_dir():
        gguf, build_template, modelfile = built_model(target)
        adapter = built_adapter(target)
        template_name = template_name or build_template
        if modelfile.is_file():
            from ftpack.ollama.modelfile import read_modelfile

            spec = read_modelfile(modelfile)
            options = spec.typed_parameters()
            stop = options.pop("stop", None)
            mf_system = spec.system
        source = f"build {target}"
    elif target.is_file():
        gguf = target
        source = str(target)
        if template_name is None:
            template_name = template_from_gguf(gguf)
    else:
        raise bad_input(f"Not found: {target}", "Give a .gguf file or a build dir (builds/<name>).")
    if not template_name:
        raise bad_input(f"Cannot tell which chat template {target} uses.", "Pass --template NAME "
                        "(see `ftpack templates`).")
    tpl = load_template(template_name)
    if isinstance(stop, str):
        stop = [stop]
    return ChatTarget(gguf=gguf, template_name=tpl.name,
                      system=system if system is not None else (mf_system or tpl.default_system or None),
                      stop=list(stop) if stop else list(tpl.stop), options=options, source=source, adapter=adapter)


def built_model(build_dir: Path) -> tuple[Path, str, Path]:
    """(quantized GGUF, chat template name, Modelfile path) of a build, read through its manifest
    (a damaged build.json is an FtpackError naming the file). Used by chat, verify and heldout."""
    from ftpack.core.layout import BuildLayout
    from ftpack.core.manifest import Manifest
    from ftpack.training.templates import template_of_build

    layout = BuildLayout(build_dir)
    if not layout.manifest.is_file():
        raise bad_input(f"{build_dir} is neither a GGUF file nor a build dir (no {layout.manifest.name}).")
    manifest = Manifest.load(layout.root)
    if manifest.config.get("ship") == "adapter":  # the base GGUF; built_adapter gives the LoRA on it
        from ftpack.gguf.ship import shipped_base

        return shipped_base(manifest).gguf, template_of_build(layout).name, layout.modelfile
    q = manifest.stages.get("quantize")
    if q is None or q.status != "done" or not q.main_output:
        raise bad_input(f"The build in {build_dir} has no quantized GGUF yet.", "Run `ftpack build` to finish it.")
    return layout.root / q.main_output, template_of_build(layout).name, layout.modelfile


def built_adapter(build_dir: Path) -> Path | None:
    """The LoRA adapter GGUF of an adapter build (``--ship adapter``), None for a merged build."""
    from ftpack.core.manifest import Manifest

    manifest = Manifest.load(Path(build_dir))
    if manifest.config.get("ship") != "adapter":
        return None
    from ftpack.gguf.ship import shipped_adapter

    return shipped_adapter(manifest)


def template_from_gguf(gguf: Path) -> str | None:
    """The templates/ entry whose fingerprint matches the GGUF's tokenizer.chat_template."""
    from ftpack.gguf.header import read_gguf_header
    from ftpack.training.templates import template_for_tokenizer_template

    try:
        text = read_gguf_header(gguf).get("tokenizer.chat_template", "STRING")
    except FtpackError:  # damaged file: llama.cpp will say more when loading
        return None
    return template_for_tokenizer_template(text) if text else None


class ChatSession:
    """A multi-turn conversation with a local GGUF; :meth:`send` streams the answer.

    When the conversation no longer leaves room for an answer in the context window, it
    starts over from the new message (with a notice) instead of ending the session.
    """

    def __init__(self, target: ChatTarget, *, max_tokens: int = 512, temperature: float | None = None,
                 n_ctx: int | None = None, reporter=None):
        from ftpack.core.report import get_reporter
        from ftpack.inference.runtime import load_llama
        from ftpack.training.templates import load_template

        self.target = target
        self.template = load_template(target.template_name)
        self.max_tokens = max_tokens
        self.temperature = temperature if temperature is not None else float(target.options.get("temperature", 0.7))
        self.n_ctx = n_ctx or int(target.options.get("num_ctx", 2048))
        self.reporter = reporter or get_reporter()
        self.history: list[dict[str, str]] = []
        self.resets = 0  # times a full context started the conversation over
        self.llm = load_llama(target.gguf, n_ctx=self.n_ctx, lora=target.adapter)
        self.last_finish_reason: str | None = None

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def __enter__(self) -> "ChatSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def reset(self) -> None:
        self.history = []

    @property
    def answer_room(self) -> int:
        """Tokens an answer needs at least: a context fuller than ``n_ctx`` minus this starts over."""
        return min(self.max_tokens, max(16, self.n_ctx // 4))

    def messages_for(self, user_text: str) -> list[dict[str, str]]:
        msgs = list(self.history) + [{"role": "user", "content": user_text}]
        if self.target.system:
            msgs = [{"role": "system", "content": self.target.system}] + msgs
        return msgs

    def _prompt(self, user_text: str) -> tuple[str, int]:
        """The rendered prompt and its length in tokens (BOS included, as llama.cpp adds it)."""
        from ftpack.inference.runtime import count_tokens

        prompt = self.template.inference_prompt(self.messages_for(user_text))
        return prompt, count_tokens(self.llm, prompt, add_bos=True)

    def send(self, user_text: str) -> Iterator[str]:
        """Stream the answer to ``user_text``; the turn joins the history when done."""
        from ftpack.inference.runtime import stream_answer

        prompt, n_prompt = self._prompt(user_text)
        if n_prompt + self.answer_room > self.n_ctx and self.history:
            turns = len(self.history) // 2
            self.history = []
            self.resets += 1
            self.reporter.warn(f"The conversation filled the context ({n_prompt} of {self.n_ctx} tokens with your "
                               f"message): starting over, forgetting the previous {turns} turn(s).",
                               "Pass a larger --ctx to keep longer conversations.")
            self.reporter.event("context_reset", prompt_tokens=n_prompt, n_ctx=self.n_ctx, dropped_turns=turns)
            prompt, n_prompt = self._prompt(user_text)
        if n_prompt + self.answer_room > self.n_ctx:
            raise bad_input(f"This message ({n_prompt} tokens with the chat template) leaves no room for an answer "
                            f"in the context of {self.n_ctx} tokens.",
                            "Send a shorter message, or pass a larger --ctx.")
        pieces: list[str] = []
        self.last_finish_reason = None
        for piece, finish in stream_answer(self.llm, prompt, stop=self.target.stop,
                                           max_tokens=min(self.max_tokens, self.n_ctx - n_prompt),
                                           temperature=self.temperature, options=self.target.options):
            if piece:
                pieces.append(piece)
                yield piece
            self.last_finish_reason = finish or self.last_finish_reason
        answer = "".join(pieces).strip()
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": answer}]
