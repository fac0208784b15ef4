"""Fine-tune a base model on `messages` conversations with TRL's SFTTrainer.

:func:`train` reads top to bottom as three steps: :func:`setup` (resolve the settings
for this machine, load the base and its tokenizer with the build's chat template, make
the model trainable — :mod:`ftpack.training.trainable` — and build the trainer),
:func:`fit` (train, resuming from a checkpoint of the same run, then evaluate) and
:func:`save` (weights, template, loss curve, state). What to do is one
:class:`~ftpack.training.settings.TrainSettings`. The loss covers assistant text only
(TRL ``assistant_only_loss``, which needs ``{% generation %}`` markers in the training
chat template) unless ``train_on_prompts``.

Outputs in ``out_dir`` (named by :class:`TrainOutputs`): ``adapter/`` (LoRA/QLoRA: PEFT
adapter + tokenizer) or ``model/`` (sft/full: safetensors + tokenizer), each with the
training chat template installed in the tokenizer and the whole format in
``ftpack_template.json``; ``loss.csv``, ``loss.png``, ``trainer_state.json``, ``train_info.json``. Checkpoints go to
``out_dir/checkpoints`` every ``save_steps`` and are removed once the run finishes; a run
that finds a checkpoint of the same settings resumes from it.

Multi-GPU / multi-node: the same code runs under a launcher, which starts one process
per device; the Trainer (accelerate) then wraps the model in DDP:

    torchrun --nproc_per_node 4 -m ftpack train --base … --data … --method lora --out …
    accelerate launch --num_processes 4 -m ftpack train …
    torchrun --nnodes 2 --node_rank 0 --master_addr host0 --nproc_per_node 8 -m ftpack train …

On CPU the gloo backend is used. Only rank 0 writes outputs (under FSDP every rank first
joins in gathering the sharded weights). For full fine-tuning of
models that do not fit one device, shard with FSDP or DeepSpeed through an accelerate
config, e.g. ``accelerate config`` (choose FSDP, FULL_SHARD, TRANSFORMER_BASED_WRAP) and
then ``accelerate launch --config_file fsdp.yaml -m ftpack train --method full …``; the
Trainer picks the plugin up from the launcher's environment. QLoRA under DDP places each
rank's 4-bit copy on its own GPU (``device_map={"": local_rank}``).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ftpack.core.atomic import atomic_dir, atomic_path, write_json
from ftpack.core.errors import FtpackError
from ftpack.core.layout import TrainOutputs
from ftpack.core.quiet import quiet_libraries
from ftpack.core.report import Reporter, get_reporter
from ftpack.training.settings import TrainSettings


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

def train(base: str | Path, train_file: Path, out_dir: Path, *, settings: TrainSettings | None = None,
          template: Any = None, eval_file: Path | None = None, resume: bool | None = None,
          keep_checkpoints: bool = False, reporter: Reporter | None = None, callbacks: Sequence[Any] = (),
          models_dir: Path | str | None = None, **overrides: Any) -> TrainResult:
    """Fine-tune ``base`` on the conversations in ``train_file``; write outputs to ``out_dir``.

    ``settings`` (default: the defaults), with any field replaced by a keyword of the same
    name (``train(base, data, out, method="lora", max_steps=6)``). ``template``: the
    build's :class:`~ftpack.training.templates.ChatTemplate` (a name works too); None
    detects it from the base like the data stage does. ``resume``: None = continue from a
    checkpoint of the same run if there is one; True = a checkpoint must exist; False =
    start over. ``callbacks`` are extra ``transformers.TrainerCallback`` objects (tests).
    ``models_dir``: the Ollama store an ``ollama:NAME`` base is read from.
    """
    run = setup(base, train_file, out_dir, TrainSettings.of(settings, **overrides), template=template,
                eval_file=eval_file, resume=resume, reporter=reporter, callbacks=callbacks, models_dir=models_dir)
    fit(run)
    return save(run, keep_checkpoints=keep_checkpoints)


@dataclass
class TrainingRun:
    """What :func:`setup` prepares for :func:`fit` and :func:`save`."""

    settings: TrainSettings  # resolved for this machine (method, learning rate, checkpointing)
    template: Any  # ChatTemplate
    base: Any  # ResolvedBase
    outputs: TrainOutputs
    trainer: Any
    tokenizer: Any
    progress: Any
    fingerprint: str
    resume_from: Path | None
    has_eval: bool
    world: int
    total_steps: int
    warmup_steps: int
    parameters: tuple[int, int]  # (trainable, total)
    reporter: Reporter
    started: float = field(default_factory=time.monotonic)
    eval_loss: float | None = None
    precision_reason: str = ""
    compiled: bool = False  # decoder blocks run through torch.compile (block_compile)
    compile_reason: str = ""
    threads: int | None = None  # torch threads on CPU
    log_env: dict[str, str] = field(default_factory=dict)  # --report-to: where local logs go (tracking.logging_env)
    base_4bit_layers: int = 0  # linear layers of the base held packed in 4 bits (qlora)
    batch_check: dict[str, Any] = field(default_factory=dict)  # token_check.BatchCheck.as_metrics()
    fast_path: dict[str, Any] = field(default_factory=dict)  # cuda_speed.FastPath.as_metrics() (+ liger_modules)
    undo_liger: Any = None  # cuda_speed.apply_liger's restore: run once training and evaluation are over


def setup(base: str | Path, train_file: Path, out_dir: Path, settings: TrainSettings, *, template: Any = None,
          eval_file: Path | None = None, resume: bool | None = None, reporter: Reporter | None = None,
          callbacks: Sequence[Any] = (), models_dir: Path | str | None = None) -> TrainingRun:
    """Resolve the settings, load base + tokenizer + template, make the model trainable,
    build the trainer and work out the schedule (warm-up steps from the real step count)."""
    from ftpack.gguf.hf_folder import load_hf_config
    from ftpack.training.bases import load_tokenizer, resolve_base
    from ftpack.training.block_compile import compile_decoder_blocks, resolve_torch_compile
    from ftpack.training.checkpoints import checkpoint_to_resume, run_fingerprint
    from ftpack.training.cuda_speed import (apply_liger, gpu_capability, padding_free_collator, plan_fast_path,
                                            use_alloc_conf)
    from ftpack.training.data import read_messages_jsonl
    from ftpack.training.settings import optimizer_steps, resolve_method, warmup_steps
    from ftpack.training.speed import install_cpu_lm_head, resolve_precision, use_physical_cores
    from ftpack.training.templates import (ChatTemplate, check_generation_markers, choose_template,
                                           install_chat_template, trainer_rows)
    from ftpack.training.token_check import check_collated_batches
    from ftpack.training.tracking import local_log_dirs, logging_env, reporting_to
    from ftpack.training.trainable import count_parameters, device_kind, make_trainable, precision_flags

    r = reporter or get_reporter()
    started = time.monotonic()
    train_file = Path(train_file)
    eval_file = Path(eval_file) if eval_file is not None and Path(eval_file).is_file() else None
    train_rows = [{"messages": m} for m in read_messages_jsonl(train_file)]
    eval_rows = [{"messages": m} for m in read_messages_jsonl(eval_file)] if eval_file else []

    device = device_kind()
    method, why = resolve_method(settings.method, device)
    if method != (settings.method or "").lower():
        r.info(f"Method {settings.method} → {method}: {why}.")
    settings = settings.resolved(device)
    precision, precision_why = resolve_precision(settings.precision, device)
    if precision != settings.precision:
        r.info(f"Precision {settings.precision} → {precision}: {precision_why}.")
    settings = dataclasses.replace(settings, precision=precision)  # the fingerprint and build.json say which
    bf16, fp16 = precision_flags(precision, device)
    threads = use_physical_cores() if device == "cpu" else None

    resolved = resolve_base(str(base), trust_remote_code=settings.trust_remote_code,
                            allow_pickle=settings.allow_pickle, models_dir=models_dir)
    tokenizer = load_tokenizer(resolved.path, trust_remote_code=settings.trust_remote_code)
    if not isinstance(template, ChatTemplate):
        template = choose_template(template, resolved.names, tokenizer)
    check_generation_markers(template)
    install_chat_template(template, tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # An Ollama model's own TEMPLATE has no Jinja: its rows reach TRL tokenized, with their masks.
    train_rows = trainer_rows(template, tokenizer, train_rows, train_on_prompts=settings.train_on_prompts)
    eval_rows = trainer_rows(template, tokenizer, eval_rows, train_on_prompts=settings.train_on_prompts)

    outputs = TrainOutputs(Path(out_dir), settings.method)
    fingerprint = run_fingerprint(settings.hyper_parameters(), template.name, resolved.path, train_file, eval_file)
    resume_from = checkpoint_to_resume(outputs.checkpoints, fingerprint, resume, r)

    model_type = load_hf_config(resolved.path).get("model_type")
    fast = plan_fast_path(settings, device=device, model_type=model_type, bf16=bf16,
                          gpu_capability=gpu_capability() if device == "cuda" else None)
    allocator_set = use_alloc_conf(fast)  # before the model's first CUDA allocation
    with quiet_libraries():
        model = make_trainable(resolved.path, settings, device=device, bf16=bf16, reporter=r, fast_path=fast)
    n_train, n_total = count_parameters(model)
    four_bit = packed_4bit_layers(model)
    r.info(f"Method {settings.method}: training {n_train:,} of {n_total:,} parameters "
           f"({100 * n_train / max(n_total, 1):.2f}%), template {template.name}, "
           f"lr {settings.learning_rate:g}, device {device}.")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    estimate = optimizer_steps(-(-len(train_rows) // (settings.per_device_train_batch_size * world)), settings)
    args = _sft_config(outputs.checkpoints, settings, device=device, world=world, bf16=bf16, fp16=fp16,
                       eval_steps=eval_interval(estimate) if eval_rows else None)
    if template.renders_ollama:
        args.assistant_only_loss = False  # pre-tokenized rows: their assistant_masks are the loss mask

    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    log_env = local_log_dirs(settings.report_to, outputs.root)
    if reporting_to(settings.report_to):
        where = "; ".join(f"{k}={v}" for k, v in log_env.items())
        r.info(f"Reporting to {', '.join(reporting_to(settings.report_to))}" + (f" ({where})." if where else "."))
    with quiet_libraries(), logging_env(log_env):  # an integration reads where to write when it is created
        trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                             train_dataset=Dataset.from_list(train_rows),
                             eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
                             callbacks=list(callbacks),
                             data_collator=padding_free_collator(tokenizer) if fast.padding_free else None)
        batches = len(trainer.get_train_dataloader())
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; the reporter shows progress
    # the very tensors a step receives: ids as checked against llama.cpp (the data stage's
    # vocab.gguf beside train.jsonl, in a build), labels on exactly the trained tokens
    batch_check = check_collated_batches(trainer, tokenizer, template, train_rows,
                                         vocab_gguf=train_file.parent / "vocab.gguf",
                                         max_length=settings.max_seq_length,
                                         train_on_prompts=settings.train_on_prompts)
    r.info(f"Batch check: {batch_check.rows} rows of the collated training batches ({batch_check.tokens:,} "
           f"tokens) equal {batch_check.against}; the loss is on exactly their {batch_check.trained:,} "
           "trained tokens.")
    inner = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    if device == "cpu":  # only the labelled positions go through the LM head (speed.install_cpu_lm_head)
        install_cpu_lm_head(inner)
    fast_metrics = {**fast.as_metrics(), "alloc_conf_set": allocator_set,
                    "attention_used": getattr(inner.config, "_attn_implementation", None)}
    undo_liger = None
    if fast.liger:
        with quiet_libraries():
            fast_metrics["liger_modules"], undo_liger = apply_liger(inner)
    summary = fast.summary()
    if summary:
        r.info(f"Fast path: {summary}.")
    total = optimizer_steps(batches, settings)
    compiled, compile_why = resolve_torch_compile(
        settings.torch_compile, method=settings.method, device=device, bf16=bf16, world=world, steps=total,
        checkpointing=_checkpointing(args), dora=settings.dora)
    if compiled:
        blocks = compile_decoder_blocks(inner)
        compile_why += f"; {blocks} decoder blocks, compiled on the first step (cached for later runs)"
        compiled = blocks > 0
    r.info(f"torch.compile {compile_why}.")
    # The schedule's warm-up in whole steps, from the run's real step count (after packing
    # and sharding): the same on every transformers version (see settings.warmup_steps).
    trainer.args.warmup_steps = warmup = warmup_steps(settings.warmup_ratio, total)
    progress = make_progress_callback(r, total)
    trainer.add_callback(progress)
    return TrainingRun(settings=settings, template=template, base=resolved, outputs=outputs, trainer=trainer,
                       tokenizer=tokenizer, progress=progress, fingerprint=fingerprint, resume_from=resume_from,
                       has_eval=bool(eval_rows), world=world, total_steps=total, warmup_steps=warmup,
                       parameters=(n_train, n_total), reporter=r, started=started, log_env=log_env,
                       precision_reason=precision_why, threads=threads, compiled=compiled,
                       compile_reason=compile_why, base_4bit_layers=four_bit, batch_check=batch_check.as_metrics(),
                       fast_path=fast_metrics, undo_liger=undo_liger)


def packed_4bit_layers(model) -> int:
    """How many of the model's linear layers hold their weight packed in 4 bits (bitsandbytes
    ``Linear4bit`` with a quantization state): what QLoRA's base really is in memory."""
    import sys

    bnb = sys.modules.get("bitsandbytes")  # never imported here for the other methods
    if bnb is None:
        return 0
    return sum(1 for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)
               and getattr(m.weight, "quant_state", None) is not None and m.weight.element_size() == 1)


