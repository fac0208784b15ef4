"""Chat-template registry: every format renders, marks what the model must learn, and
trains on exactly the text (and token ids) it is prompted with at inference."""

from __future__ import annotations

import pytest

from ftpack.core.errors import FtpackError
from ftpack.training.templates import (
    ChatTemplate,
    check_generation_markers,
    choose_template,
    list_templates,
    load_template,
    render_chat,
    render_chat_with_spans,
    template_for_base,
    template_for_tokenizer_template,
    tokenizer_adds_bos,
    training_chat_template,
)

REQUIRED = {"vicuna_v1.1", "llama2", "llama3", "chatml", "mistral", "zephyr", "gemma", "phi3"}

CONVERSATIONS = {
    "single": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ],
    "system": [
        {"role": "system", "content": "You are a terse assistant.\nAnswer in one line."},
        {"role": "user", "content": "Name a river in Germany."},
        {"role": "assistant", "content": "The Rhine."},
    ],
    "multi_turn": [
        {"role": "system", "content": "Be friendly."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What is 2+2?\n  (show  spacing) "},
        {"role": "assistant", "content": "It is 4.\n\nAnything else?"},
        {"role": "user", "content": "café naïve — “quoted” 東京"},
        {"role": "assistant", "content": "  Unicode is fine: € ñ."},
    ],
}

TEMPLATES = list_templates()
IDS = [t.name for t in TEMPLATES]


def test_registry_has_every_required_format():
    assert REQUIRED <= {t.name for t in TEMPLATES}
    for tpl in TEMPLATES:
        assert tpl.stop and all(isinstance(s, str) and s for s in tpl.stop), tpl.name
        assert tpl.end_of_turn, tpl.name
        assert tpl.bos == "runtime", tpl.name
        assert tpl.path is not None and tpl.path.stem == tpl.name


@pytest.mark.parametrize("tpl", TEMPLATES, ids=IDS)
def test_templates_never_write_the_leading_bos(tpl: ChatTemplate):
    """The leading BOS belongs to the tokenizer/runtime (see ftpack.training.templates docstring)."""
    for conv in CONVERSATIONS.values():
        text = render_chat(tpl, conv, bos_token="<BOS>", eos_token="<EOS>")
        assert not text.startswith(("<s>", "<BOS>")), text[:20]
        assert "<BOS>" not in text and "<EOS>" not in text  # formats spell their own tokens
    assert "bos_token" not in tpl.chat_template
    assert "bos_token" not in tpl.ollama_template


@pytest.mark.parametrize("tpl", TEMPLATES, ids=IDS)
def test_generation_markers_cover_each_answer_and_its_end_of_turn(tpl: ChatTemplate):
    check_generation_markers(tpl)
    for name, conv in CONVERSATIONS.items():
        text, spans = render_chat_with_spans(tpl, conv)
        answers = [m["content"] for m in conv if m["role"] == "assistant"]
        assert len(spans) == len(answers), (name, spans)
        for (start, end), answer in zip(spans, answers):
            learned = text[start:end]
            # What the model must produce: the answer (after the separating space some
            # formats put right after the prompt) and the token that ends its turn.
            assert learned in (answer + tpl.end_of_turn, " " + answer + tpl.end_of_turn,
                               " " + answer + " " + tpl.end_of_turn), (name, learned)
        # nothing but the answers is learned: every other character is prompt
        masked = "".join(text[e:s] for e, s in zip([0] + [e for _, e in spans], [s for s, _ in spans] + [len(text)]))
        for m in conv:
            if m["role"] != "assistant":
                assert m["content"] in masked


@pytest.mark.parametrize("tpl", TEMPLATES, ids=IDS)
def test_training_text_equals_inference_prompt_plus_answer(tpl: ChatTemplate):
    """For every assistant turn: the training text up to that turn is exactly the prompt
    the template renders for inference (add_generation_prompt) followed by the learned
    answer — so the model is trained on what Ollama will feed it."""
    for name, conv in CONVERSATIONS.items():
        full, spans = render_chat_with_spans(tpl, conv)
        answer_idx = [i for i, m in enumerate(conv) if m["role"] == "assistant"]
        for (start, end), i in zip(spans, answer_idx):
            prompt = tpl.inference_prompt(conv[:i])
            assert full[:start] == prompt, (name, i, full[:start], prompt)
            # and the conversation so far, trained, is exactly prompt + answer (+ separator)
            upto = render_chat(tpl, conv[: i + 1])
            assert upto.startswith(prompt + full[start:end])
            assert full.startswith(upto)
            assert upto[len(prompt) + end - start:] in ("", "\n")


