"""The build as a library call: ``run_build(config) -> Manifest``.

Stages, in order: data, train, convert, quantize, verify (llama.cpp, local: answers and
stops; fidelity), modelfile, register, roundtrip (one chat through the server the model
was registered with), report (the model card). Verify runs before anything reaches
Ollama, so a model that babbles is never registered unless the user says ``--no-verify``.

Each stage's work lives in the module named after the job; this module lists them for
the runner, resolves the choices a build makes up front (``method auto``, ``register
auto``) so that build.json records what really ran, and says in words what state a
build ended in (:func:`build_outcome`), which is all the CLI prints.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ftpack.core.errors import FtpackError, bad_input
from ftpack.core.manifest import Manifest
from ftpack.core.report import Reporter, get_reporter
from ftpack.core.runner import Stage, StageContext, StageResult


def _lazy(target: str) -> Callable[[StageContext], StageResult]:
    """A stage function imported on first call (keeps `ftpack --help` instant)."""
    module, _, attr = target.partition(":")

    def run(ctx: StageContext) -> StageResult:
        return getattr(importlib.import_module(module), attr)(ctx)

    run.__name__ = attr
    return run


def _registers(cfg: Any) -> bool:
    return cfg.register != "none"


def _ships_adapter(cfg: Any) -> bool:
    from ftpack.gguf.ship import ships_adapter

    return ships_adapter(cfg)


def _ships_merged(cfg: Any) -> bool:
    return not _ships_adapter(cfg)


def _adapter_keys(*keys: str) -> Callable[[Any], dict[str, Any]]:
    """An adapter-build stage's config slice: its own keys plus what it is built on."""
    return lambda cfg: {k: getattr(cfg, k, None) for k in ("ship", "base", *keys)}


def build_stages() -> list[Stage]:
    """The stages of `ftpack build`, in order."""
    stages = [
        Stage("data", "validate and normalise the dataset", _lazy("ftpack.training.data:run_data_stage"),
              input_files=_data_files, config_keys=_data_keys),
        Stage("train", "fine-tune", _lazy("ftpack.training.train:run_train_stage")),
        Stage("convert", "Hugging Face to GGUF (adapter fused on the fly)",
              _lazy("ftpack.gguf.convert:run_convert_stage"), enabled=_ships_merged),
        Stage("quantize", "importance matrix and llama.cpp quantization",
              _lazy("ftpack.gguf.quantize:run_quantize_stage"),
              depends=("data", "convert"), input_files=_imatrix_file, enabled=_ships_merged),
        # --ship adapter: the base's own GGUF and the LoRA as a llama.cpp adapter GGUF instead
        Stage("base", "the base GGUF the adapter applies to", _lazy("ftpack.gguf.ship:run_base_stage"),
              depends=("train",), config_keys=_adapter_keys("ollama_base", "outtype", "quant"),
              input_files=_imatrix_file, enabled=_ships_adapter),
        Stage("adapter", "the LoRA adapter as a llama.cpp adapter GGUF", _lazy("ftpack.gguf.ship:run_adapter_stage"),
              depends=("train", "base"), config_keys=_adapter_keys("outtype"), enabled=_ships_adapter),
        Stage("verify", "llama.cpp smoke test (answers and stops) and quantization fidelity",
              _lazy("ftpack.inference.verify:run_verify_stage"), depends=("data", "convert", "quantize"),
              enabled=lambda cfg: bool(cfg.verify) and _ships_merged(cfg)),
        Stage("verify", "llama.cpp smoke test of the base GGUF + adapter (answers and stops)",
              _lazy("ftpack.inference.verify:run_verify_stage"), depends=("data", "base", "adapter"),
              config_keys=_adapter_keys("max_answer_tokens"),
              enabled=lambda cfg: bool(cfg.verify) and _ships_adapter(cfg)),
        Stage("modelfile", "render and check the Ollama Modelfile", _lazy("ftpack.ollama.modelfile:run_modelfile_stage"),
              depends=("data", "quantize"), input_files=lambda cfg: [cfg.license], enabled=_ships_merged),
        Stage("modelfile", "the Ollama Modelfile: FROM the base model, ADAPTER the LoRA GGUF",
              _lazy("ftpack.ollama.shipping:run_adapter_modelfile_stage"), depends=("data", "base", "adapter"),
              input_files=lambda cfg: [cfg.license], config_keys=_adapter_modelfile_keys, enabled=_ships_adapter),
        Stage("register", "create the model in Ollama", _lazy("ftpack.ollama.registration:run_register_stage"),
              depends=("modelfile",), enabled=_registers),
        Stage("roundtrip", "one chat through the Ollama server", _lazy("ftpack.inference.verify:run_roundtrip_stage"),
              depends=("data", "register"), enabled=_registers),
    ]
    # The card shows the whole config and every stage's record: it is rewritten when any of them changes.
    stages.append(Stage("report", "the model card (report.md)", _lazy("ftpack.model_card:run_report_stage"),
                        depends=tuple(s.name for s in stages), input_files=lambda cfg: [cfg.heldout],
                        config_keys=_whole_config))
    return stages


