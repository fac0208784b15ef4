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


# The chat templates of the families people tune today, as llama.cpp keeps them for its own tests
# (models/templates/ in the pinned sdist), with each family's BOS/EOS token texts.
REAL_TEMPLATES = {
    "Qwen3.5-4B": ("", "<|im_end|>"), "Qwen-Qwen3-0.6B": ("", "<|im_end|>"),
    "Qwen-Qwen2.5-7B-Instruct": ("", "<|im_end|>"), "google-gemma-4-31B-it": ("<bos>", "<turn|>"),
    "meta-llama-Llama-3.2-3B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": ("", "<|im_end|>"), "poolside-Laguna-XS-2.1": ("", "</assistant>"),
    "HuggingFaceTB-SmolLM3-3B": ("", "<|im_end|>"), "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>"),
    "microsoft-Phi-3.5-mini-instruct": ("<s>", "<|end|>"), "ibm-granite-granite-4.0": ("", "<|end_of_text|>"),
    "LFM2.5-Instruct": ("", "<|im_end|>"),
}


@pytest.mark.parametrize("name", sorted(REAL_TEMPLATES))
def test_real_family_templates_train_per_turn_as_llama_server_renders_them(name):
    """A GGUF served by its own Jinja template (no TEMPLATE in Ollama): for the real templates of
    Qwen3.5, Qwen3, Gemma 4, Llama 3.2, Nemotron 3 Nano, Laguna, SmolLM3, … every served prompt
    ftpack trains under, rendered by transformers, is what llama.cpp's engine renders for
    llama-server, thinking as Ollama sends it (on when the template shows it)."""
    from ftpack.gguf.vendored import vendored_source
    from ftpack.ollama.prompt_path import jinja_capabilities
    from ftpack.training.ollama_format import RENDERER, check_llama_cpp_renders_alike, training_sequences
    from ftpack.training.templates import ChatTemplate

    template = vendored_source().chat_templates()[name].read_text(encoding="utf-8")
    bos, eos = REAL_TEMPLATES[name]
    tpl = ChatTemplate(name=name, description="", chat_template="", ollama_template="", stop=(eos,), end_of_turn=eos,
                       renderer=RENDERER, think=True if "thinking" in jinja_capabilities(template) else None,
                       gguf_jinja=(template, bos, eos, bool(bos)))
    chats = [CHATS[1][:3], [*CHATS[1][:3], {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}]]
    for chat in chats:
        seqs = training_sequences(tpl, chat)
        trained = ["".join(text[a:b] for a, b in spans) for text, spans in seqs]
        assert "".join(trained).count("4") >= 1 and all(t.endswith(eos) for t in trained if t), (name, trained)
    assert check_llama_cpp_renders_alike(tpl, chats) == 3