@pytest.mark.parametrize("tpl", TEMPLATES, ids=IDS)
def test_inference_prompt_ends_where_the_answer_starts(tpl: ChatTemplate):
    conv = CONVERSATIONS["system"][:2]
    prompt = tpl.inference_prompt(conv)
    assert conv[-1]["content"] in prompt
    assert not any(prompt.endswith(s) for s in ("Rhine.",))


def test_default_system_is_part_of_vicuna_only_where_declared():
    vicuna = load_template("vicuna_v1.1")
    assert vicuna.default_system.startswith("A chat between a curious user")
    user_only = [{"role": "user", "content": "Hi"}]
    with_default = [{"role": "system", "content": vicuna.default_system}] + user_only
    assert vicuna.inference_prompt(user_only) == vicuna.inference_prompt(with_default)
    assert vicuna.inference_prompt(user_only) == (
        vicuna.default_system + " USER: Hi ASSISTANT:")  # FastChat's layout, byte for byte
    for tpl in TEMPLATES:
        if not tpl.default_system:
            assert "A chat between" not in tpl.inference_prompt(user_only)


def test_fastchat_vicuna_multi_turn_layout():
    vicuna = load_template("vicuna_v1.1")
    conv = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    # FastChat vicuna_v1.1: sep=" ", sep2="</s>", roles USER/ASSISTANT
    assert vicuna.inference_prompt(conv) == "SYS USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT:"


def test_llama2_matches_the_official_layout():
    llama2 = load_template("llama2")
    conv = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    assert llama2.inference_prompt(conv) == "[INST] <<SYS>>\nSYS\n<</SYS>>\n\nq1 [/INST] a1 </s><s>[INST] q2 [/INST]"


# -- BOS: training ids == runtime ids ------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def test_tiny_tokenizer_adds_bos_and_a_copy_without_it_does_not(tiny_tokenizer, tiny_llama):
    from tokenizers import processors
    from transformers import AutoTokenizer

    assert tokenizer_adds_bos(tiny_tokenizer)
    no_bos = AutoTokenizer.from_pretrained(tiny_llama)
    no_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    assert not tokenizer_adds_bos(no_bos)
    tpl = load_template("chatml")
    assert training_chat_template(tpl, tiny_tokenizer) == "{{ bos_token }}" + tpl.chat_template
    assert training_chat_template(tpl, no_bos) == tpl.chat_template