def _data_files(cfg: Any) -> list[Path]:
    """The dataset's file (its sha256) or folder (a digest of its files) is an input of the data
    stage; a hub dataset's input is its commit, which :func:`resolve_config` puts in data_revision."""
    from ftpack.core.config import hub_dataset_id

    return [] if cfg.data is None or hub_dataset_id(cfg.data) else [Path(cfg.data)]


def _data_keys(cfg: Any) -> dict[str, Any]:
    """The data stage's config slice; the dataset-source settings only when set, so a build made
    before they existed keeps its finished stages."""
    from ftpack.core.config import DATA_SOURCE_KEYS, stage_slice

    return {k: v for k, v in stage_slice(cfg, "data").items() if v is not None or k not in DATA_SOURCE_KEYS}


def _imatrix_file(cfg: Any) -> list[Path]:
    """`--imatrix FILE`: its content is an input of the quantize stage (auto/none are not files)."""
    value = str(getattr(cfg, "imatrix", None) or "auto")
    return [] if value in ("auto", "none") else [Path(value)]


def _adapter_modelfile_keys(cfg: Any) -> dict[str, Any]:
    from ftpack.core.config import stage_slice

    return {**stage_slice(cfg, "modelfile"), "ship": cfg.ship, "ollama_base": cfg.ollama_base}


def _whole_config(cfg: Any) -> dict[str, Any]:
    from ftpack.core.config import config_to_dict

    return config_to_dict(cfg)


# -- choices made before the first stage ------------------------------------------------------

def resolve_method(method: str) -> tuple[str, str]:
    """(method, why): `auto` is QLoRA on a CUDA GPU and LoRA elsewhere."""
    if method != "auto":
        return method, "as asked"
    import torch

    if torch.cuda.is_available():
        return "qlora", f"CUDA GPU found ({torch.cuda.get_device_name(0)}): 4-bit base + LoRA"
    return "lora", "no CUDA GPU: bitsandbytes 4-bit brings no memory win on CPU, plain LoRA is faster"


def resolve_register(mode: str, host: str | None) -> tuple[str, str]:
    """(mode, why): `auto` registers with the server when it answers, else offline."""
    if mode != "auto":
        return mode, "as asked"
    from ftpack.ollama.probe import probe_server

    probe = probe_server(host, timeout=2.0)
    if probe.reachable:
        return "server", f"Ollama server {probe.version} at {probe.host}"
    return "offline", f"no Ollama server at {probe.host} ({probe.reason}): writing Ollama's model store directly"


#: Why ``--ship auto`` is always merged now, with the source it follows.
NO_ADAPTERS = ("Ollama 0.34.1 and later no longer create models with LoRA adapters "
               "(server/create.go@0029bb5, errAdaptersUnsupported)")


def resolve_ship(config: Any, method: str) -> tuple[str, str]:
    """(ship, why): ``auto`` is a merged GGUF for every base; ``adapter`` only when asked."""
    if config.ship == "adapter":
        return "adapter", f"as asked; note: {NO_ADAPTERS}"
    if config.ship != "auto":
        return config.ship, "as asked"
    return "merged", f"one GGUF with the fine-tune merged in: {NO_ADAPTERS}"


def require_adapter_server(config: Any) -> None:
    """``--ship adapter`` to a server: ask it, before any work, whether it still creates
    models with adapters (a side-effect-free probe); a refusal is a user error."""
    if config.ship != "adapter" or config.register != "server":
        return
    from ftpack.ollama.api import OllamaServer

    with OllamaServer(config.host) as server:
        server.require_create_api()
        accepted, why = server.accepts_adapters()
    if not accepted:
        raise FtpackError(f"--ship adapter cannot be registered: {why}.",
                          "Ship the merged model (--ship merged, the default), or keep the adapter out of Ollama "
                          "(--no-register) and use its LoRA GGUF with `llama-server --lora`.", code=2)


def resolve_data_revision(config: Any) -> tuple[str | None, str | None]:
    """(data_revision, why): a hub dataset's revision (default main) as the commit it names now,
    from the hub or, offline or when the hub does not answer, from the local cache; the data
    stage hashes it, so a new upstream commit reruns the data stage. Other datasets: as given."""
    from ftpack.core.config import hub_dataset_id

    repo = hub_dataset_id(config.data) if config.data is not None else None
    if not repo:
        return getattr(config, "data_revision", None), None
    from ftpack.training.data_sources import resolve_hub_revision

    hub = resolve_hub_revision(repo, getattr(config, "data_revision", None))
    return hub.sha, f"{repo}'s {hub.asked} in {hub.source}"


