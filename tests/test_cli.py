"""The CLI shell: instant help, version, error handling, output modes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import click
import pytest

from ftpack import __version__, cli as cli_module
from ftpack.core.errors import FtpackError


def test_help_lists_every_command_with_purpose(run_cli):
    result = run_cli("--help")
    assert result.exit_code == 0
    for name, (_target, purpose) in cli_module.COMMANDS.items():
        assert name in result.output
        assert purpose[:30] in " ".join(result.output.split())


def test_every_registered_command_imports_and_has_help(run_cli):
    for name in cli_module.COMMANDS:
        result = run_cli(name, "--help")
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output


def test_help_is_fast_and_imports_no_heavy_library():
    code = ("import sys, time; t = time.perf_counter(); from ftpack.cli import cli\n"
            "try:\n    cli(['--help'], prog_name='ftpack')\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'llama_cpp', 'bitsandbytes', 'gguf', 'numpy') if m in sys.modules]\n"
            "print('HEAVY', heavy); print('SECONDS', time.perf_counter() - t)")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - t0
    assert "HEAVY []" in out
    # The whole process (interpreter start included) must stay well under a second.
    assert wall < 1.0, f"ftpack --help took {wall:.2f}s"


def test_command_help_imports_no_heavy_library():
    """Every command's --help too: the command modules import their libraries only when they run."""
    code = ("import sys\nfrom ftpack.cli import COMMANDS, cli\n"
            "for name in COMMANDS:\n"
            "    try:\n        cli([name, '--help'], prog_name='ftpack')\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'llama_cpp', 'bitsandbytes', 'gguf', 'numpy',"
            " 'huggingface_hub') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_version(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_unknown_command_is_usage_error(run_cli):
    result = run_cli("trian")
    assert result.exit_code == 2
    assert "No such command" in result.output


@pytest.fixture
def fake_commands(monkeypatch):
    """Temporarily register commands that fail in the ways users can make them fail."""

    @click.command()
    @click.option("--kind", default="input")
    def boom(kind):
        if kind == "input":
            raise FtpackError("bad data line 3", "fix line 3", code=2)
        if kind == "run":
            raise FtpackError("Ollama is not running", "run `ollama serve`")
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind == "bug":
            raise ZeroDivisionError("oops")
        if kind == "disk":
            import errno

            raise OSError(errno.ENOSPC, "No space left on device", "/tmp/x.gguf")

    import types

    mod = types.ModuleType("ftpack_test_fake")
    mod.boom = boom
    monkeypatch.setitem(sys.modules, "ftpack_test_fake", mod)
    monkeypatch.setitem(cli_module.COMMANDS, "boom", ("ftpack_test_fake:boom", "fails on purpose"))


@pytest.mark.parametrize("kind, code, text", [
    ("input", 2, "bad data line 3"),
    ("run", 1, "Ollama is not running"),
    ("interrupt", 130, "Interrupted"),
    ("bug", 1, "Internal error: ZeroDivisionError"),
    ("disk", 1, "Disk full"),
])
def test_errors_are_short_messages_with_exit_codes(fake_commands, run_cli, kind, code, text):
    result = run_cli("boom", "--kind", kind)
    assert result.exit_code == code
    assert text in result.output
    assert "hint:" in result.output
    assert "Traceback" not in result.output


def test_interrupt_says_how_to_resume(fake_commands, run_cli):
    result = run_cli("boom", "--kind", "interrupt")
    assert "resume" in result.output


def test_debug_shows_the_exception(fake_commands, cli_runner):
    from ftpack.cli import cli

    result = cli_runner.invoke(cli, ["--debug", "boom", "--kind", "input"])
    assert isinstance(result.exception, FtpackError)


def test_json_mode_prints_error_as_json(fake_commands, run_cli):
    result = run_cli("--json", "boom", "--kind", "input")
    assert result.exit_code == 2
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1] == {"event": "error", "message": "bad data line 3", "hint": "fix line 3"}


def test_real_process_exit_code_and_no_traceback(tmp_path):
    # `ftpack build` with a config file that has an unknown key: a user mistake.
    cfg = tmp_path / "c.toml"
    cfg.write_text("learnig_rate = 1\n")
    proc = subprocess.run([sys.executable, "-m", "ftpack", "build", "x", "--config", str(cfg)],
                          capture_output=True, text=True)
    assert proc.returncode == 2  # a user mistake: exit 2, never 1 (a failed run)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "error:" in proc.stderr


# -- output flags after the subcommand (defect 3) -----------------------------------------------

def test_json_after_the_subcommand(run_cli, tmp_path):
    result = run_cli("templates", "--json")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.exit_code == 0 and any(e["event"] == "result" and "templates" in e["data"] for e in events)
    # `ftpack build ... --json`: even a refused build answers in JSON
    result = run_cli("build", "x", "--data", tmp_path / "missing.jsonl", "--json")
    assert result.exit_code == 2
    last = json.loads(result.stdout.splitlines()[-1])
    assert last["event"] == "error" and "Dataset not found" in last["message"]


def test_doctor_json_after_the_subcommand(run_cli, monkeypatch):
    from ftpack.commands import doctor

    # The flag is what is tested here; the real checks (a minute of child processes) are test_doctor's.
    monkeypatch.setattr(doctor, "run_checks", lambda builds_dir, host: [doctor.Check("Python", doctor.OK, "3")])
    result = run_cli("doctor", "--json")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1]["event"] == "final" and events[-1]["ok"] == 1


def test_quiet_after_the_subcommand(run_cli):
    loud = run_cli("templates")
    quiet = run_cli("templates", "--quiet")
    assert quiet.exit_code == 0 and "chatml" in loud.stdout
    assert quiet.stdout.strip().splitlines() == [loud.stdout.strip().splitlines()[-1]]
    assert run_cli("templates", "-q").stdout == quiet.stdout
    # --json wins over --quiet in either order, as before the subcommand
    assert json.loads(run_cli("--json", "templates", "-q").stdout.splitlines()[-1])["event"] == "final"
    assert json.loads(run_cli("-q", "templates", "--json").stdout.splitlines()[-1])["event"] == "final"


def test_debug_after_the_subcommand(fake_commands, cli_runner):
    from ftpack.cli import cli

    assert isinstance(cli_runner.invoke(cli, ["boom", "--kind", "input", "--debug"]).exception, FtpackError)
    plain = cli_runner.invoke(cli, ["boom", "--kind", "input"])
    assert plain.exit_code == 2 and not isinstance(plain.exception, FtpackError)
