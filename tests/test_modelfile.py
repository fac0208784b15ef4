"""Modelfile parsing (Ollama's grammar, cases from ollama/ollama parser/parser_test.go),
quoting, rendering with round trip, and the `ftpack modelfile` command."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftpack.core.errors import FtpackError
from ollama_double.fixtures import tiny_gguf  # noqa: F401
from ftpack.ollama.modelfile import (Command, ModelfileError, ModelfileSpec, is_go_printable, parameter_value,
                              parse_modelfile, quote_value, render_modelfile, spec_from_commands)

LLAMA3_LEGACY = ("{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
                 "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>")


# -- cases ported from parser_test.go ------------------------------------------------------

def test_parse_file():  # TestParseFileFile
    text = ('\nFROM model1\nADAPTER adapter1\nLICENSE MIT\nPARAMETER param1 value1\nPARAMETER param2 value2\n'
            'TEMPLATE """' + LLAMA3_LEGACY + '"""    \n')
    assert parse_modelfile(text) == [
        Command("model", "model1"), Command("adapter", "adapter1"), Command("license", "MIT"),
        Command("param1", "value1"), Command("param2", "value2"), Command("template", LLAMA3_LEGACY)]


def test_parse_trim_space():  # TestParseFileTrimSpace
    text = ('\nFROM "     model 1"\nADAPTER      adapter3\nLICENSE "MIT       "\nPARAMETER param1        value1\n'
            'PARAMETER param2    value2\nTEMPLATE """   ' + LLAMA3_LEGACY + '   """    \n')
    assert parse_modelfile(text) == [
        Command("model", "     model 1"), Command("adapter", "adapter3"), Command("license", "MIT       "),
        Command("param1", "value1"), Command("param2", "value2"),
        Command("template", "   " + LLAMA3_LEGACY + "   ")]


@pytest.mark.parametrize("text, expected", [  # TestParseFileFrom
    ('FROM "FOO  BAR  "', [Command("model", "FOO  BAR  ")]),
    ('FROM "FOO BAR"\nPARAMETER param1 value1', [Command("model", "FOO BAR"), Command("param1", "value1")]),
    ("FROM     FOOO BAR    ", [Command("model", "FOOO BAR")]),
    ("FROM /what/is/the path ", [Command("model", "/what/is/the path")]),
    ("FROM foo", [Command("model", "foo")]),
    ("FROM llama3:7b-instruct-q4_K_M", [Command("model", "llama3:7b-instruct-q4_K_M")]),
    ("PARAMETER param1 value1\nFROM foo", [Command("param1", "value1"), Command("model", "foo")]),
    ("PARAMETER what the \nFROM lemons make lemonade ",
     [Command("what", "the"), Command("model", "lemons make lemonade")]),
])
def test_parse_from(text, expected):
    assert parse_modelfile(text) == expected


@pytest.mark.parametrize("text", ["", "PARAMETER param1 value1"])
def test_missing_from(text):
    with pytest.raises(ModelfileError, match="no FROM line"):
        parse_modelfile(text)


def test_parameter_missing_value():  # TestParseFileParametersMissingValue
    with pytest.raises(ModelfileError, match="unexpected EOF"):
        parse_modelfile("\nFROM foo\nPARAMETER param1\n")


def test_bad_command_reports_line_number():  # TestParseFileBadCommand
    with pytest.raises(ModelfileError) as info:
        parse_modelfile("\nFROM foo\nBADCOMMAND param1 value1\n", source="Modelfile")
    assert info.value.message == 'Modelfile: (line 3): command must be one of "from", "license", "template", ' \
        '"system", "adapter", "draft", "renderer", "parser", "parameter", "message", or "requires"'
    assert info.value.code == 2


@pytest.mark.parametrize("word", ["RENDERER", "PARSER", "DRAFT", "REQUIRES"])
def test_newer_commands(word):  # TestParseFileRenderer / Parser / Draft
    assert parse_modelfile(f"\nFROM foo\n{word} x1\n")[1] == Command(word.lower(), "x1")


@pytest.mark.parametrize("text, expected", [  # TestParseFileMessages
    ("\nFROM foo\nMESSAGE system You are a file parser. Always parse things.\n",
     [Command("message", "system: You are a file parser. Always parse things.")]),
    ("\nFROM foo\nMESSAGE system You are a file parser. Always parse things.",
     [Command("message", "system: You are a file parser. Always parse things.")]),
    ("\nFROM foo\nMESSAGE system You are a file parser. Always parse things.\nMESSAGE user Hey there!\n"
     "MESSAGE assistant Hello, I want to parse all the things!\n",
     [Command("message", "system: You are a file parser. Always parse things."),
      Command("message", "user: Hey there!"),
      Command("message", "assistant: Hello, I want to parse all the things!")]),
    ('\nFROM foo\nMESSAGE system """\nYou are a multiline file parser. Always parse things.\n"""\n\t\t\t',
     [Command("message", "system: \nYou are a multiline file parser. Always parse things.\n")]),
])
def test_messages(text, expected):
    assert parse_modelfile(text)[1:] == expected


def test_bad_message_role():
    with pytest.raises(ModelfileError, match=r"\(line 3\): message role must be one of"):
        parse_modelfile("\nFROM foo\nMESSAGE badguy I'm a bad guy!\n")


@pytest.mark.parametrize("text", ["\nFROM foo\nMESSAGE system\n", "\nFROM foo\nMESSAGE system"])
def test_message_without_text(text):
    with pytest.raises(ModelfileError, match="unexpected EOF"):
        parse_modelfile(text)


@pytest.mark.parametrize("text, expected", [  # TestParseFileQuoted
    ('\nFROM foo\nSYSTEM """\nThis is a\nmultiline system.\n"""\n\t\t\t', "\nThis is a\nmultiline system.\n"),
    ('\nFROM foo\nSYSTEM """\nThis is a\nmultiline system."""\n\t\t\t', "\nThis is a\nmultiline system."),
    ('\nFROM foo\nSYSTEM """This is a\nmultiline system."""\n\t\t\t', "This is a\nmultiline system."),
    ('\nFROM foo\nSYSTEM """This is a multiline system."""\n\t\t\t', "This is a multiline system."),
    ('\nFROM foo\nSYSTEM """\nThis is a multiline system with "quotes".\n"""\n',
     '\nThis is a multiline system with "quotes".\n'),
    ('\nFROM foo\nSYSTEM """"""\n', ""),
    ('\nFROM foo\nSYSTEM ""\n', ""),
    ('\nFROM foo\nSYSTEM "\'"\n', "'"),
    ('\nFROM foo\nSYSTEM """\'\'"\'""\'""\'"\'\'\'\'\'""\'""\'"""\n', '\'\'"\'""\'""\'"\'\'\'\'\'""\'""\''),
])
def test_quoted(text, expected):
    assert parse_modelfile(text)[1] == Command("system", expected)


