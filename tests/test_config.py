"""BuildConfig: defaults < config file < flags, every value validated at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftpack.core.config import (OPTIONS, config_to_toml, load_config_file, stage_slice)
from ftpack.core.errors import FtpackError
from ftpack.settings import build_config


def test_defaults_and_precedence(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('learning_rate = 1e-4\nmax_steps = 10\n[train]\nlora_r = 8\n')
    cfg = build_config("my-qa", load_config_file(f), {"max_steps": "20", "lora_alpha": None})
    assert cfg.learning_rate == 1e-4  # from the file
    assert cfg.lora_r == 8  # from a [table] in the file
    assert cfg.max_steps == 20  # the flag wins
    assert cfg.lora_alpha == 32  # default
    assert cfg.quant == "Q4_K_M"


def test_yaml_config(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("method: qlora\nnum_train_epochs: 2\nparameters:\n  num_ctx: 4096\n  stop: ['<a>', '<b>']\n")
    cfg = build_config("m", load_config_file(f))
    assert cfg.method == "qlora" and cfg.num_train_epochs == 2.0
    assert cfg.parameters == ("num_ctx=4096", "stop=<a>", "stop=<b>")


def test_unknown_key_names_the_key_and_suggests(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("learnig_rate = 1e-4\n")
    with pytest.raises(FtpackError) as exc:
        build_config("m", load_config_file(f))
    assert "learnig_rate" in exc.value.message and exc.value.code == 2
    assert "learning_rate" in exc.value.hint


@pytest.mark.parametrize("key, value, words", [
    ("max_steps", "ten", "integer"),
    ("max_steps", 2.5, "integer"),
    ("learning_rate", "fast", "number"),
    ("packing", "sometimes", "true or false"),
    ("method", "magic", "not one of"),
    ("lora_dropout", 1.5, "<= 1"),
    ("per_device_train_batch_size", 0, ">= 1"),
    ("template", 3, "text"),
    ("learning_rate", float("nan"), "finite"),
])
def test_wrong_value_types_name_the_key(key, value, words):
    with pytest.raises(FtpackError) as exc:
        build_config("m", {key: value})
    assert key in exc.value.message and words in exc.value.message
    assert exc.value.code == 2


def test_bad_toml_is_a_user_error(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("learning_rate = = 1\n")
    with pytest.raises(FtpackError) as exc:
        load_config_file(f)
    assert exc.value.code == 2 and "c.toml" in exc.value.message


def test_missing_config_file(tmp_path):
    with pytest.raises(FtpackError) as exc:
        load_config_file(tmp_path / "nope.toml")
    assert "not found" in exc.value.message


@pytest.mark.parametrize("name", ["", "bad name", "-x", "a/b", "x:" ])
def test_invalid_model_names(name):
    with pytest.raises(FtpackError):
        build_config(name)


def test_print_config_round_trips(tmp_path):
    (tmp_path / "qa.jsonl").write_text("{}\n")
    cfg = build_config("m", {"learning_rate": 3e-4, "target_modules": ["q_proj", "v_proj"],
                             "data": str(tmp_path / "qa.jsonl"), "packing": True})
    f = tmp_path / "again.toml"
    f.write_text(config_to_toml(cfg))
    again = build_config("m", {k: v for k, v in load_config_file(f).items() if k != "name"})
    assert again == cfg


def test_every_option_belongs_to_a_known_stage_and_flag_matches_key():
    from ftpack.core.config import STAGES

    for o in OPTIONS:
        assert o.stage in STAGES or o.stage == ""
        if o.flag is None:
            assert o.cli_flag == "--" + o.key.replace("_", "-")


def test_stage_slices_are_disjoint_and_cover_training_flags(tmp_path, monkeypatch):
    cfg = build_config("m")
    train = stage_slice(cfg, "train")
    for key in ("learning_rate", "num_train_epochs", "per_device_train_batch_size",
                "gradient_accumulation_steps", "weight_decay", "warmup_ratio", "lr_scheduler_type",
                "lora_r", "lora_alpha", "lora_dropout", "max_steps"):
        assert key in train
    assert "quant" not in train and "quant" in stage_slice(cfg, "quantize")
    monkeypatch.chdir(tmp_path)
    Path("x.jsonl").write_text("{}\n")
    data = build_config("m", {"data": "x.jsonl"}).data
    assert isinstance(data, Path) and data.is_absolute() and data.name == "x.jsonl"


def test_input_paths_in_a_config_file_are_relative_to_it(tmp_path, monkeypatch):
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "qa.jsonl").write_text("{}\n")
    (tmp_path / "LICENSE").write_text("MIT\n")
    license_file = tmp_path / "LICENSE"
    (sub / "c.toml").write_text(f'data = "qa.jsonl"\nlicense = "{license_file}"\nout = "builds/x"\n')
    monkeypatch.chdir(tmp_path)
    cfg = build_config("m", load_config_file(sub / "c.toml"))
    assert cfg.data == sub / "qa.jsonl"
    assert cfg.license == tmp_path / "LICENSE"
    assert cfg.out == Path("builds/x")  # outputs stay relative to where you run ftpack


def test_toml_config_without_tomllib_uses_tomli(tmp_path):
    """Python 3.10 has no tomllib: the loader falls back to tomli (run with tomllib hidden)."""
    import subprocess
    import sys

    f = tmp_path / "c.toml"
    f.write_text('learning_rate = 2e-4\n[train]\nlora_r = 4\n')
    code = ("import sys\n"
            "sys.modules['tomllib'] = None  # import tomllib now raises ImportError, as on 3.10\n"
            "from ftpack.core.config import load_config_file\n"
            "from ftpack.settings import build_config\n"
            f"cfg = build_config('m', load_config_file({str(f)!r}))\n"
            "from ftpack.training.templates import template_names  # templates/*.toml: the same reader\n"
            "assert 'chatml' in template_names()\n"
            "print(cfg.learning_rate, cfg.lora_r, 'tomli' in sys.modules, sys.modules['tomllib'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0.0002", "4", "True", "None"]


# -- checks at load time (defect 2): a typo fails before any expensive step ------------------

def _error(**values) -> FtpackError:
    with pytest.raises(FtpackError) as exc:
        build_config("m", values)
    assert exc.value.code == 2
    return exc.value


def test_quant_names_come_from_llama_cpp_and_are_normalised():
    assert build_config("m", {"quant": "q5_k_m"}).quant == "Q5_K_M"
    err = _error(quant="Q4_K_Z")
    assert "quant (config file)" in err.message and "Q4_K_Z" in err.message and "Q4_K_M" in err.hint
    # IQ1/IQ2/IQ3 need an importance matrix: refused with --imatrix none, computed with auto (the default)
    assert "importance matrix" in _error(quant="IQ2_XS", imatrix="none").message
    assert "importance matrix" in _error(quant="iq3_m", imatrix="None").message
    assert build_config("m", {"quant": "IQ2_XS"}).imatrix == "auto"
    assert build_config("m", {"quant": "Auto", "max_kld": 0.02}).quant == "auto"


@pytest.mark.parametrize("params, words", [
    (["temprature=0.7"], "unknown parameter"),
    (["num_ctx=big"], "expected an integer"),
    (["top_p=high"], "expected a number"),
    (["use_mmap=maybe"], "true or false"),
    (["temperature"], "KEY=VALUE"),
])
def test_ollama_parameters_are_checked(params, words):
    assert words in _error(parameters=params).message


def test_typical_p_stops_the_build_at_config_load(tmp_path, cli_in_fresh_process):
    """Ollama 0.34+ refuses typical_p as a model parameter (400 at /api/create,
    server/create.go@0029bb5): the build exits 2 at config load, before torch or transformers
    is imported and before a build folder exists, not after minutes of training."""
    data = tmp_path / "qa.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n')
    out = tmp_path / "build"
    status, heavy, output = cli_in_fresh_process("build", "x", "--data", data, "--out", out,
                                                 "--param", "typical_p=0.5", "--no-register")
    assert (status, heavy) == (2, False), output
    assert "typical_p is deprecated and cannot be set" in " ".join(output.split())
    assert not out.exists()


def test_ollama_parameters_that_ollama_accepts_pass():
    cfg = build_config("m", {"parameters": {"num_ctx": 4096, "stop": ["<a>", "<b>"], "temperature": 0.2,
                                            "use_mmap": True}})
    assert cfg.parameters == ("num_ctx=4096", "stop=<a>", "stop=<b>", "temperature=0.2", "use_mmap=True")


def test_messages_roles_and_texts_are_checked():
    assert build_config("m", {"messages": ["user:Hi", "assistant: Hello!"]}).messages == (
        "user:Hi", "assistant: Hello!")
    assert "ROLE" in _error(messages=["bot:Hi"]).message
    assert "invisible character" in _error(messages=["user:Hi\u200b"]).message
    assert "invisible character" in _error(system="Be brief.\x07").message


def test_template_must_exist_and_is_normalised():
    assert build_config("m", {"template": "ChatML"}).template == "chatml"
    err = _error(template="chatlm")
    assert "chatlm" in err.message and "chatml" in err.hint


def test_input_files_must_exist(tmp_path):
    assert "Dataset not found" in _error(data=str(tmp_path / "qa.jsonl")).message
    for key in ("license", "imatrix", "heldout"):
        err = _error(**{key: str(tmp_path / "nope")})
        assert key in err.message and "not found" in err.message


def test_output_folder_must_be_new_empty_or_a_build(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    assert "is a file" in _error(out=str(a_file)).message
    foreign = tmp_path / "models"
    (foreign / "llama").mkdir(parents=True)
    err = _error(out=str(foreign))
    assert "did not write" in err.message and str(foreign) in err.message
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_config("m", {"out": str(empty)}).out == empty
    build = tmp_path / "build"
    (build / "data").mkdir(parents=True)
    (build / "build.json").write_text("{}")
    assert build_config("m", {"out": str(build)}).out == build
    store_file = tmp_path / "store"
    store_file.write_text("")
    assert "not an Ollama model store" in _error(models_dir=str(store_file)).message


def test_default_build_folder_is_checked_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "builds" / "m").mkdir(parents=True)
    (tmp_path / "builds" / "m" / "notes.txt").write_text("mine")
    assert "did not write" in _error().message


def _hf_folder(folder: Path, arch: str, model_type: str) -> Path:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": model_type}))
    return folder


def test_base_architecture_is_checked_for_local_folders(tmp_path, monkeypatch):
    """ftpack's own converter (llama family) or llama.cpp's (vendored: gemma2, phi3, gpt2...); else refused."""
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    unknown = _hf_folder(tmp_path / "unknown", "NoSuchModelForCausalLM", "no_such_model")
    err = _error(base=str(unknown))
    assert "NoSuchModelForCausalLM" in err.message and "base (config file)" in err.message
    for arch, model_type in (("LlamaForCausalLM", "llama"), ("Gemma2ForCausalLM", "gemma2")):
        folder = _hf_folder(tmp_path / model_type, arch, model_type)
        assert build_config("m", {"base": str(folder)}).base == str(folder)


def test_base_architecture_is_checked_for_cached_hub_ids(tmp_path, monkeypatch):
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--someone--gpt2-chat"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    _hf_folder(repo / "snapshots" / "abc123", "NoSuchModelForCausalLM", "no_such_model")
    assert "NoSuchModelForCausalLM" in _error(base="someone/gpt2-chat").message
    # an alias is its hub id
    tiny = tmp_path / "hub" / "models--TinyLlama--TinyLlama-1.1B-Chat-v1.0"
    (tiny / "refs").mkdir(parents=True)
    (tiny / "refs" / "main").write_text("def456")
    _hf_folder(tiny / "snapshots" / "def456", "NoSuchModelForCausalLM", "no_such_model")
    assert "NoSuchModelForCausalLM" in _error(base="tinyllama-chat").message
    # not downloaded yet: checked when it is materialised, not here
    assert build_config("m", {"base": "someone/other-model"}).base == "someone/other-model"


def test_a_config_typo_fails_before_anything_heavy_is_imported(tmp_path):
    """Defect 2: `ftpack build` stops at config load (exit 2) without importing torch."""
    import subprocess
    import sys

    data = tmp_path / "qa.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]}\n')
    for flags in (["--quant", "Q4_K_Z"], ["--param", "temprature=1"], ["--template", "chatlm"],
                  ["--message", "bot:hi"], ["--out", str(data)]):
        code = ("import sys\nfrom ftpack.cli import cli\n"
                "try:\n"
                f"    cli(['build', 'm', '--data', {str(data)!r}, *{flags!r}], prog_name='ftpack')\n"
                "except SystemExit as exc:\n"
                "    print('EXIT', exc.code, 'torch' in sys.modules)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
        assert "EXIT 2 False" in proc.stdout, (flags, proc.stdout, proc.stderr)


def test_print_config_says_how_auto_values_resolved(tmp_path):
    """`--print-config` shows resolved values with the reason as a comment; the file still loads."""
    import dataclasses

    cfg = dataclasses.replace(build_config("m"), method="lora", register="offline")
    text = config_to_toml(cfg, {"method": "no CUDA GPU:\nplain LoRA", "register": "no Ollama server"})
    assert 'method = "lora"  # no CUDA GPU: plain LoRA\n' in text
    assert 'register = "offline"  # no Ollama server\n' in text
    f = tmp_path / "resolved.toml"
    f.write_text(text)
    again = build_config("m", {k: v for k, v in load_config_file(f).items() if k != "name"})
    assert (again.method, again.register) == ("lora", "offline")


def test_tracked_libraries_are_pyprojects_dependencies():
    """One list: what doctor checks and build.json records is pyproject.toml's `dependencies`."""
    from ftpack.core.config import toml_loads
    from ftpack.core.manifest import library_versions, required_libraries

    pyproject = toml_loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    names = {d.split(">")[0].split(";")[0].strip().lower() for d in pyproject["project"]["dependencies"]
             if ";" not in d}
    required = required_libraries()
    assert set(required) == names and {"torch", "transformers", "llama-cpp-python", "gguf"} <= names
    assert required["torch"] == next(d.split(">=")[1] for d in pyproject["project"]["dependencies"]
                                     if d.startswith("torch>="))
    assert set(library_versions()) == names | {"python", "ftpack"}


def test_a_previous_train_run_is_an_output_folder_ftpack_may_reuse(tmp_path):
    """`ftpack train --out DIR` again (to resume): the folder holds what training wrote, by the
    names the writers use (so the marks cannot drift from them)."""
    from ftpack.core.checks import OUTPUT_MARKS
    from ftpack.core.layout import BuildLayout
    from ftpack.training.checkpoints import RUN_MARK
    from ftpack.training.train import TrainOutputs

    outputs = TrainOutputs(tmp_path, "lora")
    written = {BuildLayout(tmp_path).manifest, outputs.train_info, outputs.checkpoints / RUN_MARK}
    assert {str(p.relative_to(tmp_path)) for p in written} == set(OUTPUT_MARKS)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "data").mkdir()
    (run / "checkpoints" / RUN_MARK).write_text("{}")
    assert build_config("train", {"out": str(run)}).out == run
