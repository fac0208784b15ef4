"""Verify: the quantized model answers and stops (llama.cpp, before registering), fidelity against
the F16 GGUF, and the round trip through a server (the double, rendering its stored TEMPLATE with Go)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftpack.core.errors import FtpackError
from ftpack.core.report import Reporter
from ollama_double import OllamaDouble
from ollama_double.fixtures import ftpack_home, go_renderer, llama_generator  # noqa: F401
from runnable_gguf import tiny_ggufs  # noqa: F401

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    from ftpack.training.bases import embedded_gguf_path

    return embedded_gguf_path()


@pytest.fixture(scope="module")
def llm(smollm2_gguf):
    from ftpack.inference.runtime import open_llama

    with open_llama(smollm2_gguf, n_ctx=1024) as model:
        yield model


def _build(tmp_path: Path, quantized: Path, reference: Path | None, answers: list[str] | None = None):
    """A build dir whose data, convert and quantize stages are done (GGUFs referenced in place)."""
    from ftpack.core.manifest import Manifest, StageRecord

    build_dir = tmp_path / "builds" / "smol"
    (build_dir / "data").mkdir(parents=True)
    answers = answers or ["Paris."]
    (build_dir / "data" / "train.jsonl").write_text("".join(
        json.dumps({"messages": QUESTION + [{"role": "assistant", "content": a}]}) + "\n" for a in answers))
    manifest = Manifest.load(build_dir)
    manifest.stages["data"] = StageRecord(status="done", metrics={"template": "chatml"})
    if reference is not None:
        manifest.stages["convert"] = StageRecord(status="done", main_output=str(reference.resolve()))
    manifest.stages["quantize"] = StageRecord(status="done", main_output=str(quantized.resolve()))
    manifest.save()
    return build_dir, manifest


def _ctx(build_dir, manifest, stage: str, reporter: Reporter, **settings):
    from ftpack.core.runner import StageContext
    from ftpack.settings import build_config

    return StageContext(config=build_config("smol", settings), build_dir=build_dir, stage=stage,
                        manifest=manifest, reporter=reporter)


def _events(stream) -> list[dict]:
    return [json.loads(x) for x in stream.getvalue().splitlines() if x.startswith("{")]


# -- the smoke test on a real model --------------------------------------------------------------

@pytest.mark.slow
def test_smoke_test_answers_and_stops(llm):
    from ftpack.inference.verify import require_stop, smoke_test

    res = smoke_test(llm, QUESTION, template_name="chatml", limit=64)
    assert res.stopped and res.finish_reason == "stop" and 0 < res.tokens < 64
    assert "Paris" in res.answer
    assert res.prompt == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    require_stop(res, "chatml")  # does not raise


@pytest.mark.slow
def test_a_model_that_does_not_stop_fails_naming_the_limit(llm):
    from ftpack.inference.verify import require_stop, smoke_test

    # a long answer cut by a tiny limit: the model cannot reach its end of turn
    res = smoke_test(llm, [{"role": "user", "content": "Tell me a long story about a dragon."}],
                     template_name="chatml", limit=6)
    assert res.finish_reason == "length" and not res.stopped
    with pytest.raises(FtpackError) as info:
        require_stop(res, "chatml")
    assert "did not stop" in info.value.message and "6 tokens" in info.value.message
    assert "max_answer_tokens = 6" in info.value.message
    assert "'<|im_end|>'" in info.value.message and "chat template" in info.value.hint
    assert "--max-answer-tokens" in info.value.hint and "--no-verify" in info.value.hint


# -- the answer limit (defect 7) -----------------------------------------------------------------

def test_answer_limit_defaults_from_the_longest_training_answer(tiny_ggufs):
    from ftpack.inference.runtime import count_tokens, open_llama
    from ftpack.inference.verify import DEFAULT_ANSWER_TOKENS, MIN_ANSWER_MARGIN, answer_limit

    long_answer = "Paris is the capital of France, a city on the river " * 12
    convs = [QUESTION + [{"role": "assistant", "content": a}] for a in ("Paris.", long_answer)]
    with open_llama(tiny_ggufs["Q4_K_M"], n_ctx=256) as llm:
        n = count_tokens(llm, long_answer)
        limit = answer_limit(llm, convs)
        assert n > 4 * MIN_ANSWER_MARGIN  # so the margin is a quarter of the answer
        assert limit.tokens == n + n // 4
        assert f"{n} tokens" in limit.why and "longest training answer" in limit.why
        assert answer_limit(llm, convs, max_answer_tokens=7).tokens == 7
        assert answer_limit(llm, []).tokens == DEFAULT_ANSWER_TOKENS
        short = answer_limit(llm, [QUESTION + [{"role": "assistant", "content": "Paris."}]])
        assert short.tokens == count_tokens(llm, "Paris.") + MIN_ANSWER_MARGIN


def test_verify_stage_fails_naming_the_limit_and_keeps_the_evidence(tmp_path, tiny_ggufs):
    """The random tiny model never ends its turn: verify fails before anything is registered,
    says which limit it hit and why that limit, and verify.json keeps the answer."""
    from ftpack.inference.verify import run_verify_stage

    build_dir, manifest = _build(tmp_path, tiny_ggufs["Q4_K_M"], tiny_ggufs["f16"], answers=["Paris.", "Rome."])
    with pytest.raises(FtpackError) as info:
        run_verify_stage(_ctx(build_dir, manifest, "verify", Reporter("quiet"), max_seq_length=256))
    saved = json.loads((build_dir / "verify" / "verify.json").read_text())
    assert saved["stopped"] is False and saved["finish_reason"] == "length"
    limit = saved["max_answer_tokens"]
    assert f"generated {limit} tokens" in info.value.message
    assert "the longest training answer" in info.value.message and saved["limit_reason"] in info.value.message
    assert saved["fidelity"] is None and "perplexity_ratio" not in saved  # not measured for a failed check

    with pytest.raises(FtpackError) as info:  # the option wins over the data
        run_verify_stage(_ctx(build_dir, manifest, "verify", Reporter("quiet"), max_seq_length=256,
                              max_answer_tokens=5))
    assert "generated 5 tokens" in info.value.message and "max_answer_tokens = 5" in info.value.message


# -- fidelity, and its warnings ---------------------------------------------------------------

def test_verify_stage_measures_fidelity_against_f16(tmp_path, tiny_ggufs):
    import io

    from ftpack.inference.fidelity import WARN_AGREEMENT
    from ftpack.inference.verify import run_verify_stage

    build_dir, manifest = _build(tmp_path, tiny_ggufs["Q2_K"], tiny_ggufs["f16"])
    out = io.StringIO()
    # a stop string the random model emits early stands in for a learned end of turn
    res = run_verify_stage(_ctx(build_dir, manifest, "verify", Reporter("json", out=out), max_seq_length=256,
                                parameters=["stop=e"]))
    m = res.metrics
    assert m["stopped"] and "e" in m["stop"] and "<|im_end|>" in m["stop"]
    assert m["fidelity"]["tokens"] > 10 and m["perplexity_ratio"] == m["fidelity"]["perplexity_ratio"]
    # Q2_K of a near-uniform random model: perplexity barely moves, the top-1 token does
    assert m["top1_agreement"] < WARN_AGREEMENT
    warnings = [e for e in _events(out) if e["event"] == "warning"]
    assert len(warnings) == 1 and "top-1 agreement" in warnings[0]["message"]
    assert "--quant Q5_K_M" in warnings[0]["hint"]
    assert m["fidelity_note"].startswith("warning: Quantization changed the most likely next token")
    assert json.loads((build_dir / "verify" / "verify.json").read_text())["top1_agreement"] == m["top1_agreement"]


def test_verify_stage_without_the_f16_reference_warns(tmp_path, tiny_ggufs):
    import io

    from ftpack.inference.verify import run_verify_stage

    missing = tmp_path / "gone.f16.gguf"
    build_dir, manifest = _build(tmp_path, tiny_ggufs["Q4_K_M"], missing)
    out = io.StringIO()
    res = run_verify_stage(_ctx(build_dir, manifest, "verify", Reporter("json", out=out), max_seq_length=256,
                                parameters=["stop=e"]))
    assert res.metrics["stopped"] and res.metrics["fidelity"] is None
    assert res.metrics["fidelity_note"].startswith("skipped: the F16 reference GGUF") and str(missing) in \
        res.metrics["fidelity_note"]
    warnings = [e for e in _events(out) if e["event"] == "warning"]
    assert len(warnings) == 1 and "fidelity was not measured" in warnings[0]["message"]
    assert "--force convert" in warnings[0]["hint"]


# -- verify_target: a build dir or a plain GGUF (`ftpack verify`) --------------------------------

def test_verify_target_on_a_plain_gguf(tiny_ggufs):
    from ftpack.inference.verify import verify_target

    with pytest.raises(FtpackError) as info:  # template from the GGUF's own chat template (ChatML)
        verify_target(tiny_ggufs["Q4_K_M"], max_answer_tokens=8, reporter=Reporter("quiet"))
    assert "did not stop" in info.value.message and "max_answer_tokens = 8" in info.value.message
    assert "'chatml'" in info.value.message
    # no reference: nothing to compare, so no fidelity and no warning about it
    out = __import__("io").StringIO()
    with pytest.raises(FtpackError):
        verify_target(tiny_ggufs["Q4_K_M"], max_answer_tokens=4, reporter=Reporter("json", out=out))
    assert not [e for e in _events(out) if e["event"] == "warning"]


def test_verify_target_on_a_build_dir_uses_its_data_and_reference(tmp_path, tiny_ggufs):
    from ftpack.inference.verify import verify_target

    build_dir, _ = _build(tmp_path, tiny_ggufs["Q4_K_M"], tiny_ggufs["f16"])
    with pytest.raises(FtpackError) as info:
        verify_target(build_dir, reporter=Reporter("quiet"))
    assert "the longest training answer" in info.value.message  # limit from data/train.jsonl
    (build_dir / "build.json").write_text("{not json")
    with pytest.raises(FtpackError) as info:
        verify_target(build_dir, reporter=Reporter("quiet"))
    assert "build.json is damaged" in info.value.message


# -- the round trip through a server, after registering ---------------------------------------

def test_roundtrip_is_skipped_for_an_offline_registration(tmp_path, tiny_ggufs):
    from ftpack.core.manifest import StageRecord
    from ftpack.inference.verify import run_roundtrip_stage

    build_dir, manifest = _build(tmp_path, tiny_ggufs["Q4_K_M"], None)
    manifest.stages["register"] = StageRecord(status="done", metrics={"mode": "offline", "name": "smol:latest"})
    res = run_roundtrip_stage(_ctx(build_dir, manifest, "roundtrip", Reporter("quiet"), register="offline"))
    assert res.metrics["roundtrip"] == "skipped: offline"
    assert json.loads((build_dir / "roundtrip" / "roundtrip.json").read_text())["roundtrip"] == "skipped: offline"


def test_roundtrip_with_the_server_gone_is_recorded_with_a_warning(tmp_path, tiny_ggufs):
    import io
    import socket

    from ftpack.core.manifest import StageRecord
    from ftpack.inference.verify import run_roundtrip_stage

    with socket.socket() as s:  # a port where certainly nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    build_dir, manifest = _build(tmp_path, tiny_ggufs["Q4_K_M"], None)
    manifest.stages["register"] = StageRecord(status="done", metrics={"mode": "server", "name": "smol:latest"})
    out = io.StringIO()
    res = run_roundtrip_stage(_ctx(build_dir, manifest, "roundtrip", Reporter("json", out=out), register="server",
                                   host=f"127.0.0.1:{port}"))
    assert res.metrics["roundtrip"] == f"skipped: server not reachable at http://127.0.0.1:{port}"
    assert any(e["event"] == "warning" and "/api/chat" in e["message"] for e in _events(out))


@pytest.mark.slow
def test_verify_then_register_then_roundtrip_through_the_server(tmp_path, smollm2_gguf, go_renderer, ftpack_home):
    from ftpack.core.manifest import StageRecord
    from ftpack.inference.verify import run_roundtrip_stage, run_verify_stage
    from ftpack.ollama.modelfile import run_modelfile_stage
    from ftpack.ollama.registration import run_register_stage

    generator = llama_generator()
    double = OllamaDouble(tmp_path / "store", renderer=go_renderer.render, generator=generator).start()
    try:
        build_dir, manifest = _build(tmp_path, smollm2_gguf, None)
        settings = {"register": "server", "host": double.url, "max_seq_length": 1024}
        reporter = Reporter("quiet")
        verified = run_verify_stage(_ctx(build_dir, manifest, "verify", reporter, **settings))
        assert not [p for _, p in double.requests]  # verify never talks to Ollama
        manifest.stages["verify"] = StageRecord(status="done", metrics=verified.metrics)
        for stage, fn in (("modelfile", run_modelfile_stage), ("register", run_register_stage)):
            res = fn(_ctx(build_dir, manifest, stage, reporter, **settings))
            manifest.stages[stage] = StageRecord(status="done", main_output=str(res.main_output.relative_to(build_dir)),
                                                 metrics=res.metrics)
        res = run_roundtrip_stage(_ctx(build_dir, manifest, "roundtrip", reporter, **settings))
    finally:
        double.stop()
        generator.close()
    v = verified.metrics
    assert v["stopped"] and "Paris" in v["answer"]
    assert v["fidelity_note"].startswith("skipped: the F16 reference GGUF")  # this build has no convert record
    assert res.metrics["roundtrip"] == "done" and "Paris" in res.metrics["ollama_answer"]
    chats = [p for meth, p in double.requests if p == "/api/chat"]
    assert chats == ["/api/chat"]