def test_quoted_template_at_eof():
    assert parse_modelfile('\nFROM foo\nTEMPLATE """\n{{ .Prompt }}\n"""')[1] == Command("template", "\n{{ .Prompt }}\n")


@pytest.mark.parametrize("text", ['\nFROM foo\nSYSTEM """This is a multiline system.""\n\t\t\t',
                                  '\nFROM foo\nSYSTEM "\n\t\t\t'])
def test_unterminated_quote(text):
    with pytest.raises(ModelfileError, match="^unexpected EOF$"):
        parse_modelfile(text)


@pytest.mark.parametrize("line, name, value", [  # TestParseFileParameters
    ("numa true", "numa", "true"), ("num_ctx 1", "num_ctx", "1"), ("top_p 1.0", "top_p", "1.0"),
    ("min_p 0.05", "min_p", "0.05"), ("stop ### User:", "stop", "### User:"),
    ("stop ### User: ", "stop", "### User:"), ('stop "### User:"', "stop", "### User:"),
    ('stop "### User: "', "stop", "### User: "), ('stop """### User:"""', "stop", "### User:"),
    ('stop """### User:\n"""', "stop", "### User:\n"), ("stop <|endoftext|>", "stop", "<|endoftext|>"),
    ("stop </s>", "stop", "</s>"),
])
def test_parameters(line, name, value):
    assert parse_modelfile(f"FROM foo\nPARAMETER {line}\n")[1] == Command(name, value)