def fit(run: TrainingRun) -> None:
    """Train (from the checkpoint to resume, if any), then evaluate on the eval split."""
    import torch

    from ftpack.training.checkpoints import mark_run
    from ftpack.training.tracking import logging_env

    trainer = run.trainer
    if trainer.is_world_process_zero():
        mark_run(run.outputs.checkpoints, run.fingerprint)
    try:
        try:
            with quiet_libraries(), logging_env(run.log_env):  # most integrations start their run here
                trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)
        except torch.cuda.OutOfMemoryError:
            raise FtpackError("Out of GPU memory while training.",
                              "Lower --batch-size or --max-seq-length, raise --gradient-accumulation-steps, "
                              "use --method qlora, or --gradient-checkpointing.") from None
        finally:
            run.progress.close()  # an exception skips on_train_end; the bar must not stay open
        if run.has_eval:
            last = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), None)
            if last is not None and last.get("step") == trainer.state.global_step:  # just evaluated: not again
                run.eval_loss = last["eval_loss"]
            else:
                with quiet_libraries(), logging_env(run.log_env):
                    run.eval_loss = trainer.evaluate().get("eval_loss")
    finally:
        if run.undo_liger is not None:  # later models of this type in the process run transformers' code
            run.fast_path["liger_restored"] = run.undo_liger()
            run.undo_liger = None