def _runtime_ids(tokenizer, text: str) -> list[int]:
    """What llama.cpp feeds: BOS (the GGUF's add_bos_token) + the text, specials parsed."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([tokenizer.bos_token_id] if tokenizer_adds_bos(tokenizer) else []) + ids


@pytest.mark.parametrize("tpl", TEMPLATES, ids=IDS)
def test_training_token_ids_equal_runtime_ids_with_one_bos(tpl: ChatTemplate, tiny_tokenizer):
    tok = tiny_tokenizer
    jinja = training_chat_template(tpl, tok)
    bos = tok.bos_token_id
    for name, conv in CONVERSATIONS.items():
        # TRL's path: apply_chat_template(tokenize=True) == add_special_tokens=False
        train_ids = tok.apply_chat_template(conv, chat_template=jinja, tokenize=True,
                                            return_dict=True)["input_ids"]
        assert train_ids[0] == bos and train_ids[1] != bos, name
        assert train_ids == _runtime_ids(tok, tpl.training_text(conv)), name
        # every inference prompt, tokenized as the runtime does, is a prefix of the training ids
        for i, m in enumerate(conv):
            if m["role"] != "assistant":
                continue
            prompt_ids = _runtime_ids(tok, tpl.inference_prompt(conv[:i]))
            assert train_ids[: len(prompt_ids)] == prompt_ids, (name, i)
            gen_ids = tok.apply_chat_template(conv[:i], chat_template=jinja, tokenize=True,
                                              add_generation_prompt=True, return_dict=True)["input_ids"]
            assert gen_ids == prompt_ids, (name, i)


def test_without_bos_prefix_the_fixture_template_would_lose_the_bos(tiny_tokenizer):
    """Why training_chat_template exists: the tokenizer's own template has no BOS, so
    TRL would train without the BOS llama.cpp adds at inference."""
    conv = CONVERSATIONS["single"]
    own = tiny_tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
    assert own[0] != tiny_tokenizer.bos_token_id
    ours = tiny_tokenizer.apply_chat_template(
        conv, chat_template=training_chat_template(load_template("chatml"), tiny_tokenizer),
        tokenize=True, return_dict=True)["input_ids"]
    assert ours == [tiny_tokenizer.bos_token_id] + own


# -- choosing a template ---------------------------------------------------------------------

@pytest.mark.parametrize("base,expected", [
    ("lmsys/vicuna-7b-v1.5", "vicuna_v1.1"),
    ("vicuna-13b", "vicuna_v1.1"),
    ("meta-llama/Llama-2-7b-chat-hf", "llama2"),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "llama3"),
    ("llama-3.2-1b-instruct", "llama3"),
    ("mistralai/Mistral-7B-Instruct-v0.2", "mistral"),
    ("teknium/OpenHermes-2.5-Mistral-7B", "chatml"),
    ("HuggingFaceH4/zephyr-7b-beta", "zephyr"),
    ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "zephyr"),
    ("google/gemma-2b-it", "gemma"),
    ("microsoft/Phi-3-mini-4k-instruct", "phi3"),
    ("Qwen/Qwen2.5-0.5B-Instruct", "chatml"),
    ("smollm2-135m", "chatml"),
    ("/models/llama3-experiments/my-vicuna-run", "vicuna_v1.1"),
])
def test_template_for_base_by_name(base, expected):
    assert template_for_base(base) == expected


@pytest.mark.parametrize("tpl", TEMPLATES, ids=IDS)
def test_each_template_is_recognised_from_its_own_jinja(tpl: ChatTemplate):
    assert template_for_tokenizer_template(tpl.chat_template) == tpl.name
    assert template_for_tokenizer_template("{{ bos_token }}" + tpl.chat_template) == tpl.name


def test_tokenizer_template_wins_over_name(tiny_tokenizer):
    # a Mistral-named model whose tokenizer carries ChatML was tuned with ChatML
    assert template_for_base("someone/mistral-7b-chatty", tiny_tokenizer.chat_template) == "chatml"
    assert choose_template(None, "anything/whatever", tiny_tokenizer).name == "chatml"


def test_choose_template_explicit_and_errors():
    assert choose_template("llama3", "lmsys/vicuna-7b-v1.5").name == "llama3"
    assert choose_template("Vicuna-v1.1", None).name == "vicuna_v1.1"
    with pytest.raises(FtpackError) as exc:
        choose_template("nope", None)
    assert exc.value.code == 2 and "chatml" in exc.value.hint and "vicuna_v1.1" in exc.value.hint

    class NoTemplate:
        chat_template = None

    with pytest.raises(FtpackError) as exc:
        choose_template(None, "acme/base-model-7b", NoTemplate())
    assert exc.value.code == 2
    assert all(name in exc.value.hint for name in REQUIRED)
    assert template_for_base("acme/base-model-7b", "{{ messages }}") is None


def test_templates_command_lists_every_format(run_cli):
    result = run_cli("--json", "templates")
    assert result.exit_code == 0, result.output
    import json

    events = [json.loads(line) for line in result.output.splitlines() if line.strip()]
    data = next(e["data"] for e in events if e.get("kind") == "result" or e.get("event") == "result")
    assert REQUIRED <= {t["name"] for t in data["templates"]}
    shown = run_cli("templates", "llama3")
    assert shown.exit_code == 0 and "<|eot_id|>" in shown.output
    missing = run_cli("templates", "nope")
    assert missing.exit_code == 2 and "Traceback" not in missing.output
