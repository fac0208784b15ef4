"""Fine-tune a base model on `messages` conversations with TRL's SFTTrainer.

Methods (``method=``):

- ``qlora``: base loaded 4-bit NF4 with double quantization (compute dtype bf16 where
  supported, else fp32), ``prepare_model_for_kbit_training``, then LoRA adapters.
  Works on CPU too (bitsandbytes' CPU backend), just slowly.
- ``lora``: 16-bit base on GPU (fp32 on CPU) + LoRA adapters; ``dora=True`` for DoRA.
- ``sft``: only the top ``trainable_layers`` decoder blocks, the final norm and the
  LM head learn (``train_embeddings`` adds the input embeddings); the rest is frozen.
- ``full``: every parameter.
- ``auto``: qlora on CUDA, lora on CPU.

LoRA targets default to every linear projection inside the decoder blocks (never the
LM head unless named); ``target_modules`` overrides and is checked against the model.
The loss covers assistant text only (TRL ``assistant_only_loss``, which needs
``{% generation %}`` markers in the training chat template) unless ``train_on_prompts``.

Outputs in ``out_dir``: ``adapter/`` (LoRA/QLoRA: PEFT adapter + tokenizer) or ``model/``
(sft/full: safetensors + tokenizer), each with the training chat template installed;
``loss.csv``, ``loss.png``, ``trainer_state.json``, ``train_info.json``. Checkpoints go to
``out_dir/checkpoints`` every ``save_steps`` and are removed once the run finishes; a run
that finds a checkpoint of the same settings resumes from it.

Multi-GPU / multi-node: the same code runs under a launcher, which starts one process
per device; the Trainer (accelerate) then wraps the model in DDP:

    torchrun --nproc_per_node 4 -m ftpack train --base … --data … --method lora --out …
    accelerate launch --num_processes 4 -m ftpack train …
    torchrun --nnodes 2 --node_rank 0 --master_addr host0 --nproc_per_node 8 -m ftpack train …

On CPU the gloo backend is used. Only rank 0 writes outputs. For full fine-tuning of
models that do not fit one device, shard with FSDP or DeepSpeed through an accelerate
config, e.g. ``accelerate config`` (choose FSDP, FULL_SHARD, TRANSFORMER_BASED_WRAP) and
then ``accelerate launch --config_file fsdp.yaml -m ftpack train --method full …``; the
Trainer picks the plugin up from the launcher's environment. QLoRA under DDP places each
rank's 4-bit copy on its own GPU (``device_map={"": local_rank}``).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ftpack.core.atomic import atomic_dir, atomic_path, sha256_file, write_json
from ftpack.core.errors import FtpackError, bad_input
from ftpack.core.report import Reporter, get_reporter

METHODS = ("qlora", "lora", "sft", "full")
#: Default peak learning rate per method (the usual recipes: QLoRA paper / TRL docs).
DEFAULT_LEARNING_RATE = {"qlora": 2e-4, "lora": 2e-4, "sft": 5e-5, "full": 2e-5}
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
RUN_MARK = "ftpack-run.json"


@dataclass
class TrainResult:
    """What a training run produced and how it went."""

    method: str
    output: Path  # adapter/ or model/
    steps: int
    train_loss: float | None  # last logged training loss
    first_loss: float | None
    eval_loss: float | None
    template: str | None
    base_path: Path
    loss_csv: Path | None = None
    loss_png: Path | None = None
    seconds: float = 0.0
    resumed_from: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


# -- entry point -------------------------------------------------------------------------

def train(
    base: str | Path,
    train_file: Path,
    out_dir: Path,
    *,
    eval_file: Path | None = None,
    method: str = "auto",
    template: str | None = None,
    num_train_epochs: float = 3.0,
    max_steps: int = -1,
    per_device_train_batch_size: int = 4,
    gradient_accumulation_steps: int = 1,
    learning_rate: float | None = None,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.03,
    lr_scheduler_type: str = "cosine",
    max_seq_length: int = 2048,
    gradient_checkpointing: bool | None = None,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    target_modules: Sequence[str] | None = None,
    dora: bool = False,
    trainable_layers: int = 2,
    train_embeddings: bool = False,
    train_on_prompts: bool = False,
    packing: bool = False,
    precision: str = "auto",
    logging_steps: int = 1,
    save_steps: int = 200,
    seed: int = 42,
    resume: bool | None = None,
    keep_checkpoints: bool = False,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    reporter: Reporter | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Fine-tune ``base`` on the conversations in ``train_file``; write outputs to ``out_dir``.

    ``resume``: None = continue from a checkpoint of the same settings if there is one;
    True = a checkpoint must exist; False = start over (old checkpoints are removed).
    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (tests use them).
    """
    r = reporter or get_reporter()
    t0 = time.monotonic()
    out_dir = Path(out_dir)
    train_file, eval_file = Path(train_file), Path(eval_file) if eval_file else None
    train_rows = read_messages_jsonl(train_file)
    eval_rows = read_messages_jsonl(eval_file, allow_empty=True) if eval_file and eval_file.exists() else []

    import torch

    device = _device_kind()
    method = choose_method(method, device, r)
    if method not in METHODS:
        raise bad_input(f"Unknown training method {method!r}.", f"Use one of: auto, {', '.join(METHODS)}.")
    lr = learning_rate if learning_rate is not None else DEFAULT_LEARNING_RATE[method]
    use_bf16, use_fp16 = _precision(precision, device)
    if gradient_checkpointing is None:
        gradient_checkpointing = device == "cuda" and method in ("full", "qlora")

    from ftpack.training.bases import load_tokenizer, resolve_base

    resolved = resolve_base(str(base), trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    tokenizer = load_tokenizer(resolved.path, trust_remote_code=trust_remote_code)
    template_name, chat_template = choose_training_template(template or resolved.template, resolved.model_id,
                                                            tokenizer)
    tokenizer.chat_template = chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    fingerprint = _fingerprint(resolved.path, train_file, eval_file, locals_for_fingerprint=dict(
        method=method, template=template_name, num_train_epochs=num_train_epochs, max_steps=max_steps,
        per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, learning_rate=lr,
        weight_decay=weight_decay, warmup_ratio=warmup_ratio, lr_scheduler_type=lr_scheduler_type,
        max_seq_length=max_seq_length, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        target_modules=list(target_modules or []), dora=dora, trainable_layers=trainable_layers,
        train_embeddings=train_embeddings, train_on_prompts=train_on_prompts, packing=packing,
        precision=precision, seed=seed))
    ckpt_dir = out_dir / CHECKPOINTS_DIR
    resume_from = _resume_checkpoint(ckpt_dir, fingerprint, resume, r)

    with quiet_libraries():
        model = load_model(resolved.path, method, device=device, bf16=use_bf16,
                           trust_remote_code=trust_remote_code)
    if method in ("qlora", "lora"):
        with quiet_libraries():
            model = add_lora(model, quantized=method == "qlora", r=lora_r, alpha=lora_alpha,
                             dropout=lora_dropout, target_modules=target_modules, dora=dora,
                             gradient_checkpointing=gradient_checkpointing)
    elif method == "sft":
        freeze_for_sft(model, trainable_layers, train_embeddings=train_embeddings, reporter=r)
    n_train, n_total = count_parameters(model)
    r.info(f"Method {method}: training {n_train:,} of {n_total:,} parameters "
           f"({100 * n_train / max(n_total, 1):.2f}%), template {template_name}, "
           f"lr {lr:g}, device {device}.")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps_per_epoch = math.ceil(len(train_rows) / (per_device_train_batch_size * gradient_accumulation_steps * world))
    total_steps = max_steps if max_steps and max_steps > 0 else max(1, math.ceil(steps_per_epoch * num_train_epochs))
    args = _sft_config(
        ckpt_dir, device=device, world=world, bf16=use_bf16, fp16=use_fp16,
        num_train_epochs=num_train_epochs, max_steps=max_steps,
        per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, learning_rate=lr,
        weight_decay=weight_decay, warmup_ratio=warmup_ratio, lr_scheduler_type=lr_scheduler_type,
        max_length=max_seq_length, gradient_checkpointing=gradient_checkpointing and method != "qlora",
        packing=packing, assistant_only_loss=not train_on_prompts, logging_steps=logging_steps,
        save_steps=save_steps, seed=seed,
        eval_steps=total_steps // 5 if eval_rows and total_steps >= 10 else None)  # + a final evaluation

    from datasets import Dataset
    from trl import SFTTrainer

    progress = make_progress_callback(r, total_steps)
    with quiet_libraries():
        trainer = SFTTrainer(
            model=model, args=args, processing_class=tokenizer,
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
            callbacks=[progress, *callbacks],
        )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; the reporter shows progress
    is_main = trainer.is_world_process_zero()
    if is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_json(ckpt_dir / RUN_MARK, {"fingerprint": fingerprint})
    try:
        with quiet_libraries():
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except torch.cuda.OutOfMemoryError:
        raise FtpackError("Out of GPU memory while training.",
                          "Lower --batch-size or --max-seq-length, raise --gradient-accumulation-steps, "
                          "use --method qlora, or --gradient-checkpointing.") from None
    finally:
        progress.close()  # an exception skips on_train_end; the bar must not stay open
    eval_loss = None
    if eval_rows:
        with quiet_libraries():
            eval_loss = trainer.evaluate().get("eval_loss")

    result = TrainResult(method=method, output=out_dir / (ADAPTER_DIR if method in ("qlora", "lora") else MODEL_DIR),
                         steps=trainer.state.global_step, train_loss=None, first_loss=None,
                         eval_loss=eval_loss, template=template_name, base_path=resolved.path,
                         resumed_from=_step_of(resume_from))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result.first_loss, result.train_loss = (losses[0], losses[-1]) if losses else (None, None)
    if is_main:
        with quiet_libraries():
            _save_outputs(trainer, tokenizer, result, out_dir, resolved, fingerprint)
        if not keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    if world > 1:
        trainer.accelerator.wait_for_everyone()
    result.seconds = round(time.monotonic() - t0, 2)
    result.metrics = {
        "method": method, "steps": result.steps, "first_train_loss": result.first_loss,
        "final_train_loss": result.train_loss, "final_eval_loss": eval_loss, "template": template_name,
        "base": resolved.model_id, "base_path": str(resolved.path), "trainable_parameters": n_train,
        "total_parameters": n_total, "learning_rate": lr, "resumed_from_step": result.resumed_from,
        "seconds": result.seconds, "world_size": world,
    }
    return result


def run_train_stage(ctx) -> "Any":
    """Stage ``train``: reads data/train.jsonl (+ data/eval.jsonl) from the data stage,
    writes train/adapter/ or train/model/, train/loss.csv, train/loss.png,
    train/trainer_state.json, train/train_info.json.

    The template is the data stage's ``metrics["template"]`` unless the config names one.
    Resumes automatically from train/checkpoints when an interrupted run left one.
    """
    from ftpack.core.runner import StageResult

    cfg = ctx.config
    data_dir = ctx.build_dir / "data"
    data_metrics = {}
    try:
        rec = ctx.upstream("data")
        data_metrics = rec.metrics or {}
        if rec.main_output:
            main = ctx.build_dir / rec.main_output
            data_dir = main if main.is_dir() else main.parent
    except FtpackError:
        pass
    train_file = data_dir / "train.jsonl"
    if not train_file.is_file():
        raise FtpackError(f"{train_file} is missing: the data stage has not produced it.",
                          "Run the build again so the data stage runs first.")
    eval_file = data_dir / "eval.jsonl"
    result = train(
        cfg.base, train_file, ctx.stage_dir, eval_file=eval_file if eval_file.is_file() else None,
        template=cfg.template or data_metrics.get("template"), reporter=ctx.reporter,
        **train_kwargs_from_config(cfg),
    )
    outputs = [result.output, result.loss_csv, result.loss_png, ctx.stage_dir / "trainer_state.json",
               ctx.stage_dir / "train_info.json"]
    return StageResult(outputs=[p for p in outputs if p is not None], main_output=result.output,
                       metrics=result.metrics)


def train_kwargs_from_config(cfg) -> dict[str, Any]:
    """The keyword arguments of :func:`train` that a BuildConfig sets (same names).

    A config value of None means "not set": :func:`train`'s own default applies.
    """
    import inspect

    params = inspect.signature(train).parameters
    skip = {"base", "train_file", "out_dir", "eval_file", "template", "reporter", "callbacks", "resume"}
    out: dict[str, Any] = {}
    for key, param in params.items():
        if key in skip or not hasattr(cfg, key):
            continue
        value = getattr(cfg, key)
        if value is None and param.default is not None:
            continue
        out[key] = value
    return out


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence library progress bars and info logs (the reporter owns the screen);
    restore the previous settings afterwards."""
    import datasets
    from transformers.utils import logging as hf_logging

    import warnings

    bars = hf_logging.is_progress_bar_enabled()
    ds_bars = datasets.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():  # renamed-argument notes from inside the libraries
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|trl)\b")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if ds_bars:
            datasets.enable_progress_bars()


# -- data --------------------------------------------------------------------------------

def read_messages_jsonl(path: Path, *, allow_empty: bool = False) -> list[dict[str, Any]]:
    """Read normalised ``{"messages": [...]}`` JSONL (the data stage's output)."""
    path = Path(path)
    if not path.is_file():
        raise bad_input(f"Training data not found: {path}")
    rows = []
    with open(path, encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise bad_input(f"{path}:{n}: invalid JSON ({exc.args[0] if exc.args else exc}).",
                                "Run `ftpack data` on the file first to normalise it.") from None
            msgs = rec.get("messages") if isinstance(rec, dict) else None
            if not isinstance(msgs, list) or not msgs or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in msgs):
                raise bad_input(f"{path}:{n}: expected {{\"messages\": [{{\"role\": …, \"content\": …}}, …]}}.",
                                "Run `ftpack data` on the file first to normalise it.")
            rows.append({"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]})
    if not rows and not allow_empty:
        raise bad_input(f"{path}: no training examples.")
    return rows


# -- chat template -----------------------------------------------------------------------

def choose_training_template(template: str | None, base_name: str, tokenizer) -> tuple[str, str]:
    """(name, Jinja) of the chat template to train with, from the registry in ``templates/``.

    ``template`` (``--template``, the data stage's choice or the alias's) wins; otherwise
    the format is detected from the tokenizer's own chat template or the base's name.
    The Jinja carries ``{% generation %}`` markers (assistant-only loss) and the BOS
    rule of :func:`ftpack.training.templates.training_chat_template`.
    """
    from ftpack.training import templates

    tpl = templates.choose_template(template, base_name, tokenizer)
    templates.check_generation_markers(tpl)
    return tpl.name, templates.training_chat_template(tpl, tokenizer)


# -- model loading -----------------------------------------------------------------------

def _device_kind() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def choose_method(method: str, device: str, reporter: Reporter) -> str:
    """Resolve ``auto``: QLoRA where a GPU makes 4-bit kernels fast, LoRA on CPU."""
    method = (method or "auto").lower()
    if method != "auto":
        return method
    if device == "cuda":
        reporter.info("Method auto → qlora: a CUDA GPU is present (4-bit base + LoRA saves memory).")
        return "qlora"
    reporter.info("Method auto → lora: no CUDA GPU (4-bit kernels are slow on CPU; fp32 base + LoRA).")
    return "lora"


def _precision(precision: str, device: str) -> tuple[bool, bool]:
    """(bf16, fp16) mixed-precision flags for the Trainer."""
    import torch

    precision = (precision or "auto").lower()
    if precision == "fp32":
        return False, False
    if precision == "bf16":
        return True, False
    if precision == "fp16":
        if device != "cuda":
            raise bad_input("--precision fp16 needs a CUDA GPU.", "Use --precision auto, bf16 or fp32.")
        return False, True
    if device == "cuda":
        return (True, False) if torch.cuda.is_bf16_supported() else (False, True)
    return False, False


def load_model(path: Path, method: str, *, device: str, bf16: bool, trust_remote_code: bool = False):
    """Load the base for ``method``: 4-bit NF4 for qlora, 16-bit (GPU) / fp32 (CPU) for lora,
    fp32 master weights for sft/full (mixed precision comes from the Trainer)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if (device == "cuda" and torch.cuda.is_bf16_supported()) else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": local_rank} if device == "cuda" else "cpu"
        kwargs["dtype"] = compute
    elif method == "lora" and device == "cuda":
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        kwargs["dtype"] = torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except ImportError as exc:  # bitsandbytes missing or without a backend for this device
        raise FtpackError(f"Cannot load the base for {method}: {exc}",
                          "Install bitsandbytes, or use --method lora.") from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise bad_input(f"{path} needs its own Python code to load.",
                            "Pass --trust-remote-code if you trust the source.") from None
        raise
    model.config.use_cache = False  # the KV cache is useless (and warned about) while training
    return model


# -- LoRA --------------------------------------------------------------------------------

def decoder_blocks(model) -> tuple[str, Any]:
    """(qualified name, ModuleList) of the transformer blocks: the ModuleList whose length
    is the config's number of layers (``model.layers``, ``transformer.h``, …)."""
    import torch.nn as nn

    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    best: tuple[str, Any] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n_layers is None or len(module) == n_layers):
            if best is None or len(name) < len(best[0]):
                best = (name, module)
    if best is None:
        raise FtpackError(f"Cannot find the decoder blocks of {type(model).__name__}.",
                          "Use --method full, or --target-modules for LoRA.")
    return best


def _is_linear(module) -> bool:
    import torch.nn as nn

    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ in ("Conv1D", "Linear4bit", "Linear8bitLt")


def linear_module_names(model) -> dict[str, list[str]]:
    """Leaf names of linear layers: {"blocks": [...], "other": [...]} (sorted, unique)."""
    blocks_name, _ = decoder_blocks(model)
    inside, outside = set(), set()
    for name, module in model.named_modules():
        if not _is_linear(module) or "lora_" in name:
            continue
        leaf = name.rsplit(".", 1)[-1]
        (inside if name.startswith(blocks_name + ".") else outside).add(leaf)
    return {"blocks": sorted(inside), "other": sorted(outside - inside)}


def lora_target_modules(model, requested: Sequence[str] | None = None) -> list[str]:
    """LoRA targets: every linear projection inside the decoder blocks, or the user's list
    (each name must be a linear layer of this model; the error lists the valid ones)."""
    names = linear_module_names(model)
    if not requested:
        if not names["blocks"]:
            raise FtpackError(f"No linear layers found in the decoder blocks of {type(model).__name__}.",
                              "Pass --target-modules, or use --method sft/full.")
        return names["blocks"]
    wanted = [t.strip() for item in requested for t in str(item).split(",") if t.strip()]
    valid = set(names["blocks"]) | set(names["other"])
    wrong = [t for t in wanted if t not in valid and t != "all-linear"]
    if wrong:
        raise bad_input(f"--target-modules: {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not a linear "
                        f"layer of {type(model).__name__}.",
                        f"Valid names: {', '.join(names['blocks'] + names['other'])}.")
    if "all-linear" in wanted:
        return names["blocks"]
    return wanted


def add_lora(model, *, quantized: bool, r: int, alpha: int, dropout: float,
             target_modules: Sequence[str] | None, dora: bool, gradient_checkpointing: bool):
    """Wrap ``model`` with PEFT LoRA (or DoRA) adapters on the chosen projections."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    targets = lora_target_modules(model, target_modules)
    if quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        use_dora=dora, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


# -- SFT (partial fine-tuning) -----------------------------------------------------------

def freeze_for_sft(model, trainable_layers: int, *, train_embeddings: bool = False,
                   reporter: Reporter | None = None) -> list[str]:
    """Freeze everything except the top ``trainable_layers`` blocks, the final norm and the
    LM head (and the input embeddings when asked). Returns the trainable parameter names."""
    blocks_name, blocks = decoder_blocks(model)
    if trainable_layers > len(blocks):
        raise bad_input(f"--trainable-layers {trainable_layers}: the model has only {len(blocks)} blocks.",
                        "Use a smaller number, or --method full.")
    for p in model.parameters():
        p.requires_grad_(False)
    for block in list(blocks)[len(blocks) - trainable_layers:]:
        for p in block.parameters():
            p.requires_grad_(True)
    norm = _final_norm(model, blocks_name)
    if norm is not None:
        for p in norm.parameters():
            p.requires_grad_(True)
    head = model.get_output_embeddings()
    if head is not None:
        for p in head.parameters():
            p.requires_grad_(True)
    embeddings = model.get_input_embeddings()
    tied = head is not None and embeddings is not None and head.weight is embeddings.weight
    if tied and not train_embeddings and reporter is not None:
        reporter.warn("The LM head shares its weights with the input embeddings in this model, so the "
                      "embeddings are trained too.")
    if train_embeddings and embeddings is not None:
        for p in embeddings.parameters():
            p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _final_norm(model, blocks_name: str):
    """The norm after the last block (``model.norm``, ``transformer.ln_f``, …)."""
    parent_name = blocks_name.rsplit(".", 1)[0] if "." in blocks_name else ""
    parent = model.get_submodule(parent_name) if parent_name else model
    for attr in ("norm", "final_layernorm", "ln_f", "final_layer_norm", "norm_f"):
        module = getattr(parent, attr, None)
        if module is not None:
            return module
    return None


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# -- trainer configuration -----------------------------------------------------------------

def _sft_config(output_dir: Path, *, device: str, world: int, bf16: bool, fp16: bool, warmup_ratio: float,
                max_length: int, eval_steps: int | None, gradient_checkpointing: bool, **kw):
    from trl import SFTConfig

    extra: dict[str, Any] = {}
    if eval_steps:
        extra.update(eval_strategy="steps", eval_steps=eval_steps,
                     per_device_eval_batch_size=kw["per_device_train_batch_size"])
    if device == "cpu":
        extra["use_cpu"] = True
        if world > 1:
            extra["ddp_backend"] = "gloo"
    if world > 1:  # every trainable parameter is used in each forward pass: skip the extra graph walk
        extra["ddp_find_unused_parameters"] = False
    # transformers 5 renamed gradient_checkpointing to activation_checkpointing (old name warns).
    import dataclasses

    names = {f.name for f in dataclasses.fields(SFTConfig)}
    prefix = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    # Batches of similar lengths: far less padding (about half the tokens of a mixed-length
    # dataset are padding otherwise), the standard Trainer way (group_by_length before 5.x).
    if not kw.get("packing"):
        if "train_sampling_strategy" in names:
            extra["train_sampling_strategy"] = "group_by_length"
        elif "group_by_length" in names:  # pragma: no cover - transformers 4.x
            extra["group_by_length"] = True
    # Always explicit: TRL's SFTConfig defaults gradient checkpointing to on.
    extra[prefix] = bool(gradient_checkpointing)
    if gradient_checkpointing:
        extra[prefix + "_kwargs"] = {"use_reentrant": False}
    return SFTConfig(
        output_dir=str(output_dir),
        warmup_steps=warmup_ratio,  # TrainingArguments 5.x: a float < 1 is a ratio (no warmup_ratio)
        max_length=max_length,
        bf16=bf16, fp16=fp16,
        save_strategy="steps", save_total_limit=2,
        report_to="none", disable_tqdm=True, logging_first_step=True,
        dataloader_num_workers=0, dataset_num_proc=None,
        **extra, **kw,
    )


# -- progress ------------------------------------------------------------------------------

def make_progress_callback(reporter: Reporter, total_steps: int):
    """A ``TrainerCallback`` showing live progress through the reporter: step/total, loss,
    learning rate, tokens/s, ETA (the reporter's bar), eval loss. Rank 0 only."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self) -> None:
            self._cm = None
            self._handle = None
            self._t_last: float | None = None
            self._tokens_last: float | None = None

        def on_train_begin(self, args, state, control, **kw):
            if not state.is_world_process_zero:
                return
            self._cm = reporter.progress("training", total=state.max_steps or total_steps, unit="steps")
            self._handle = self._cm.__enter__()
            self._handle.update(state.global_step)
            self._t_last = time.monotonic()

        def on_step_end(self, args, state, control, **kw):
            if self._handle is not None:
                self._handle.update(state.global_step, total=state.max_steps or None)

        def on_log(self, args, state, control, logs=None, **kw):
            if self._handle is None or not logs:
                return
            fields: dict[str, Any] = {}
            if "loss" in logs:
                fields["loss"] = round(float(logs["loss"]), 4)
            if "learning_rate" in logs:
                fields["lr"] = float(logs["learning_rate"])
            if "eval_loss" in logs:
                fields["eval_loss"] = round(float(logs["eval_loss"]), 4)
            tokens, now = logs.get("num_tokens"), time.monotonic()
            if tokens is not None:
                if self._tokens_last is not None and self._t_last is not None and now > self._t_last:
                    fields["tok/s"] = round((float(tokens) - self._tokens_last) / (now - self._t_last), 1)
                self._tokens_last, self._t_last = float(tokens), now
            if fields:
                self._handle.update(state.global_step, **fields)

        def on_train_end(self, args, state, control, **kw):
            self.close()

        def close(self) -> None:
            if self._cm is not None:
                cm, self._cm, self._handle = self._cm, None, None
                cm.__exit__(None, None, None)

    return ProgressCallback()


# -- checkpoints and resume ------------------------------------------------------------------

def _fingerprint(base_path: Path, train_file: Path, eval_file: Path | None, locals_for_fingerprint: dict) -> str:
    """Hash of what a checkpoint depends on: settings, data, base folder identity."""
    blob = json.dumps({"settings": locals_for_fingerprint, "train": sha256_file(train_file),
                       "eval": sha256_file(eval_file) if eval_file and eval_file.exists() else None,
                       "base": str(base_path)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _resume_checkpoint(ckpt_dir: Path, fingerprint: str, resume: bool | None, r: Reporter) -> Path | None:
    last = last_complete_checkpoint(ckpt_dir)
    if resume is False:
        if ckpt_dir.exists() and int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        return None
    if last is None:
        if resume:
            raise bad_input(f"--resume: no checkpoint in {ckpt_dir}.",
                            "Start without --resume; checkpoints are written every --save-steps steps.")
        return None
    same = False
    mark = ckpt_dir / RUN_MARK
    if mark.is_file():
        try:
            same = json.loads(mark.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
        except ValueError:
            same = False
    if not same and not resume:
        r.info(f"Ignoring checkpoints in {ckpt_dir}: they belong to other settings or data.")
        if int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        return None
    if not same:
        r.warn(f"Resuming from {last} although the settings or data changed since it was written.")
    r.info(f"Resuming from {Path(last).name}.")
    return Path(last)


def last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` that was written to the end.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint killed mid-save lacks
    it and is skipped (resuming from it would fail or load half-written weights).
    """
    if not ckpt_dir.is_dir():
        return None
    found = [(_step_of(p), p) for p in ckpt_dir.glob("checkpoint-*") if p.is_dir()]
    for step, path in sorted((s, p) for s, p in found if s is not None)[::-1]:
        if (path / "trainer_state.json").is_file():
            return path
    return None


def _step_of(checkpoint: Path | None) -> int | None:
    if checkpoint is None:
        return None
    try:
        return int(checkpoint.name.rsplit("-", 1)[-1])
    except ValueError:
        return None


# -- outputs -------------------------------------------------------------------------------

def _save_outputs(trainer, tokenizer, result: TrainResult, out_dir: Path, resolved, fingerprint: str) -> None:
    """Adapter or full weights + tokenizer (training template), loss CSV/PNG, state, info."""
    with atomic_dir(result.output) as tmp:
        model = trainer.model
        if hasattr(model, "module"):  # DDP wrapper
            model = model.module
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    history = trainer.state.log_history
    result.loss_csv = write_loss_csv(out_dir / "loss.csv", history)
    result.loss_png = write_loss_png(out_dir / "loss.png", history)
    with atomic_path(out_dir / "trainer_state.json") as tmp:
        trainer.state.save_to_json(str(tmp))
    write_json(out_dir / "train_info.json", {
        "method": result.method, "output": result.output.name, "base": resolved.model_id,
        "base_path": str(resolved.path), "base_source": resolved.source, "template": result.template,
        "steps": result.steps, "fingerprint": fingerprint,
    })


def loss_rows(history: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per logged step: step, epoch, loss, eval_loss, learning_rate, grad_norm."""
    rows: dict[int, dict[str, Any]] = {}
    for h in history:
        step = h.get("step")
        if step is None or not any(k in h for k in ("loss", "eval_loss")):
            continue
        row = rows.setdefault(int(step), {"step": int(step)})
        for key in ("epoch", "loss", "eval_loss", "learning_rate", "grad_norm"):
            if key in h:
                row[key] = h[key]
    return [rows[k] for k in sorted(rows)]


def write_loss_csv(path: Path, history: Iterable[dict[str, Any]]) -> Path:
    columns = ["step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm"]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            for row in loss_rows(history):
                w.writerow({c: row.get(c, "") for c in columns})
    return path


def write_loss_png(path: Path, history: Iterable[dict[str, Any]]) -> Path:
    """The loss curve (train line, eval points) as a PNG: :func:`ftpack.training.lossplot.plot_loss`."""
    from ftpack.training.lossplot import plot_loss

    return plot_loss(loss_rows(history), path)