def save(run: TrainingRun, *, keep_checkpoints: bool = False) -> TrainResult:
    """Rank 0 writes weights + tokenizer + template, loss curve, state and info; the
    checkpoints go unless asked to keep them. Returns the result with its metrics."""
    from ftpack.training.checkpoints import step_of

    trainer, settings = run.trainer, run.settings
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = TrainResult(method=settings.method, output=run.outputs.weights, steps=trainer.state.global_step,
                         train_loss=losses[-1] if losses else None, first_loss=losses[0] if losses else None,
                         eval_loss=run.eval_loss, template=run.template.name, base_path=run.base.path,
                         resumed_from=step_of(run.resume_from))
    state_dict = _gathered_state_dict(trainer)  # every rank: FSDP gathers the shards for rank 0
    if trainer.is_world_process_zero():
        with quiet_libraries():
            _save_outputs(run, result, state_dict)
        if not keep_checkpoints:
            shutil.rmtree(run.outputs.checkpoints, ignore_errors=True)
    if run.world > 1:
        trainer.accelerator.wait_for_everyone()
    result.seconds = round(time.monotonic() - run.started, 2)
    n_train, n_total = run.parameters
    result.metrics = {
        "method": settings.method, "steps": result.steps, "first_train_loss": result.first_loss,
        "final_train_loss": result.train_loss, "final_eval_loss": result.eval_loss, "base": run.base.model_id,
        "base_path": str(run.base.path), "trainable_parameters": n_train, "total_parameters": n_total,
        "learning_rate": settings.learning_rate, "optimizer_steps": run.total_steps,
        "warmup_steps": run.warmup_steps, "resumed_from_step": result.resumed_from, "seconds": result.seconds,
        "world_size": run.world, "settings": settings.hyper_parameters(),  # the model card shows these
        "precision": settings.precision, "precision_reason": run.precision_reason, "threads": run.threads,
        "torch_compile": run.compiled, "torch_compile_reason": run.compile_reason,
        "base_4bit_layers": run.base_4bit_layers, **run.batch_check, "fast_path": run.fast_path,
        **throughput(trainer.state.log_history),
    }
    return result


