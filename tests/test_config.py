"""BuildConfig: defaults < config file < flags, every value validated at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftpack.core.config import (OPTIONS, build_config, config_to_toml, load_config_file, stage_slice)
from ftpack.core.errors import FtpackError


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
    cfg = build_config("m", {"learning_rate": 3e-4, "target_modules": ["q_proj", "v_proj"],
                             "data": "qa.jsonl", "packing": True})
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


def test_stage_slices_are_disjoint_and_cover_training_flags():
    cfg = build_config("m")
    train = stage_slice(cfg, "train")
    for key in ("learning_rate", "num_train_epochs", "per_device_train_batch_size",
                "gradient_accumulation_steps", "weight_decay", "warmup_ratio", "lr_scheduler_type",
                "lora_r", "lora_alpha", "lora_dropout", "max_steps"):
        assert key in train
    assert "quant" not in train and "quant" in stage_slice(cfg, "quantize")
    data = build_config("m", {"data": "x.jsonl"}).data
    assert isinstance(data, Path) and data.is_absolute() and data.name == "x.jsonl"


def test_input_paths_in_a_config_file_are_relative_to_it(tmp_path, monkeypatch):
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "c.toml").write_text('data = "qa.jsonl"\nlicense = "/abs/LICENSE"\nout = "builds/x"\n')
    monkeypatch.chdir(tmp_path)
    cfg = build_config("m", load_config_file(sub / "c.toml"))
    assert cfg.data == sub / "qa.jsonl"
    assert cfg.license == Path("/abs/LICENSE")
    assert cfg.out == Path("builds/x")  # outputs stay relative to where you run ftpack


def test_toml_config_without_tomllib_uses_tomli(tmp_path):
    """Python 3.10 has no tomllib: the loader falls back to tomli (run with tomllib hidden)."""
    import subprocess
    import sys

    f = tmp_path / "c.toml"
    f.write_text('learning_rate = 2e-4\n[train]\nlora_r = 4\n')
    code = ("import sys\n"
            "sys.modules['tomllib'] = None  # import tomllib now raises ImportError, as on 3.10\n"
            "from ftpack.core.config import build_config, load_config_file\n"
            f"cfg = build_config('m', load_config_file({str(f)!r}))\n"
            "print(cfg.learning_rate, cfg.lora_r, 'tomli' in sys.modules, sys.modules['tomllib'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0.0002", "4", "True", "None"]
