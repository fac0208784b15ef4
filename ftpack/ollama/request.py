"""What one registration carries: the GGUF(s) and every other layer a Modelfile gives.

One :class:`RegistrationRequest` feeds both ways of registering (``/api/create`` on a
server, or the offline store writer), so the two cannot drift apart. A request either
brings its model GGUF (``model_path``, Ollama's files-based create) or names an Ollama
model it builds on (``from_model``: Ollama's ``FROM <name>``, whose model blob is reused
as it is) — the form an adapter build ships in, with ``adapter_path`` on top.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftpack.core.errors import bad_input


@dataclass
class RegistrationRequest:
    """The content of one ``/api/create`` (or offline store write), from a Modelfile."""

    model_path: Path | None
    adapter_path: Path | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # typed (modelfile.parameter_value)
    messages: list[dict[str, str]] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    from_model: str | None = None  # an Ollama model name (FROM <name>) instead of a GGUF file
    renderer: str | None = None  # RENDERER: Ollama's built-in prompt renderer (config "renderer")
    parser: str | None = None  # PARSER (config "parser")
    requires: str | None = None  # REQUIRES: the oldest Ollama version for the model
    capabilities: list[str] = field(default_factory=list)  # CAPABILITY lines

    def create_fields(self) -> dict[str, Any]:
        """The /api/create fields Ollama's client has no arguments for (ollama 0.6.3):
        ``renderer``, ``parser``, ``requires``, ``capabilities`` (server/create.go@0029bb5)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ("renderer", "parser", "requires") if getattr(self, k)}
        if self.capabilities:
            out["capabilities"] = list(self.capabilities)
        return out

    def __post_init__(self) -> None:
        if (self.model_path is None) == (self.from_model is None):
            raise TypeError("RegistrationRequest: give exactly one of model_path and from_model")

    @property
    def files(self) -> list[Path]:
        """The local GGUF files this registration uploads or copies (model and/or adapter)."""
        return [p for p in (self.model_path, self.adapter_path) if p is not None]

    @classmethod
    def from_modelfile(cls, modelfile: str | os.PathLike) -> "RegistrationRequest":
        """Read a Modelfile (Ollama's grammar); ADAPTER must be an existing GGUF file, FROM
        either one or, as in Ollama, the name of a model (what an adapter build writes)."""
        from ftpack.ollama.modelfile import read_modelfile, resolve_path

        spec = read_modelfile(modelfile)
        if spec.draft is not None:
            raise bad_input(f"{modelfile}: DRAFT {spec.draft}: ftpack does not register draft models.",
                            "Register this Modelfile with `ollama create -f`, or remove the DRAFT line.")
        model_path: Path | None = resolve_path(spec.from_path, modelfile)
        from_model = None
        if not model_path.is_file():
            from_model = model_name_in_from(spec.from_path)
            if from_model is None:
                raise bad_input(f"{modelfile}: FROM {spec.from_path} is not an existing file ({model_path}).",
                                "ftpack registers a local GGUF; check the path (it is relative to the Modelfile).")
            model_path = None
        adapter = None
        if spec.adapter is not None:
            adapter = resolve_path(spec.adapter, modelfile)
            if not adapter.is_file():
                raise bad_input(f"{modelfile}: ADAPTER {spec.adapter} is not an existing file ({adapter}).")
        for p in [x for x in (model_path, adapter) if x is not None]:
            with open(p, "rb") as fh:
                if fh.read(4) != b"GGUF":
                    raise bad_input(f"{p} is not a GGUF file.", "Ollama's files-based create takes GGUF files.")
        return cls(model_path=model_path, adapter_path=adapter, template=spec.template, system=spec.system,
                   parameters=spec.typed_parameters(),
                   messages=[{"role": r, "content": c} for r, c in spec.messages], licenses=list(spec.licenses),
                   from_model=from_model, renderer=spec.renderer, parser=spec.parser, requires=spec.requires,
                   capabilities=list(spec.capabilities))


def model_name_in_from(value: str) -> str | None:
    """The Ollama model a ``FROM`` names, or None when it reads as a file path.

    Ollama takes a FROM that is not an existing path as a model name; ftpack is stricter:
    anything path-like (``./``, ``../``, ``/``, ``~``, a ``.gguf``/``.safetensors`` file
    name) stays a path, so a missing file is reported as such instead of as a model.
    """
    from ftpack.core.errors import FtpackError
    from ftpack.ollama.names import parse_model_name

    text = value.strip()
    if text.startswith((".", "/", "~", "\\")) or text.lower().endswith((".gguf", ".safetensors", ".bin")):
        return None
    try:
        return parse_model_name(text).display
    except FtpackError:
        return None