def resolve_config(config: Any) -> tuple[Any, dict[str, str]]:
    """A copy of ``config`` with ``method``, ``register``, ``ship`` and a hub dataset's
    ``data_revision`` resolved, and why each was chosen.

    Used by :func:`run_build` and by ``--print-config``, so both show the same values.
    """
    data_revision, why_data = resolve_data_revision(config)
    method, why_method = resolve_method(config.method)
    register, why_register = resolve_register(config.register, config.host)
    ship, why_ship = resolve_ship(config, method)
    if ship == "adapter" and register == "offline":
        why_ship += ("; written offline, such a model loads only on older servers or on today's deprecated "
                     "adapter path, and `ollama create` cannot make it again")
    why = {"method": why_method, "register": why_register, "ship": why_ship}
    if why_data:
        why["data_revision"] = why_data
    resolved = dataclasses.replace(config, method=method, register=register, ship=ship, data_revision=data_revision)
    return resolved, why


def build_dir_of(config: Any) -> Path:
    """The build directory: ``--out``, else ``builds/<name>`` (absolute)."""
    from ftpack.core.config import default_build_dir

    return (Path(config.out) if config.out else default_build_dir(config.name)).absolute()


def check_build_inputs(config: Any, force: str | None = None) -> None:
    """Mistakes that would otherwise surface after training: fail before the first stage."""
    if config.data is None:  # other commands take a config without data; a build needs it
        raise bad_input("No dataset given.", "Pass --data FILE (JSON, JSONL, Parquet, CSV, TSV, Arrow), a "
                        "datasets.save_to_disk folder or a hub dataset id, or `data = ...` in --config.")
    if config.heldout is not None:  # build_config checked that it exists; its lines are checked here
        from ftpack.inference.heldout import read_heldout

        if not read_heldout(Path(config.heldout)):
            raise bad_input(f"{config.heldout}: no held-out questions in it.")
    if force is not None:
        stages = build_stages()
        names = list(dict.fromkeys(s.name for s in stages))
        if force not in names:
            raise bad_input(f"--force: unknown stage {force!r}.", f"Stages: {', '.join(names)}.")
        if not any(s.enabled(config) for s in stages if s.name == force):
            why = ("--no-verify" if force == "verify" and not config.verify
                   else f"--ship {config.ship}" if force in ("convert", "quantize", "base", "adapter")
                   else "--no-register (register = none)")
            raise bad_input(f"--force {force} contradicts {why}: that stage does not run in this build.",
                            "Drop one of the two.")


# -- the build ----------------------------------------------------------------------------------

def run_build(config: Any, *, force: str | None = None, reporter: Reporter | None = None) -> Manifest:
    """Run every stage of a build (skipping those already done) and return its manifest.

    Raises :class:`BuildFailed` when verify or the round trip fails (it says what state
    the build is in), the stage's own :class:`FtpackError` when another stage fails.
    """
    from ftpack.core.runner import run_stages

    reporter = reporter or get_reporter()
    check_build_inputs(config, force)
    cfg, why = resolve_config(config)
    require_adapter_server(cfg)
    for key, reason in why.items():
        reporter.info(f"{key}: {getattr(cfg, key)} ({reason})")
    if cfg.ship == "adapter" and cfg.register == "offline":
        reporter.warn("--ship adapter, offline: Ollama 0.34.1 and later cannot create models with a LoRA adapter; "
                      "the model written to the store loads only on the deprecated adapter path.",
                      "Ship the merged model (the default) for today's Ollama.")
    if not cfg.verify:
        reporter.info("verify: off (--no-verify): the model is not checked before it is registered")
    build_dir = build_dir_of(cfg)
    try:
        return run_stages(cfg, build_stages(), build_dir, force=force, reporter=reporter)
    except FtpackError as exc:
        manifest = Manifest.load(build_dir)
        failed = manifest.stages.get("verify"), manifest.stages.get("roundtrip")
        if any(r is not None and r.status == "failed" and r.error == exc.message for r in failed):
            raise BuildFailed(build_outcome(manifest), manifest, exc) from exc
        raise


@dataclass
class BuildOutcome:
    """The state a build is in, for people (``message``, ``hint``) and scripts (the rest)."""

    state: str  # ready | not_verified | not_registered | verify_failed | roundtrip_failed | failed | incomplete
    ok: bool
    message: str
    hint: str | None
    verified: str  # passed | failed | skipped (--no-verify) | not run
    registered: str | None  # where the model is, in words; None when not registered by this build
    roundtrip: str | None  # passed | failed | "not run (why)"; None when not registered
    failed_stage: str | None
    next_command: str | None
    build_dir: Path
    report: Path | None

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["build_dir"] = str(self.build_dir)
        d["report"] = str(self.report) if self.report else None
        return d


