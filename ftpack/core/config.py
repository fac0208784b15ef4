"""BuildConfig: every setting of a build, from CLI flags and an optional TOML/YAML file.

One table of options (:data:`OPTIONS`) is the single source of truth: it gives the
config-file key (snake_case), the CLI flag (the same name in kebab-case, plus short
aliases), the type, the default, the allowed values, and which stage's input hash
the value belongs to. Names follow Hugging Face's TrainingArguments / PEFT and
Ollama's words. What a type cannot say (quant names, Ollama parameters, template
names, files, the output folder, the base's architecture) each domain checks, and
:mod:`ftpack.settings` composes those checks with :func:`merge_settings` here into
``build_config`` / ``command_settings``, the one way a config is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ftpack.core.errors import bad_input

#: Training methods; "auto" picks one per machine (ftpack.pipeline.resolve_method).
TRAINING_METHODS = ("qlora", "lora", "sft", "full")
#: Methods that train LoRA adapters (output: adapter/) rather than the weights (model/).
ADAPTER_METHODS = ("qlora", "lora")
METHODS = ("auto", *TRAINING_METHODS)
REGISTER_MODES = ("auto", "server", "offline", "none")
#: What a build registers: a LoRA adapter GGUF on the base's own GGUF, or one merged GGUF;
#: "auto" picks one per base (ftpack.pipeline.resolve_ship).
SHIP_MODES = ("auto", "adapter", "merged")
#: GGUF tensor types the converter writes before quantization.
OUTTYPES = ("f16", "bf16", "f32", "q8_0")
#: Dataset record layouts (ftpack.training.data); "auto" detects one per file.
RECORD_FORMATS = ("sharegpt", "messages", "alpaca", "io", "prompt-completion")
DATA_FORMATS = ("auto", *RECORD_FORMATS)
#: llama.cpp quantization type of a build and of `ftpack quantize`.
DEFAULT_QUANT = "Q4_K_M"
#: `--quant auto`: the largest mean KL divergence from F16 allowed. SmolLM2-135M with an importance
#: matrix measures Q4_K_M 0.037 and Q3_K_M 0.093 (shared/FACTS.md): 0.05 keeps Q4_K_M-like fidelity.
DEFAULT_MAX_KLD = 0.05
#: `--imatrix` values besides a file.
IMATRIX_MODES = ("auto", "none")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
              "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau",
              "cosine_with_min_lr", "warmup_stable_decay")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")

DEFAULT_BASE = "smollm2-135m"


@dataclass(frozen=True)
class Option:
    """One setting: config key, flag, type, default, checks, and the stage it feeds."""

    key: str
    type: type
    default: Any
    help: str
    stage: str  # first stage whose input hash includes this value ("" = none)
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    aliases: tuple[str, ...] = ()
    multiple: bool = False  # list value (repeatable flag)
    flag: str | None = None  # override for the CLI flag name (e.g. a boolean pair)

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.key.replace("_", "-")


def _o(key, type_, default, help, stage, **kw) -> Option:
    return Option(key, type_, default, help, stage, **kw)


#: ``--attn-implementation`` values (transformers' names).
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")

OPTIONS: tuple[Option, ...] = (
    # -- what to build -----------------------------------------------------------------
    _o("base", str, DEFAULT_BASE, "Base model: alias, HF hub id, local HF folder or GGUF file.", "data"),
    _o("data", Path, None, "Conversation dataset: a .json/.jsonl, .parquet, .csv/.tsv or .arrow file, a "
       "datasets.save_to_disk folder, or a Hugging Face hub dataset id (org/name).", "data"),
    _o("out", Path, None, "Build directory (default: builds/<name>).", ""),
    _o("template", str, None, "Chat template name (see `ftpack templates`); default: from the base.", "data"),
    _o("system", str, None, "System prompt: the Ollama model's SYSTEM, and trained on in every conversation "
       "that has none (default: the template's).", "data"),
    # -- data ----------------------------------------------------------------------------
    _o("format", str, "auto", "Dataset format.", "data", choices=DATA_FORMATS),
    _o("data_config", str, None, "Hub dataset (or dataset folder): the configuration (subset) to load.", "data"),
    _o("data_split", str, None, "Hub dataset or save_to_disk folder: the split to load.  [default: train]", "data"),
    _o("data_revision", str, None, "Hub dataset: branch, tag or commit (default: main); a build records the "
       "commit it loaded.", "data"),
    _o("data_columns", str, None, "Read a field from a differently named column, as FIELD=COLUMN (e.g. "
       "conversations=dialog; comma-separated or repeated; in a config file also a table).", "data",
       multiple=True),
    _o("eval_ratio", float, None, "Fraction held out for evaluation (default 0.05 with >= 20 records).",
       "data", min=0.0, max=0.5),
    _o("drop_long", bool, False, "Drop records longer than --max-seq-length instead of truncating.", "data"),
    _o("seed", int, 42, "Random seed (data split and training).", "data", min=0),
    # -- training --------------------------------------------------------------------------
    _o("method", str, "auto", "qlora | lora | sft | full (auto: qlora on CUDA, lora on CPU).", "train",
       choices=METHODS),
    _o("num_train_epochs", float, 3.0, "Training epochs.", "train", min=0.0, aliases=("--epochs",)),
    _o("max_steps", int, -1, "Stop after this many optimizer steps (overrides epochs; -1 = off).", "train",
       min=-1),
    _o("per_device_train_batch_size", int, 4, "Batch size per device.", "train", min=1,
       aliases=("--batch-size",)),
    _o("gradient_accumulation_steps", int, 1, "Gradient accumulation steps.", "train", min=1),
    _o("learning_rate", float, None, "Peak learning rate (default per method).", "train", min=0.0,
       aliases=("--lr",)),
    _o("weight_decay", float, 0.0, "Weight decay.", "train", min=0.0),
    _o("warmup_ratio", float, 0.03, "Fraction of steps for learning-rate warm-up.", "train", min=0.0, max=1.0),
    _o("lr_scheduler_type", str, "cosine", "Learning-rate scheduler.", "train", choices=SCHEDULERS),
    _o("max_seq_length", int, 2048, "Maximum tokens per training example (also Ollama's num_ctx default).",
       "data", min=8),
    _o("gradient_checkpointing", bool, None, "Gradient checkpointing (default: on for full/qlora on GPU).",
       "train"),
    _o("lora_r", int, 16, "LoRA rank.", "train", min=1),
    _o("lora_alpha", int, 32, "LoRA alpha.", "train", min=1),
    _o("lora_dropout", float, 0.05, "LoRA dropout.", "train", min=0.0, max=1.0),
    _o("target_modules", str, None, "LoRA target modules (default: all linear layers of the blocks).",
       "train", multiple=True),
    _o("dora", bool, False, "Use DoRA instead of plain LoRA.", "train"),
    _o("trainable_layers", int, 2, "sft: how many top decoder blocks to train.", "train", min=1),
    _o("train_embeddings", bool, False, "sft: also train the input embeddings.", "train"),
    _o("train_on_prompts", bool, False, "Compute the loss on prompts too (default: assistant text only).",
       "train"),
    _o("packing", bool, False, "Pack several examples into one sequence.", "train"),
    _o("precision", str, "auto", "Training precision: auto (bf16 where supported), bf16, fp16, fp32.",
       "train", choices=PRECISIONS),
    _o("torch_compile", bool, None, "Compile the decoder blocks with torch.compile (default: on for LoRA with bf16 "
       "on a CPU, in runs of 100+ steps, when a C++ compiler is installed).", "train"),
    _o("use_liger_kernel", bool, None, "Liger Kernel's fused RMSNorm, RoPE and SwiGLU (default: on a CUDA GPU for the "
       "model types Liger supports).", "train"),
    _o("padding_free", bool, None, "Each batch as one row without padding, examples kept apart by their position "
       "ids (default: on a CUDA GPU with a variable-length attention, for model types where it is proven).",
       "train"),
    _o("qlora_bf16_base", bool, None, "QLoRA: keep the 4-bit base's embeddings, norms and LM head in bf16 instead "
       "of PEFT's fp32 copies (default: on with bf16 compute on a CUDA GPU).", "train"),
    _o("attn_implementation", str, None, "Attention: sdpa, flash_attention_2, flash_attention_3, flex_attention or "
       "eager (default: flash_attention_2 on a GPU with flash-attn installed, else transformers' default; on a "
       "CPU ftpack's own).",
       "train", choices=ATTENTION_IMPLEMENTATIONS),
    _o("logging_steps", int, 1, "Log loss every N steps.", "train", min=1),
    _o("report_to", str, None, "Also log training to these integrations (Hugging Face's report_to: none, all, "
       "tensorboard, wandb, trackio, mlflow...; comma-separated or repeated). Local logs go into the training folder "
       "(tensorboard: train/runs/) unless the library's own variable says where (TENSORBOARD_LOGGING_DIR, WANDB_DIR, "
       "TRACKIO_DIR). A finished train stage is not rerun for it (--force train).  [default: none]", "",
       multiple=True),
    _o("save_steps", int, 200, "Save a checkpoint every N steps.", "train", min=1),
    _o("trust_remote_code", bool, False, "Allow the base model's own Python code.", "train"),
    _o("allow_pickle", bool, False, "Allow non-safetensors (pickle) weights.", "train"),
    # -- convert / quantize ------------------------------------------------------------
    _o("outtype", str, "f16", "GGUF type before quantization.", "convert", choices=OUTTYPES),
    _o("quant", str, DEFAULT_QUANT, "llama.cpp quantization type (e.g. Q4_K_M, Q5_K_M, Q8_0), or auto: the "
       "smallest of Q3_K_M..Q8_0 whose mean KL divergence from F16 is within --max-kld.", "quantize"),
    _o("imatrix", str, "auto", "Importance matrix: auto (computed from the training data for types below 6 bits), "
       "none, or a file (llama-imatrix GGUF or .dat).", "quantize"),
    _o("max_kld", float, DEFAULT_MAX_KLD, "--quant auto: the largest mean KL divergence from the F16 model allowed, "
       "measured on the eval split.", "quantize", min=0.0),
    # -- verify / report -----------------------------------------------------------------
    _o("verify", bool, True, "Check with llama.cpp that the quantized model answers and stops before "
       "registering it (--no-verify registers without the check).", ""),
    _o("max_answer_tokens", int, None, "Verify: longest answer allowed before 'did not stop' (default: the longest "
       "training answer + 25%, at least 16 tokens).", "verify", min=1),
    _o("heldout", Path, None, "Held-out questions (JSONL: question, keywords) that the model card asks the "
       "base and the fine-tuned model.", "report"),
    # -- Ollama --------------------------------------------------------------------------
    _o("parameters", str, None, "Modelfile PARAMETER as KEY=VALUE (repeatable).", "modelfile",
       multiple=True, flag="--param"),
    _o("messages", str, None, "Modelfile MESSAGE as ROLE:TEXT (repeatable).", "modelfile",
       multiple=True, flag="--message"),
    _o("license", Path, None, "License file to embed in the Ollama model.", "modelfile"),
    _o("register", str, "auto", "Where to register: server (OLLAMA_HOST), offline (write Ollama's store), "
       "none; auto = the server when reachable, else offline.",
       "register", choices=REGISTER_MODES),
    _o("host", str, None, "Ollama server URL (default: OLLAMA_HOST or http://127.0.0.1:11434).", "register"),
    _o("ship", str, "auto", "What to register: merged (one full GGUF with the fine-tune merged in; what auto "
       "means for every base), or adapter (a small LoRA GGUF on the base's own GGUF: only for servers older than "
       "Ollama 0.34.1, which refuse adapters).", "", choices=SHIP_MODES),
    _o("ollama_base", str, None, "--ship adapter on a base that ftpack converts: the Ollama model the base is "
       "registered as, shared by every adapter on it (default: NAME-base).", ""),
    _o("models_dir", Path, None, "Ollama model store for --offline (default: OLLAMA_MODELS, else "
       "~/.ollama/models, else a Linux service install's /usr/share/ollama/.ollama/models).", "register"),
)

OPTION_BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}

#: Path settings that a config file names relative to its own folder.
RELATIVE_TO_CONFIG = ("data", "license", "imatrix", "heldout")
#: Settings that say where in a dataset the records are; a build's data stage hashes them only when
#: set (ftpack.pipeline), so builds made before they existed keep their finished stages.
DATA_SOURCE_KEYS = ("data_config", "data_split", "data_revision", "data_columns")
#: Suffixes of the dataset files `--data` reads (any other file is read as JSON / JSONL).
DATA_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv", ".arrow")
_HUB_DATASET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def hub_dataset_id(value: Any, base: Path | None = None) -> str | None:
    """``org/name`` when ``value`` names a Hugging Face hub dataset rather than a local path: it
    has that shape, no dataset-file suffix, and nothing exists at that path (relative to
    ``base``, default the working directory). A local file or folder always wins."""
    if not isinstance(value, (str, Path)):
        return None
    text = str(value)
    if not _HUB_DATASET_ID.match(text) or ".." in text or text.lower().endswith(DATA_FILE_SUFFIXES):
        return None
    local = Path(text).expanduser()
    if (base / local if base is not None else local).exists():
        return None
    return text

# Order of the stages; each stage's hash includes its own options and all upstream outputs.
STAGES = ("data", "train", "convert", "quantize", "base", "adapter", "verify", "modelfile", "register", "roundtrip",
          "report")

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,79})?$")


def _config_fields():
    return [(o.key, Any, field(default=o.default if not o.multiple else None)) for o in OPTIONS]


@dataclass
class _BuildConfigBase:
    name: str


BuildConfig = dataclasses.make_dataclass(
    "BuildConfig",
    _config_fields(),
    bases=(_BuildConfigBase,),
    namespace={
        "__doc__": "All settings of one build; see :data:`OPTIONS` for each field.",
        "__module__": __name__,
    },
)


def _coerce(opt: Option, value: Any, source: str) -> Any:
    """Check and convert one value; errors name the key and where it came from."""
    where = f"{opt.key} ({source})"
    if value is None:
        return None
    if opt.multiple:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, Mapping) and opt.key in ("parameters", "data_columns"):
            items = [f"{k}={v}" for k, vals in value.items()
                     for v in (vals if isinstance(vals, list) else [vals])]
        if opt.key in ("target_modules", "data_columns"):  # "q_proj,v_proj" as well as repeated flags
            items = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
        single = dataclasses.replace(opt, multiple=False)
        out = [_coerce(single, v, source) for v in items]
        return tuple(out) if out else None
    t = opt.type
    if t is bool:
        if isinstance(value, bool):
            out: Any = value
        elif isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            out = True
        elif isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            out = False
        else:
            raise bad_input(f"{where}: expected true or false, got {value!r}.")
    elif t is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"[-+]?\d+", value.strip()))):
            raise bad_input(f"{where}: expected an integer, got {value!r}.")
        out = int(value)
    elif t is float:
        if isinstance(value, bool):
            raise bad_input(f"{where}: expected a number, got {value!r}.")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise bad_input(f"{where}: expected a number, got {value!r}.") from None
        if not math.isfinite(out):
            raise bad_input(f"{where}: expected a finite number, got {value!r}.")
    elif t is Path:
        if not isinstance(value, (str, Path)) or str(value) == "":
            raise bad_input(f"{where}: expected a path, got {value!r}.")
        if opt.key == "data" and hub_dataset_id(value):  # a hub dataset id stays as given
            return str(value)
        out = Path(value).expanduser()
        if opt.key in RELATIVE_TO_CONFIG:  # inputs: absolute, so build.json is unambiguous
            out = out.absolute()
    else:
        if not isinstance(value, str):
            raise bad_input(f"{where}: expected text, got {value!r}.")
        out = value
    if opt.choices is not None and out not in opt.choices:
        if opt.key == "method" or opt.key in ("format", "outtype", "register", "precision", "lr_scheduler_type",
                                              "ship"):
            lowered = out.lower() if isinstance(out, str) else out
            if lowered in opt.choices:
                return lowered
        raise bad_input(f"{where}: {out!r} is not one of: {', '.join(opt.choices)}.")
    if opt.min is not None and out < opt.min:
        raise bad_input(f"{where}: must be >= {opt.min:g}, got {out!r}.")
    if opt.max is not None and out > opt.max:
        raise bad_input(f"{where}: must be <= {opt.max:g}, got {out!r}.")
    return out


def toml_loads(text: str) -> dict[str, Any]:
    """Parse TOML with the standard library (Python 3.11+) or its backport tomli (3.10).

    Decode errors are ``ValueError`` subclasses either way.
    """
    try:
        import tomllib
    except ImportError:  # Python 3.10: tomli is a dependency there
        import tomli as tomllib
    return tomllib.loads(text)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (or YAML) config file into a flat dict of snake_case keys.

    Tables are flattened (``[train] learning_rate = 1e-4`` is ``learning_rate``) so a
    file may group keys by stage; the key names stay the same.
    """
    path = Path(path)
    if not path.is_file():
        raise bad_input(f"Config file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise bad_input(f"{path}: YAML config needs PyYAML.", "pip install pyyaml, or use TOML.") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise bad_input(f"{path}: not a valid config file: {exc}") from None
    else:
        try:
            raw = toml_loads(text)
        except ValueError as exc:  # tomllib / tomli TOMLDecodeError
            raise bad_input(f"{path}: not a valid config file: {exc}") from None
    if not isinstance(raw, dict):
        raise bad_input(f"{path}: the config file must hold a table of settings.")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and key not in OPTION_BY_KEY:
            for k, v in value.items():
                flat[k] = v
        else:
            flat[key] = value
    # Input files named in a config file are relative to that file, not to the cwd.
    for key in RELATIVE_TO_CONFIG:
        value = flat.get(key)
        if key == "imatrix" and isinstance(value, str) and value.lower() in IMATRIX_MODES:
            continue
        if key == "data" and hub_dataset_id(value, path.parent):
            continue
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            flat[key] = str(path.parent / value)
    return flat


def merge_settings(name: str, file_values: Mapping[str, Any] | None = None,
                   flag_values: Mapping[str, Any] | None = None, *,
                   source: str = "config file") -> tuple[dict[str, Any], dict[str, str]]:
    """Merge defaults < config file < CLI flags, each value coerced to its option's type
    and range: ``(values, where)``, ``where`` naming each given value's source.

    ``flag_values`` holds only the flags the user actually gave (None = not given). What a
    type cannot say is checked by :func:`ftpack.settings.build_config`, which calls this.
    """
    if not NAME_RE.match(name or ""):
        raise bad_input(f"Invalid model name {name!r}.",
                        "Use letters, digits, '_', '-', '.', optionally ':tag' (Ollama's name rules).")
    values: dict[str, Any] = {o.key: o.default for o in OPTIONS}
    for key, value in (file_values or {}).items():
        if key == "name":
            continue
        opt = OPTION_BY_KEY.get(key)
        if opt is None:
            close = _closest(key)
            raise bad_input(f"Unknown config key {key!r} ({source}).",
                            f"Did you mean {close!r}?" if close else "See `ftpack build --help` for the keys.")
        values[key] = _coerce(opt, value, source)
    where = {key: source for key in (file_values or {})}
    for key, value in (flag_values or {}).items():
        if value is None or (OPTION_BY_KEY[key].multiple and not value):
            continue
        opt = OPTION_BY_KEY[key]
        values[key] = _coerce(opt, value, OPTION_BY_KEY[key].cli_flag)
        where[key] = opt.cli_flag
    if values["out"] is None:  # the default build folder must be usable too
        where["out"] = "default"
    return values, where


def merge_command_settings(keys: Iterable[str],
                           flag_values: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings of a single-step command (`ftpack data`, `quantize`, `modelfile`...):
    its flags over the OPTIONS defaults, each coerced as `ftpack build` does; ``(values, where)``.

    :func:`ftpack.settings.command_settings` calls this and checks them as a build does.
    """
    keys = list(keys)
    values: dict[str, Any] = {k: OPTION_BY_KEY[k].default for k in keys}
    where: dict[str, str] = {}
    for key, value in (flag_values or {}).items():
        opt = OPTION_BY_KEY.get(key)
        if key not in values or value is None or (opt.multiple and not value):
            continue
        values[key] = _coerce(opt, value, opt.cli_flag)
        where[key] = opt.cli_flag
    return values, where


def _closest(key: str) -> str | None:
    import difflib

    m = difflib.get_close_matches(key, list(OPTION_BY_KEY), n=1)
    return m[0] if m else None


def config_to_dict(cfg) -> dict[str, Any]:
    """JSON-friendly dict of a BuildConfig (paths as strings, tuples as lists)."""
    out: dict[str, Any] = {"name": cfg.name}
    for o in OPTIONS:
        v = getattr(cfg, o.key)
        if isinstance(v, Path):
            v = str(v)
        elif isinstance(v, tuple):
            v = [str(x) if isinstance(x, Path) else x for x in v]
        out[o.key] = v
    return out


def config_to_toml(cfg, notes: Mapping[str, str] | None = None) -> str:
    """The resolved configuration as a TOML file (what `--print-config` shows).

    ``notes`` says why a value was chosen (e.g. how `method = "auto"` resolved); each
    note becomes a comment after its line, so the file still loads as a config.
    """
    notes = notes or {}
    lines = []
    for key, value in config_to_dict(cfg).items():
        line = f"# {key} = (default)" if value is None else f"{key} = {_toml_value(value)}"
        if key in notes:
            line += "  # " + " ".join(str(notes[key]).split())
        lines.append(line)
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)


def stage_slice(cfg, stage: str) -> dict[str, Any]:
    """The config values that a stage's input hash covers."""
    d = config_to_dict(cfg)
    keys = [o.key for o in OPTIONS if o.stage == stage]
    return {k: d[k] for k in keys}


def default_build_dir(name: str) -> Path:
    return Path("builds") / name.replace(":", "_").replace("/", "_")