def run_train_stage(ctx: Any) -> Any:
    """Stage ``train``: the data stage's data/train.jsonl (+ eval.jsonl) and chat template
    (:func:`~ftpack.training.templates.template_of_build`) → train/adapter/ or train/model/,
    loss.csv, loss.png, trainer_state.json, train_info.json.

    Resumes automatically from train/checkpoints when an interrupted run left one.
    """
    from ftpack.core.runner import StageResult
    from ftpack.training.templates import template_of_build

    layout = ctx.layout
    if not layout.train_file.is_file():
        raise FtpackError(f"{layout.train_file} is missing: the data stage has not produced it.",
                          "Run the build again so the data stage runs first.")
    result = train(ctx.config.base, layout.train_file, layout.train_dir, settings=TrainSettings.from_config(ctx.config),
                   template=template_of_build(layout), eval_file=layout.eval_file, reporter=ctx.reporter,
                   models_dir=getattr(ctx.config, "models_dir", None))
    outputs = layout.training(result.method)
    return StageResult(outputs=[p for p in outputs.all() if p.exists()], main_output=result.output,
                       metrics=result.metrics)


def throughput(history: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``train_tokens`` (real, non-padding tokens TRL counted) and ``tokens_per_second``
    over the training run's own time (``train_runtime``, evaluations included)."""
    tokens = runtime = None
    for h in history:
        tokens = h.get("num_tokens", tokens)
        runtime = h.get("train_runtime", runtime)
    if not tokens or not runtime:
        return {"train_tokens": tokens, "tokens_per_second": None}
    return {"train_tokens": int(tokens), "tokens_per_second": round(float(tokens) / float(runtime), 1)}


# -- trainer configuration -----------------------------------------------------------------

def _sft_config(output_dir: Path, settings: TrainSettings, *, device: str, world: int, bf16: bool, fp16: bool,
                eval_steps: int | None):
    """TRL's SFTConfig for ``settings`` on this machine. Warm-up is set later, in whole
    steps, once the real step count is known (:func:`setup`)."""
    from trl import SFTConfig

    from ftpack.training.tracking import trainer_report_to

    extra: dict[str, Any] = {}
    if eval_steps:
        extra.update(eval_strategy="steps", eval_steps=eval_steps,
                     per_device_eval_batch_size=settings.per_device_train_batch_size)
    if device == "cpu":
        extra["use_cpu"] = True
        if world > 1:
            extra["ddp_backend"] = "gloo"
    if world > 1:  # every trainable parameter is used in each forward pass: skip the extra graph walk
        extra["ddp_find_unused_parameters"] = False
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    # transformers 5 renamed gradient_checkpointing to activation_checkpointing (old name warns).
    prefix = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    # Batches of similar lengths: far less padding (about half the tokens of a mixed-length
    # dataset are padding otherwise), the standard Trainer way (group_by_length before 5.x).
    if not settings.packing:
        if "train_sampling_strategy" in names:
            extra["train_sampling_strategy"] = "group_by_length"
        elif "group_by_length" in names:  # pragma: no cover - transformers 4.x
            extra["group_by_length"] = True
    # Always explicit: TRL's SFTConfig defaults gradient checkpointing to on. QLoRA's comes
    # from prepare_model_for_kbit_training instead.
    checkpointing = bool(settings.gradient_checkpointing) and settings.method != "qlora"
    checkpointing = checkpointing and not _fsdp_checkpoints_activations()  # the Trainer refuses both
    extra[prefix] = checkpointing
    if checkpointing:
        extra[prefix + "_kwargs"] = {"use_reentrant": False}
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=settings.num_train_epochs, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
        lr_scheduler_type=settings.lr_scheduler_type, max_length=settings.max_seq_length,
        packing=settings.packing, assistant_only_loss=not settings.train_on_prompts,
        logging_steps=settings.logging_steps, save_steps=settings.save_steps, seed=settings.seed,
        bf16=bf16, fp16=fp16,
        save_strategy="steps", save_total_limit=2,
        report_to=trainer_report_to(settings.report_to), disable_tqdm=True, logging_first_step=True,
        dataloader_num_workers=0, dataset_num_proc=None,
        **extra,
    )


