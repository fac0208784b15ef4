"""`ftpack chat`: talk to a GGUF locally with the same template and stops Ollama will use.

A way to try a model without Ollama: llama-cpp-python runs the GGUF; every turn is
rendered with the build's chat template (byte-identical to its Ollama TEMPLATE) and
generation stops at the template's stop strings or EOS, exactly like ``ollama run``.
The session is a plain object that yields text pieces; the command prints them.
"""

from __future__ import annotations

import json
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


def resolve_target(target: str | Path, *, template_name: str | None = None, system: str | None = None) -> ChatTarget:
    """A GGUF file, or a build dir (its quantized GGUF, chat template and Modelfile)."""
    from ftpack.training.templates import load_template

    target = Path(target)
    options: dict[str, Any] = {}
    stop: list[str] | None = None
    mf_system = None
    if target.is_dir():
        manifest = target / "build.json"
        if not manifest.is_file():
            raise bad_input(f"{target} is neither a GGUF file nor a build dir (no build.json).")
        data = json.loads(manifest.read_text(encoding="utf-8"))
        stages = data.get("stages", {})
        q = stages.get("quantize", {})
        if q.get("status") != "done" or not q.get("main_output"):
            raise bad_input(f"The build in {target} has no quantized GGUF yet.", "Run `ftpack build` to finish it.")
        gguf = target / q["main_output"]
        template_name = template_name or (stages.get("data", {}).get("metrics", {}) or {}).get("template")
        modelfile = target / "ollama" / "Modelfile"
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
            template_name = _template_from_gguf(gguf)
    else:
        raise bad_input(f"Not found: {target}", "Give a .gguf file or a build dir (builds/<name>).")
    if not template_name:
        raise bad_input(f"Cannot tell which chat template {target} uses.", "Pass --template NAME "
                        "(see `ftpack templates`).")
    tpl = load_template(template_name)
    return ChatTarget(gguf=gguf, template_name=tpl.name,
                      system=system if system is not None else (mf_system or tpl.default_system or None),
                      stop=list(stop) if stop else list(tpl.stop), options=options, source=source)


def _template_from_gguf(gguf: Path) -> str | None:
    """The templates/ entry whose fingerprint matches the GGUF's tokenizer.chat_template."""
    from gguf import GGUFReader

    from ftpack.training.templates import template_for_tokenizer_template

    try:
        field_ = GGUFReader(str(gguf)).fields.get("tokenizer.chat_template")
    except Exception:  # damaged file: llama.cpp will say more when loading
        return None
    text = field_.contents() if field_ is not None else None
    return template_for_tokenizer_template(text) if text else None


class ChatSession:
    """A multi-turn conversation with a local GGUF; :meth:`send` streams the answer."""

    def __init__(self, target: ChatTarget, *, max_tokens: int = 512, temperature: float | None = None,
                 n_ctx: int | None = None):
        from ftpack.training.templates import load_template
        from ftpack.inference.verify import load_llama

        self.target = target
        self.template = load_template(target.template_name)
        self.max_tokens = max_tokens
        self.temperature = temperature if temperature is not None else float(target.options.get("temperature", 0.7))
        self.n_ctx = n_ctx or int(target.options.get("num_ctx", 2048))
        self.history: list[dict[str, str]] = []
        self.llm = load_llama(target.gguf, n_ctx=self.n_ctx)
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

    def messages_for(self, user_text: str) -> list[dict[str, str]]:
        msgs = list(self.history) + [{"role": "user", "content": user_text}]
        if self.target.system:
            msgs = [{"role": "system", "content": self.target.system}] + msgs
        return msgs

    def send(self, user_text: str) -> Iterator[str]:
        """Stream the answer to ``user_text``; the turn joins the history when done."""
        from ftpack.inference.verify import stream_answer

        prompt = self.template.inference_prompt(self.messages_for(user_text))
        n_prompt = len(self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))
        if n_prompt >= self.n_ctx:
            raise FtpackError(f"The conversation ({n_prompt} tokens) no longer fits the context ({self.n_ctx}).",
                              "Type /reset to start over, or pass a larger --ctx.")
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
