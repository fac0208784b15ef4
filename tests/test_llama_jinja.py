"""llama.cpp's own Jinja engine (tools/llama_jinja/render.cpp, built by scripts/llama_jinja.sh):
it renders as llama-server does, and where it agrees with transformers' Jinja ftpack can train a
GGUF's own template; where it does not, the build says so."""

from __future__ import annotations

import pytest

from ftpack.core.errors import FtpackError
from ftpack.inference.llama_jinja import render_with_llama_cpp, renderer_binary
from ftpack.training.templates import load_template, render_chat

CHATS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "  And 3+3? ünï «quotes» <|im_end|>\n"}],
]

QWEN3_LIKE = """{%- for message in messages %}
{%- if message.role == 'assistant' %}<|im_start|>assistant
{% generation %}{{ message.content }}<|im_end|>{% endgeneration %}
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{%- if enable_thinking is defined and enable_thinking is false %}
<think>

</think>
{% else %}
<think>
{% endif %}
{%- endif %}"""


def test_the_renderer_is_built_by_set_up():
    assert renderer_binary() is not None and renderer_binary().is_file()


@pytest.mark.parametrize("template_name", ["chatml", "llama3", "vicuna_v1.1", "mistral", "gemma", "phi3", "zephyr"])
def test_ftpack_formats_render_alike_in_llama_cpp_generation_tags_included(template_name):
    """The Jinja copy ftpack writes into every GGUF carries Hugging Face's {% generation %}
    tags: llama.cpp's engine reads them as no-ops (common/jinja/parser.cpp) and renders the
    same text as transformers, so a llama-server that uses it serves what was trained."""
    tpl = load_template(template_name)
    for chat in CHATS:
        want = render_chat(tpl, chat, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
        assert render_with_llama_cpp(tpl.chat_template, chat, bos_token="<s>", eos_token="</s>") == want


@pytest.mark.parametrize("thinking", [True, False])
def test_enable_thinking_reaches_the_template(thinking):
    chat = CHATS[1]
    want = render_chat(QWEN3_LIKE, chat, add_generation_prompt=True, enable_thinking=thinking)
    assert render_with_llama_cpp(QWEN3_LIKE, chat, enable_thinking=thinking) == want
    assert want.endswith("<think>\n\n</think>\n" if not thinking else "<think>\n")


def test_a_leading_bos_is_cut_when_the_vocabulary_adds_one():
    template = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
    assert render_with_llama_cpp(template, CHATS[0], bos_token="<s>") == "<s>Hi"
    assert render_with_llama_cpp(template, CHATS[0], bos_token="<s>", add_bos=True) == "Hi"


def test_a_template_the_engine_refuses_is_a_user_error():
    with pytest.raises(FtpackError) as info:
        render_with_llama_cpp("{% for m in messages %}{{ m.content ", CHATS[0])
    assert info.value.code == 2 and "cannot render this chat template" in info.value.message
