"""`ftpack chat`: a local conversation with a GGUF or a build, with the template and stops Ollama uses;
a full context starts the conversation over instead of ending the session."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ftpack.core.errors import FtpackError
from ftpack.core.report import Reporter
from ollama_double.fixtures import tiny_gguf  # noqa: F401
from runnable_gguf import tiny_ggufs  # noqa: F401


def _events(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.startswith("{")]


def _build_dir(tmp_path: Path, gguf: Path, template: str = "llama3") -> Path:
    """A build whose data and quantize stages are done, written through the Manifest."""
    from ftpack.core.manifest import Manifest, StageRecord

    build = tmp_path / "b"
    (build / "gguf").mkdir(parents=True)
    target = build / "gguf" / "b.Q4_K_M.gguf"
    target.write_bytes(gguf.read_bytes())
    manifest = Manifest.load(build)
    manifest.stages["data"] = StageRecord(status="done", metrics={"template": template})
    manifest.stages["quantize"] = StageRecord(status="done", main_output="gguf/b.Q4_K_M.gguf")
    manifest.save()
    return build


# -- a full context resets the conversation (defect 8) -------------------------------------------

def test_full_context_starts_the_conversation_over(tiny_ggufs):
    from ftpack.inference.chat import ChatSession, resolve_target

    out = io.StringIO()
    target = resolve_target(tiny_ggufs["Q4_K_M"])  # ChatML, found from the GGUF's own template
    assert target.template_name == "chatml"
    with ChatSession(target, max_tokens=12, temperature=0.0, n_ctx=96, reporter=Reporter("json", out=out)) as s:
        answers = []
        for i in range(6):
            answers.append("".join(s.send(f"Question number {i}: what is the capital of France?")))
            assert s.last_finish_reason in ("stop", "length")
        assert s.resets >= 1  # 96 tokens hold only a few turns
        assert 2 <= len(s.history) < 12 and s.history[-2]["content"].startswith("Question number 5")
    assert all(answers)  # every turn was answered, none ended the session
    resets = [e for e in _events(out.getvalue()) if e["event"] == "context_reset"]
    warnings = [e for e in _events(out.getvalue()) if e["event"] == "warning"]
    assert len(resets) == s.resets and len(warnings) == s.resets
    assert "filled the context" in warnings[0]["message"] and "of 96 tokens" in warnings[0]["message"]
    assert "--ctx" in warnings[0]["hint"]


def test_chat_command_keeps_going_when_the_context_fills(run_cli, tiny_ggufs):
    prompts = [f"Tell me about city number {i} and its river." for i in range(6)]
    args = [a for p in prompts for a in ("-p", p)]
    result = run_cli("--json", "chat", tiny_ggufs["Q4_K_M"], "--ctx", "96", "--max-tokens", "12",
                     "--temperature", "0", *args)
    assert result.exit_code == 0, result.output
    events = _events(result.output)
    assert [e["prompt"] for e in events if e["event"] == "answer"] == prompts
    assert any(e["event"] == "context_reset" for e in events)
    assert not any(e["event"] == "error" for e in events)


def test_a_message_too_long_for_the_context_is_a_warning_not_the_end(run_cli, tiny_ggufs):
    long = "river " * 200
    result = run_cli("--json", "chat", tiny_ggufs["Q4_K_M"], "--ctx", "64", "--max-tokens", "8",
                     "--temperature", "0", "-p", long, "-p", "Hello?")
    assert result.exit_code == 0, result.output
    events = _events(result.output)
    warning = next(e for e in events if e["event"] == "warning")
    assert "leaves no room for an answer" in warning["message"] and "64 tokens" in warning["message"]
    assert [e["prompt"] for e in events if e["event"] == "answer"] == ["Hello?"]


# -- builds are read through the manifest; a damaged one is a clear error (defect 8) ---------------

@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"stages": {"quantize": 3}}'])
def test_damaged_build_json_is_a_clear_error(run_cli, tmp_path, tiny_gguf, content):
    build = _build_dir(tmp_path, tiny_gguf)
    (build / "build.json").write_text(content)
    result = run_cli("chat", build, "-p", "hi")
    assert result.exit_code == 1, result.output
    assert "build.json is damaged" in result.output and "Internal error" not in result.output
    assert "Traceback" not in result.output


def test_chat_target_errors(run_cli, tmp_path, tiny_gguf):
    missing = run_cli("chat", tmp_path / "nope.gguf", "-p", "hi")
    assert missing.exit_code == 2 and "Not found" in missing.output
    unknown = run_cli("chat", tiny_gguf, "-p", "hi")  # no chat template in the GGUF, none given
    assert unknown.exit_code == 2 and "--template" in unknown.output and "Traceback" not in unknown.output
    not_build = run_cli("chat", tmp_path, "-p", "hi")
    assert not_build.exit_code == 2 and "build.json" in not_build.output


def test_chat_target_from_a_build_dir(tmp_path, tiny_gguf):
    from ftpack.inference.chat import resolve_target
    from ftpack.ollama.modelfile import build_spec, write_modelfile

    build = _build_dir(tmp_path, tiny_gguf)
    gguf = build / "gguf" / "b.Q4_K_M.gguf"
    t = resolve_target(build)  # before the modelfile stage: the template's own stops
    assert t.gguf == gguf and t.template_name == "llama3" and t.options == {}
    from ftpack.inference.heldout import build_outputs

    assert build_outputs(build) == (gguf, "llama3", "")  # what the held-out comparison asks
    mf = build / "ollama" / "Modelfile"
    write_modelfile(mf, build_spec(gguf, mf, template_name="llama3", system="Be kind.",
                                   parameters=[("temperature", "0.2")], num_ctx=777))
    t = resolve_target(build)
    assert t.gguf == gguf and t.template_name == "llama3" and t.system == "Be kind."
    assert t.stop == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert t.options == {"temperature": 0.2, "num_ctx": 777}


def test_unfinished_build_says_so(tmp_path, tiny_gguf):
    from ftpack.core.manifest import Manifest, StageRecord
    from ftpack.inference.chat import resolve_target

    build = _build_dir(tmp_path, tiny_gguf)
    manifest = Manifest.load(build)
    manifest.stages["quantize"] = StageRecord(status="failed")
    manifest.save()
    with pytest.raises(FtpackError) as info:
        resolve_target(build)
    assert info.value.code == 2 and "no quantized GGUF yet" in info.value.message


# -- a real model ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_chat_command_streams_an_answer(run_cli):
    from ftpack.training.bases import embedded_gguf_path

    smollm2_gguf = embedded_gguf_path()
    result = run_cli("chat", smollm2_gguf, "-p", "What is the capital of France?", "--temperature", "0",
                     "--max-tokens", "48")
    assert result.exit_code == 0, result.output
    assert ">>> What is the capital of France?" in result.output and "Paris" in result.output
    js = run_cli("--json", "chat", smollm2_gguf, "-p", "What is the capital of France?", "-p", "And of Italy?",
                 "--temperature", "0", "--max-tokens", "48")
    events = _events(js.output)
    answers = [e for e in events if e["event"] == "answer"]
    assert len(answers) == 2 and "Paris" in answers[0]["text"] and "Rome" in answers[1]["text"]
    assert all(a["finish_reason"] == "stop" for a in answers)


def test_llama_cpp_log_only_with_debug(run_cli, tiny_ggufs, capfd):
    """llama.cpp logs through a Python callback and the C stderr; ftpack keeps both off the
    screen unless --debug."""
    args = ("chat", tiny_ggufs["Q4_K_M"], "--max-tokens", "2", "--temperature", "0", "-p", "hi")
    quiet = run_cli(*args)
    native = capfd.readouterr()
    assert quiet.exit_code == 0
    assert "llama_model_load" not in quiet.output + native.err + native.out
    loud = run_cli("--debug", *args)
    native = capfd.readouterr()
    assert loud.exit_code == 0
    assert "llama_model_load" in loud.output + native.err + native.out


def test_llama_cpp_runs_on_every_physical_core(tiny_ggufs, monkeypatch):
    """Generation uses one thread per physical core, as llama.cpp (and so Ollama) picks by
    itself; llama-cpp-python's own default, half the logical CPUs, is 1 thread on 2 cores."""
    from ftpack.core import cpu
    from ftpack.inference.runtime import open_llama

    monkeypatch.setattr(cpu, "physical_cores", lambda: 3)
    with open_llama(tiny_ggufs["Q4_K_M"], n_ctx=64) as llm:
        assert (llm.context_params.n_threads, llm.context_params.n_threads_batch) == (3, 3)
    with open_llama(tiny_ggufs["Q4_K_M"], n_ctx=64, threads=1) as llm:
        assert (llm.context_params.n_threads, llm.context_params.n_threads_batch) == (1, 1)