def test_comments():  # TestParseFileComments
    assert parse_modelfile("\n# comment\nFROM foo\n\t") == [Command("model", "foo")]


@pytest.mark.parametrize("encoding, bom", [("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"),
                                           ("utf-8", b"\xef\xbb\xbf")])
def test_utf16_and_bom(encoding, bom):  # TestParseFileUTF16ParseFile / TestParseMultiByte
    data = "FROM bob\nPARAMETER param1 1\nSYSTEM 你好👋 You are a utf16 file.\n"
    assert parse_modelfile(bom + data.encode(encoding)) == [
        Command("model", "bob"), Command("param1", "1"), Command("system", "你好👋 You are a utf16 file.")]


def test_unprintable_runes_are_dropped_like_ollama():
    # strconv.IsPrint drops NBSP and zero-width joiners; ftpack's quoting refuses them instead.
    assert parse_modelfile("FROM foo\nSYSTEM a\u00a0b\u200dc\x07d\n")[1] == Command("system", "abcd")
    with pytest.raises(FtpackError, match=r"SYSTEM: .*U\+200D"):
        quote_value("a\u200db", "SYSTEM")


# -- quoting: examples and properties -------------------------------------------------------

@pytest.mark.parametrize("value, spelled", [
    ("plain", "plain"), (" lead", '""" lead"""'), ("trail ", '"""trail """'), ("", '""""""'),
    ("two\nlines", '"""two\nlines"""'), ('"starts with a quote', '""""starts with a quote"""'),
    ("back\\slash \\n", "back\\slash \\n"), ("ünïcødé ✓", "ünïcødé ✓"), ("# not a comment", "# not a comment"),
    ('say "hi"\nbye', '"""say "hi"\nbye"""'),
])
def test_quote_examples(value, spelled):
    assert quote_value(value, "SYSTEM") == spelled
    assert parse_modelfile(f"FROM x\nSYSTEM {spelled}\n")[1].args == value


def test_unrepresentable_value_is_refused_naming_the_field():
    with pytest.raises(FtpackError) as info:
        quote_value('say "hi"\nand """\nbye', "MESSAGE user")
    assert info.value.code == 2 and info.value.message.startswith("MESSAGE user:")
    assert "line 2" in info.value.message


_FRAGMENTS = st.sampled_from(['"', '"""', "'", "\n", "\r\n", " ", "\t", "\\", "#", "FROM ", "PARAMETER x",
                              "{{ .System }}", "<|im_end|>", "é", "👋", "\u00a0", "\x07", "a", "b c"])
TEXT = st.lists(st.one_of(_FRAGMENTS, st.text(max_size=6)), max_size=12).map("".join)


def _has_unprintable(value: str) -> bool:
    return any(c not in "\t\n\r" and not is_go_printable(c) for c in value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TEXT)
def test_quote_round_trips_or_refuses_for_a_reason(value):
    try:
        spelled = quote_value(value, "SYSTEM")
    except FtpackError as exc:
        assert exc.code == 2 and exc.message.startswith("SYSTEM:")
        # refused only for the two reasons Ollama's grammar gives
        assert _has_unprintable(value) or (re.search(r'"""[ \t]*[\r\n]', value)
                                           and re.search(r'"[ \t]*[\r\n]', value))
        return
    assert not _has_unprintable(value)
    assert parse_modelfile(f"FROM x\nSYSTEM {spelled}\nPARAMETER stop after\n") == [
        Command("model", "x"), Command("system", value), Command("stop", "after")]