class BuildFailed(FtpackError):
    """Verify or the round trip failed; ``outcome`` says whether the model was registered."""

    def __init__(self, outcome: BuildOutcome, manifest: Manifest, cause: FtpackError):
        hint = " ".join(h for h in (cause.hint, outcome.hint) if h) or None
        super().__init__(outcome.message, hint, code=cause.code)
        self.outcome = outcome
        self.manifest = manifest
        self.cause = cause


def enabled_stages(config: dict[str, Any]) -> list[str]:
    """The stages a build with this (recorded) config runs; records of the others are stale."""
    from types import SimpleNamespace

    from ftpack.core.config import OPTIONS

    cfg = SimpleNamespace(**{**{o.key: o.default for o in OPTIONS}, **config})
    return [s.name for s in build_stages() if s.enabled(cfg)]


def build_outcome(manifest: Manifest) -> BuildOutcome:
    """What a build's manifest says about it: verified? registered where? round trip? next step?"""
    cfg = manifest.config
    build_dir = manifest.build_dir
    name = cfg.get("name") or manifest.name
    enabled = enabled_stages(cfg)
    st = {n: r for n, r in manifest.stages.items() if n in enabled}
    status = {n: r.status for n, r in st.items()}
    failed = next((n for n in enabled if status.get(n) in ("failed", "interrupted", "running")), None)

    if "verify" not in enabled:
        verified = "skipped (--no-verify)"
    else:
        verified = {"done": "passed", "failed": "failed"}.get(status.get("verify", ""), "not run")
    registered = roundtrip = None
    run = f"ftpack chat {build_dir}"
    if status.get("register") == "done":
        reg = st["register"].metrics
        registered = (f"in Ollama's model store {reg['store']}" if reg.get("store")
                      else f"with the Ollama server at {str(reg.get('where', '')).partition(':')[2]}")
        run = reg.get("run") or f"ollama run {name}"
        rt = st.get("roundtrip")
        said = str(rt.metrics.get("roundtrip", "")) if rt else ""
        if rt is None or rt.status not in ("done", "failed"):
            roundtrip = "not run"
        elif rt.status == "failed":
            roundtrip = "failed"
        elif said.startswith("skipped"):
            roundtrip = "not run (" + said.removeprefix("skipped").lstrip(": ") + ")"
        else:
            roundtrip = "passed"
    report = build_dir / "report.md" if status.get("report") == "done" else None

    def outcome(state: str, ok: bool, message: str, hint: str | None = None,
                next_command: str | None = run) -> BuildOutcome:
        return BuildOutcome(state, ok, message, hint, verified, registered, roundtrip, failed, next_command,
                            build_dir, report)

    if failed == "verify":
        error = (st["verify"].error or "the check failed").rstrip(".")
        earlier = manifest.stages.get("register")
        kept = (f" (a model {name} registered by an earlier run of this build is still in Ollama)"
                if earlier is not None and earlier.status == "done" and "register" in enabled else "")
        return outcome("verify_failed", False, f"Verify failed, so the model was NOT registered{kept}: {error}.",
                       "To register it without the check, run the same command with --no-verify.",
                       next_command=f"ftpack chat {build_dir}")
    if failed == "roundtrip":
        error = (st["roundtrip"].error or "no answer").rstrip(".")
        checked = "verified" if verified == "passed" else "NOT verified (--no-verify)"
        return outcome("roundtrip_failed", False,
                       f"Registered {name} {registered} ({checked}), but the round trip through the server "
                       f"failed: {error}.",
                       f"Look at what the server holds (`ollama show {name} --modelfile`), then run the same "
                       "command again.")
    if failed is not None:
        return outcome("failed", False, f"The {failed} stage did not finish: {st[failed].error or status[failed]}.",
                       "Run the same command again: finished stages are kept.", next_command=None)
    if report is None:
        return outcome("incomplete", False, f"The build in {build_dir} has not finished.",
                       "Run the same `ftpack build` command again to finish it.", next_command=None)
    parts = ["verified (answers and stops)" if verified == "passed" else "NOT verified (--no-verify)"]
    if registered:
        parts += [f"registered {registered}", f"round trip {roundtrip}"]
        state = "ready" if verified == "passed" else "not_verified"
    else:
        parts.append("not registered (--no-register)")
        state = "not_registered" if verified == "passed" else "not_verified"
    return outcome(state, True, f"Done: {', '.join(parts)}. Try it: {run}")
