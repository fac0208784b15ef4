"""ftpack.ollama.renderers equals Ollama's own Go renderers, byte for byte.

Two sources of truth: (1) tests/data/ollama_renderers_golden.json, the outputs of Ollama's
Go code itself (model/renderers at ollama/ollama fb30760, v0.33.0-rc2) on 23 conversations
in every think mode; (2) cases transcribed from Ollama's renderer tests, cited per test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftpack.core.errors import FtpackError
from ftpack.ollama import renderers

GOLDEN = json.loads((Path(__file__).parent / "data" / "ollama_renderers_golden.json").read_text(encoding="utf-8"))


def test_golden_covers_every_supported_renderer_and_think_mode():
    cases = GOLDEN["cases"]
    assert len(cases) == 690
    assert {c["renderer"] for c in cases} == {"qwen3.5", "gemma4-small", "gemma4-large", "laguna", "nemotron-3-nano"}
    assert {json.dumps(c["think"]) for c in cases} == {"null", "true", "false", '"high"', '"medium"', '"low"'}
    kinds = {c["case"] for c in cases}
    for needed in ("system_user", "multi_turn", "multi_turn_with_thinking", "final_assistant_prefill",
                   "go_vs_python_space", "unicode"):
        assert needed in kinds


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"{c['renderer']}-{c['case']}-{c['think']}")
def test_equals_ollamas_go_renderer(case):
    assert renderers.render(case["renderer"], case["messages"], case["think"]) == case["output"]


# -- model/renderers/qwen35_test.go@82848a7 and qwen3vl_thinking_test.go@da70c32 --------------------

def test_qwen35_prefill_keeps_the_thinking_of_the_last_answer():  # TestQwen35RendererAssistantPrefillWithThinking
    msgs = [{"role": "user", "content": "Write two words."},
            {"role": "assistant", "thinking": "Keep it short.", "content": "Hello world"}]
    assert renderers.render("qwen3.5", msgs) == (
        "<|im_start|>user\nWrite two words.<|im_end|>\n<|im_start|>assistant\n<think>\nKeep it short.\n</think>\n\n"
        "Hello world")


def test_qwen35_no_think_writes_an_empty_think_block():  # TestQwen35RendererNoThinkPrefill
    got = renderers.render("qwen3.5", [{"role": "user", "content": "hello"}], False)
    assert got.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_qwen35_earlier_answers_lose_their_think_block():
    msgs = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]
    assert renderers.render("qwen3.5", msgs, True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n<think>\n")


# -- model/renderers/gemma4_reference_test.go@8a0016f (TestGemma4RendererMatchesReference) -----------

GEMMA4_REFERENCE = [
    ([{"role": "user", "content": "Hello"}], None, "<bos><|turn>user\nHello<turn|>\n<|turn>model\n"),
    ([{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi"}], None,
     "<bos><|turn>system\nYou are helpful.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"),
    ([{"role": "developer", "content": "You are helpful."}, {"role": "user", "content": "Hi"}], None,
     "<bos><|turn>system\nYou are helpful.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"),
    ([{"role": "user", "content": "Hi"}], True, "<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"),
    ([{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi"}], True,
     "<bos><|turn>system\n<|think|>\nYou are helpful.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"),
    ([{"role": "user", "content": "Hi"}], False, "<bos><|turn>user\nHi<turn|>\n<|turn>model\n"),
    ([{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "More"}], None,
     "<bos><|turn>system\nYou are helpful.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\nHello!<turn|>\n"
     "<|turn>user\nMore<turn|>\n<|turn>model\n"),
    ([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "<|channel>thought\nThinking...<channel|>4"},
      {"role": "user", "content": "And 3+3?"}], None,
     "<bos><|turn>user\nWhat is 2+2?<turn|>\n<|turn>model\n4<turn|>\n<|turn>user\nAnd 3+3?<turn|>\n<|turn>model\n"),
    ([{"role": "user", "content": "Start"}, {"role": "assistant", "content": "One."}, {"role": "assistant", "content": "Two."},
      {"role": "user", "content": "More"}], None,
     "<bos><|turn>user\nStart<turn|>\n<|turn>model\nOne.Two.<turn|>\n<|turn>user\nMore<turn|>\n<|turn>model\n"),
    ([{"role": "user", "content": "  hello  "}], None, "<bos><|turn>user\nhello<turn|>\n<|turn>model\n"),
    ([{"role": "system", "content": "   "}, {"role": "user", "content": "Hi"}], None,
     "<bos><|turn>system\n<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "More"}], None,
     "<bos><|turn>user\nHi<turn|>\n<|turn>model\n<turn|>\n<|turn>user\nMore<turn|>\n<|turn>model\n"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<|channel>Think1<channel|>Middle<|channel>Think2<channel|>Done"},
      {"role": "user", "content": "More"}], None,
     "<bos><|turn>user\nHi<turn|>\n<|turn>model\nMiddleDone<turn|>\n<|turn>user\nMore<turn|>\n<|turn>model\n"),
]


@pytest.mark.parametrize("messages, think, want", GEMMA4_REFERENCE)
def test_gemma4_reference_cases(messages, think, want):
    assert renderers.render("gemma4-small", messages, think) == want


def test_gemma4_variants():  # TestGemma4RendererVariantsMatchExpectedGenerationPrompt, ...OmitsEmptyThoughtBlock...
    hello = [{"role": "user", "content": "Hello"}]
    assert renderers.render("gemma4-large", hello) == "<bos><|turn>user\nHello<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
    assert renderers.render("gemma4-large", hello, True) == (
        "<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\nHello<turn|>\n<|turn>model\n")
    # server/renderer_resolution.go@50bbda5: the name, else the parameter count
    assert renderers.resolve_name("gemma4", model_name="gemma4:e4b") == "gemma4-small"
    assert renderers.resolve_name("gemma4", model_name="gemma4:26b") == "gemma4-large"
    assert renderers.resolve_name("gemma4", model_name="my-ft", model_type="25.2B") == "gemma4-large"
    assert renderers.resolve_name("gemma4", model_name="my-ft", model_type="135.00M") == "gemma4-small"
    assert renderers.resolve_name("qwen3.5", model_name="x:26b") == "qwen3.5"


# -- model/renderers/laguna_test.go@9ea503f and nemotron3nano_reference_test.go@96fb6d2 -----------

def test_laguna_reference_cases():
    header = "\u3008|EOS|\u3009<system>\n\n" + renderers.LAGUNA_DEFAULT_SYSTEM + "\n</system>\n"
    hello = [{"role": "user", "content": "Hello"}]
    assert renderers.render("laguna", []) == header + "<assistant>\n</think>"
    assert renderers.render("laguna", hello, True) == header + "<user>\nHello\n</user>\n<assistant>\n<think>"
    assert renderers.render("laguna", [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}]) == (
        "\u3008|EOS|\u3009<user>\nHi\n</user>\n<assistant>\n</think>")
    assert renderers.render("laguna", [{"role": "user", "content": "Explain"},
                                       {"role": "assistant", "content": "<think>\nPlan\n</think>\nAnswer\n\n"},
                                       {"role": "user", "content": "Next"}], True) == (
        header + "<user>\nExplain\n</user>\n<assistant>\n<think>\nPlan\n</think>\nAnswer\n</assistant>\n"
        "<user>\nNext\n</user>\n<assistant>\n<think>")


@pytest.mark.parametrize("messages, think, want", [
    ([{"role": "user", "content": "Hello"}], None,
     "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n"),
    ([{"role": "user", "content": "Hello"}], False,
     "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think></think>"),
    ([{"role": "user", "content": "Hello /no_think"}], True,
     "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think></think>"),
    ([{"role": "system", "content": "Policy /think"}, {"role": "user", "content": "Hello"}], False,
     "<|im_start|>system\nPolicy <|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Visible", "thinking": "hidden"},
      {"role": "user", "content": "Next"}], True,
     "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think></think>\nVisible"
     "<|im_end|>\n<|im_start|>user\nNext<|im_end|>\n<|im_start|>assistant\n<think>\n"),
])
def test_nemotron_reference_cases(messages, think, want):
    assert renderers.render("nemotron-3-nano", messages, think) == want


def test_go_whitespace_is_not_pythons():
    """strings.TrimSpace keeps \\x1c-\\x1f, which str.strip() would remove."""
    got = renderers.render("qwen3.5", [{"role": "user", "content": "\x1cHi\x1f "}], False)
    assert "user\n\x1cHi\x1f<|im_end|>" in got


def test_unsupported_renderer_is_a_user_error_naming_the_supported_ones():
    with pytest.raises(FtpackError) as info:
        renderers.check_supported("glm-4.7", "ollama:glm-4.7")
    assert info.value.code == 2 and "glm-4.7" in info.value.message
    for name in ("qwen3.5", "gemma4", "laguna", "nemotron-3-nano"):
        assert name in info.value.hint
    renderers.check_supported("qwen3.5", "x")  # no error


def test_architectures_ollama_gives_a_renderer_at_create():
    """server/create.go@0029bb5: gemma4 → gemma4 + stop <turn|>; laguna; nemotron_h* → nemotron-3-nano."""
    assert renderers.ARCHITECTURE_RENDERERS["gemma4"] == ("gemma4", "gemma4", ("<turn|>",))
    assert renderers.ARCHITECTURE_RENDERERS["nemotron_h_moe"][0] == "nemotron-3-nano"
    assert "llama" not in renderers.ARCHITECTURE_RENDERERS and "qwen3" not in renderers.ARCHITECTURE_RENDERERS
    assert renderers.served_think("qwen3.5") is True and renderers.served_think("") is None