SAFE_TEXT = TEXT.filter(lambda v: not _has_unprintable(v) and not re.search(r'"""[ \t]*[\r\n]', v))
PARAM = st.one_of(st.tuples(st.just("stop"), SAFE_TEXT), st.tuples(st.just("num_ctx"), st.integers(1, 1 << 20).map(str)),
                  st.tuples(st.just("temperature"), st.floats(0, 2).map(lambda f: f"{f:.3g}")))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(template=st.one_of(st.none(), SAFE_TEXT), system=st.one_of(st.none(), SAFE_TEXT),
       params=st.lists(PARAM, max_size=4),
       messages=st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), SAFE_TEXT), max_size=3),
       licenses=st.lists(SAFE_TEXT, max_size=2))
def test_render_parse_round_trip(template, system, params, messages, licenses):
    spec = ModelfileSpec(from_path="./model.Q4_K_M.gguf", template=template, system=system, parameters=params,
                         messages=messages, licenses=licenses, comment="built by ftpack")
    text = render_modelfile(spec)
    assert spec_from_commands(parse_modelfile(text)) == ModelfileSpec(
        from_path=spec.from_path, template=template, system=system, parameters=params, messages=messages,
        licenses=licenses)


# -- parameters ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, text, value", [
    ("num_ctx", "4096", 4096), ("seed", "-1", -1), ("temperature", "0.7", 0.7), ("top_p", "1", 1.0),
    ("temperature", "0.123456789", 0.12345679), ("use_mmap", "True", True), ("stop", "</s>", "</s>"),
])
def test_parameter_types(name, text, value):
    assert parameter_value(name, text) == value


@pytest.mark.parametrize("name, text, needle", [
    ("num_ctx", "abc", "expected an integer"), ("num_ctx", "1.5", "expected an integer"),
    ("temperature", "hot", "expected a number"), ("temperature", "1e39", "out of range"),
    ("use_mmap", "yes", "expected true or false"), ("temprature", "1", "Did you mean 'temperature'"),
    ("mirostat", "1", "no longer supports"),
    # today's server answers 400 for typical_p as a model parameter (server/create.go@0029bb5)
    ("typical_p", "0.5", "typical_p is deprecated and cannot be set as a model parameter"),
])
def test_parameter_errors_name_the_parameter(name, text, needle):
    with pytest.raises(FtpackError) as info:
        parameter_value(name, text)
    assert info.value.code == 2 and name in info.value.message
    assert needle in (info.value.message + (info.value.hint or ""))


# -- the command ----------------------------------------------------------------------------

def test_modelfile_command_writes_a_file_ollama_parses(run_cli, tmp_path, tiny_gguf):
    out = tmp_path / "pkg" / "Modelfile"
    lic = tmp_path / "LICENSE"
    lic.write_text("Apache-2.0\n  indented line\n")
    result = run_cli("--json", "modelfile", tiny_gguf, "--template", "chatml", "--system", " You are terse. ",
                     "--param", "temperature=0.2", "--param", "num_ctx=512", "--message", "user:Hi",
                     "--message", "assistant:Hello!", "--license", lic, "-o", out)
    assert result.exit_code == 0, result.output
    from ftpack.training.templates import load_template

    chatml = load_template("chatml")
    cmds = parse_modelfile(out.read_bytes())
    assert cmds[0].name == "model" and (out.parent / cmds[0].args).resolve() == tiny_gguf.resolve()
    assert Command("template", chatml.ollama_template) in cmds
    assert [c.args for c in cmds if c.name == "stop"] == list(chatml.stop)
    assert Command("system", " You are terse. ") in cmds and Command("num_ctx", "512") in cmds
    assert Command("message", "user: Hi") in cmds and Command("license", lic.read_text()) in cmds
    assert not list(out.parent.glob("*.partial*"))
    events = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "result" for e in events)


@pytest.mark.parametrize("args, needle", [
    (["--param", "num_ctx=big"], "num_ctx"),
    (["--param", "nonsense=1"], "nonsense"),
    (["--system", "bell\x07"], "SYSTEM"),
    (["--message", "robot:hi"], "--message"),
])
def test_modelfile_command_refuses_bad_values(run_cli, tmp_path, tiny_gguf, args, needle):
    out = tmp_path / "Modelfile"
    result = run_cli("modelfile", tiny_gguf, "--template", "chatml", *args, "-o", out)
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert not out.exists()
