"""Verify stage and `ftpack chat`: the quantized model answers and stops (llama.cpp), and a
registered model answers through /api/chat (the double, rendering its stored TEMPLATE with Go)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftpack.core.errors import FtpackError
from ftpack.core.report import Reporter
from ollama_double import OllamaDouble
from ollama_double.fixtures import ftpack_home, go_renderer, llama_generator, tiny_gguf  # noqa: F401

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    from ftpack.training.bases import embedded_gguf_path

    return embedded_gguf_path()


@pytest.fixture(scope="module")
def llm(smollm2_gguf):
    from ftpack.inference.verify import load_llama

    model = load_llama(smollm2_gguf, n_ctx=1024)
    yield model
    model.close()


@pytest.mark.slow
def test_smoke_test_answers_and_stops(smollm2_gguf, llm):
    from ftpack.inference.verify import require_stop, smoke_test

    res = smoke_test(smollm2_gguf, QUESTION, template_name="chatml", max_tokens=64, llm=llm)
    assert res.stopped and res.finish_reason == "stop" and 0 < res.tokens < 64
    assert "Paris" in res.answer
    assert res.prompt == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    require_stop(res, "chatml")  # does not raise


@pytest.mark.slow
def test_a_model_that_does_not_stop_fails_with_an_explanation(smollm2_gguf, llm):
    from ftpack.inference.verify import require_stop, smoke_test

    # a long answer cut by a tiny token limit: the model cannot reach its end of turn
    res = smoke_test(smollm2_gguf, [{"role": "user", "content": "Tell me a long story about a dragon."}],
                     template_name="chatml", max_tokens=6, llm=llm)
    assert res.finish_reason == "length" and not res.stopped
    with pytest.raises(FtpackError) as info:
        require_stop(res, "chatml")
    assert "did not stop" in info.value.message and "6 tokens" in info.value.message
    assert "'<|im_end|>'" in info.value.message and "chat template" in info.value.hint


def _fake_build(tmp_path: Path, gguf: Path) -> tuple[Path, object]:
    """A build dir whose data/quantize stages are done (the GGUF referenced in place)."""
    from ftpack.core.manifest import Manifest, StageRecord

    build_dir = tmp_path / "builds" / "smol"
    (build_dir / "data").mkdir(parents=True)
    (build_dir / "data" / "train.jsonl").write_text(json.dumps(
        {"messages": QUESTION + [{"role": "assistant", "content": "Paris."}]}) + "\n")
    manifest = Manifest.load(build_dir)
    manifest.stages["data"] = StageRecord(status="done", metrics={"template": "chatml"})
    manifest.stages["quantize"] = StageRecord(status="done", main_output=str(gguf.resolve()))
    return build_dir, manifest


@pytest.mark.slow
def test_verify_stage_with_server_chat(tmp_path, smollm2_gguf, go_renderer, monkeypatch, ftpack_home):
    from ftpack.core.runner import StageContext
    from ftpack.core.config import build_config
    from ftpack.ollama.modelfile import run_modelfile_stage
    from ftpack.ollama.registration import run_register_stage
    from ftpack.inference.verify import run_verify_stage

    generator = llama_generator()
    double = OllamaDouble(tmp_path / "store", renderer=go_renderer.render, generator=generator).start()
    try:
        build_dir, manifest = _fake_build(tmp_path, smollm2_gguf)
        cfg = build_config("smol", {"register": "server", "host": double.url, "max_seq_length": 1024})

        def ctx(stage):
            return StageContext(config=cfg, build_dir=build_dir, stage=stage, manifest=manifest,
                                reporter=Reporter("quiet"))

        from ftpack.core.manifest import StageRecord

        for stage, fn in (("modelfile", run_modelfile_stage), ("register", run_register_stage)):
            res = fn(ctx(stage))
            manifest.stages[stage] = StageRecord(status="done", main_output=str(res.main_output.relative_to(build_dir)),
                                                 metrics=res.metrics)
        res = run_verify_stage(ctx("verify"))
    finally:
        double.stop()
        generator.close()
    m = res.metrics
    assert m["stopped"] and "Paris" in m["answer"]
    assert "Paris" in m["ollama_answer"]
    assert json.loads((build_dir / "verify" / "verify.json").read_text())["answer"] == m["answer"]
    # the double rendered the prompt from the stored TEMPLATE exactly as training did
    chats = [p for meth, p in double.requests if p == "/api/chat"]
    assert chats == ["/api/chat"]


@pytest.mark.slow
def test_chat_command_streams_an_answer(run_cli, smollm2_gguf):
    result = run_cli("chat", smollm2_gguf, "-p", "What is the capital of France?", "--temperature", "0",
                     "--max-tokens", "48")
    assert result.exit_code == 0, result.output
    assert ">>> What is the capital of France?" in result.output and "Paris" in result.output
    js = run_cli("--json", "chat", smollm2_gguf, "-p", "What is the capital of France?", "-p", "And of Italy?",
                 "--temperature", "0", "--max-tokens", "48")
    events = [json.loads(x) for x in js.output.splitlines() if x.startswith("{")]
    answers = [e for e in events if e["event"] == "answer"]
    assert len(answers) == 2 and "Paris" in answers[0]["text"] and "Rome" in answers[1]["text"]
    assert all(a["finish_reason"] == "stop" for a in answers)


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

    build = tmp_path / "b"
    (build / "gguf").mkdir(parents=True)
    gguf = build / "gguf" / "b.Q4_K_M.gguf"
    gguf.write_bytes(tiny_gguf.read_bytes())
    (build / "build.json").write_text(json.dumps({"stages": {
        "data": {"status": "done", "metrics": {"template": "llama3"}},
        "quantize": {"status": "done", "main_output": "gguf/b.Q4_K_M.gguf"}}}))
    mf = build / "ollama" / "Modelfile"
    write_modelfile(mf, build_spec(gguf, mf, template_name="llama3", system="Be kind.",
                                   parameters=[("temperature", "0.2")], num_ctx=777))
    t = resolve_target(build)
    assert t.gguf == gguf and t.template_name == "llama3" and t.system == "Be kind."
    assert t.stop == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert t.options == {"temperature": 0.2, "num_ctx": 777}
