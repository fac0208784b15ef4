"""Click options from OPTIONS: every command's settings have the build's names, types and checks."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from ftpack.core.errors import FtpackError
from ftpack.core.options import config_options, given_flags
from ftpack.settings import command_settings


def _command(**kw):
    @click.command()
    @config_options(["out", "quant", "imatrix", "drop_long"], **kw)
    def cmd(**params):
        click.echo(repr(sorted(given_flags(params).items())))

    return cmd


def test_a_command_words_its_own_help_and_keeps_older_flags():
    cmd = _command(help={"out": "Training output folder."}, aliases={"quant": ["--type"]})
    text = CliRunner().invoke(cmd, ["--help"]).output
    assert "Training output folder." in text and "Build directory" not in text
    assert "--quant, --type" in text and "[default: Q4_K_M]" in text
    assert CliRunner().invoke(cmd, ["--type", "q8_0"]).output.strip() == "[('quant', 'q8_0')]"
    # not given = None, so a config file's value (or the default) stands
    assert CliRunner().invoke(cmd, []).output.strip() == "[]"


def test_required_and_unknown_keys():
    result = CliRunner().invoke(_command(required=["quant"]), [])
    assert result.exit_code == 2 and "--quant" in result.output
    with pytest.raises(KeyError):
        config_options(["no_such_key"])
    with pytest.raises(KeyError):
        config_options(["quant"], help={"qaunt": "typo"})


def test_command_settings_fill_defaults_and_check_like_build(tmp_path):
    assert command_settings(["quant", "drop_long"], {}) == {"quant": "Q4_K_M", "drop_long": False}
    assert command_settings(["quant"], {"quant": "q6_k"}) == {"quant": "Q6_K"}
    with pytest.raises(FtpackError) as exc:
        command_settings(["quant", "imatrix"], {"quant": "Q4_K_Z"})
    assert exc.value.code == 2 and "quant (--quant)" in exc.value.message
    with pytest.raises(FtpackError) as exc:
        command_settings(["imatrix"], {"imatrix": str(tmp_path / "none.dat")})
    assert "imatrix (--imatrix): file not found" in exc.value.message


def test_step_commands_take_their_settings_from_the_options_table():
    """`data`, `convert`, `quantize`, `modelfile`, `verify` share build's flags (names, types, checks)."""
    from ftpack.cli import COMMANDS, cli
    from ftpack.core.config import OPTION_BY_KEY

    expected = {"data": {"format", "template", "max_seq_length", "drop_long", "eval_ratio", "seed"},
                "convert": {"outtype", "allow_pickle"}, "merge": {"allow_pickle"}, "quantize": {"quant", "imatrix"},
                "modelfile": {"template", "system", "parameters", "messages", "license"},
                "verify": {"template", "max_answer_tokens"}}
    ctx = click.Context(cli)
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        params = {p.name: p for p in cmd.params}
        assert expected.get(name, set()) <= set(params), name
        for key in expected.get(name, ()):
            assert OPTION_BY_KEY[key].cli_flag in params[key].opts
            assert params[key].required or params[key].default is None  # not given: the default stands
        # no hand-written twin of a table flag under another name (--out/-o is each command's own output)
        for p in cmd.params:
            for flag in getattr(p, "opts", ()):
                opt = next((o for o in OPTION_BY_KEY.values() if o.cli_flag == flag), None)
                assert opt is None or flag == "--out" or p.name == opt.key, (name, flag, p.name)


def test_train_out_help_is_trains_own(run_cli):
    text = " ".join(run_cli("train", "--help").output.split())
    assert "--out PATH Output folder (required)" in text and "Build directory" not in text
    assert "Build directory" in " ".join(run_cli("build", "--help").output.split())
