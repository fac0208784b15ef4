"""What one registration carries: the GGUF(s) and every other layer a Modelfile gives.

One :class:`RegistrationRequest` feeds both ways of registering (``/api/create`` on a
server, or the offline store writer), so the two cannot drift apart.
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

    model_path: Path
    adapter_path: Path | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # typed (modelfile.parameter_value)
    messages: list[dict[str, str]] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)

    @classmethod
    def from_modelfile(cls, modelfile: str | os.PathLike) -> "RegistrationRequest":
        """Read a Modelfile (Ollama's grammar); FROM/ADAPTER must be existing GGUF files."""
        from ftpack.ollama.modelfile import read_modelfile, resolve_path

        spec = read_modelfile(modelfile)
        model_path = resolve_path(spec.from_path, modelfile)
        if not model_path.is_file():
            raise bad_input(f"{modelfile}: FROM {spec.from_path} is not an existing file ({model_path}).",
                            "ftpack registers a local GGUF; check the path (it is relative to the Modelfile).")
        adapter = None
        if spec.adapter is not None:
            adapter = resolve_path(spec.adapter, modelfile)
            if not adapter.is_file():
                raise bad_input(f"{modelfile}: ADAPTER {spec.adapter} is not an existing file ({adapter}).")
        for p in [model_path] + ([adapter] if adapter else []):
            with open(p, "rb") as fh:
                if fh.read(4) != b"GGUF":
                    raise bad_input(f"{p} is not a GGUF file.", "Ollama's files-based create takes GGUF files.")
        return cls(model_path=model_path, adapter_path=adapter, template=spec.template, system=spec.system,
                   parameters=spec.typed_parameters(),
                   messages=[{"role": r, "content": c} for r, c in spec.messages], licenses=list(spec.licenses))