def eval_interval(steps: int) -> int | None:
    """Steps between evaluations during a run of ``steps``: every fifth of the run (the
    final evaluation, which :func:`fit` runs, is not repeated when the last one falls on
    the last step); none in a run under 10 steps, where only the final one informs."""
    if steps < 10:
        return None
    return -(-steps // 5)


def _checkpointing(args: Any) -> bool:
    """Whether the Trainer will checkpoint activations (either name of the setting)."""
    return bool(getattr(args, "activation_checkpointing", False) or getattr(args, "gradient_checkpointing", False))


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


# -- outputs -------------------------------------------------------------------------------

def _fsdp_checkpoints_activations() -> bool:
    """True when an accelerate FSDP config (``accelerate launch``) checkpoints activations itself."""
    return (os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
            and os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "").lower() == "true")


def _gathered_state_dict(trainer) -> dict[str, Any] | None:
    """Under FSDP each rank holds a shard of every weight: the full weights, gathered (a
    collective: every rank must call this) for rank 0 to write. None without FSDP."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        return None
    return trainer.accelerator.get_state_dict(trainer.model)


def _save_outputs(run: TrainingRun, result: TrainResult, state_dict: dict[str, Any] | None = None) -> None:
    """Adapter or full weights + tokenizer (training template) + the whole chat format
    (ftpack_template.json), loss CSV/PNG, trainer state, info. ``state_dict``: the gathered
    weights under FSDP (the model itself only holds this rank's shards)."""
    from ftpack.training.spm_tokenizer import keep_spm_model
    from ftpack.training.templates import save_template

    trainer, out = run.trainer, run.outputs
    with atomic_dir(out.weights) as tmp:
        model = trainer.model
        if hasattr(model, "module"):  # DDP / FSDP1 wrapper
            model = model.module
        model.save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True)
        run.tokenizer.save_pretrained(str(tmp))
        keep_spm_model(run.base.path, tmp)  # the converter reads SentencePiece scores from it
        save_template(run.template, tmp)
    history = trainer.state.log_history
    result.loss_csv = write_loss_csv(out.loss_csv, history)
    result.loss_png = write_loss_png(out.loss_png, history)
    with atomic_path(out.trainer_state) as tmp:
        trainer.state.save_to_json(str(tmp))
    write_json(out.train_info, {
        "method": result.method, "output": out.weights.name, "base": run.base.model_id,
        "base_path": str(run.base.path), "base_source": run.base.source, "steps": result.steps,
        "fingerprint": run.fingerprint,
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
