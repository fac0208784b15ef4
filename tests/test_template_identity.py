"""The training chat template and the Ollama TEMPLATE render byte-identical text.

The root cause of "my fine-tuned model babbles / never stops in Ollama" is a prompt at
inference that differs from the one trained on. For every entry in templates/, sample
conversations are rendered twice:

* through the HF Jinja ``chat_template`` exactly as transformers/TRL render it
  (``ChatTemplate.inference_prompt``: generation prompt on, no leading BOS), and
* through the Ollama ``ollama_template`` with Go's real ``text/template`` and Ollama's
  data model (tests/gotemplate: Messages/System, missingkey=zero, Ollama's functions,
  consecutive same-role merge, all system messages joined into .System), with the
  messages Ollama's /api/chat builds: the Modelfile's SYSTEM (ftpack writes the
  template's default system prompt there) prepended when the chat has no system message.

BOS: neither side writes the leading BOS; llama.cpp adds it at inference from the
GGUF's add_bos_token, and training adds it through ``training_chat_template`` (see
ftpack/templates.py), so comparing the BOS-free texts is the runtime's comparison.
A template that cannot match fails here; nothing is skipped.
"""

from __future__ import annotations

import difflib
import re

import pytest

from ftpack.training.templates import list_templates
from ollama_double.fixtures import go_renderer  # noqa: F401

S = {"role": "system", "content": "You are a helpful assistant.\nAnswer briefly."}
U1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "Paris."}
U2 = {"role": "user", "content": "  And of Italy?  Use {{ braces }}, <tags> & \"quotes\".\n"}
A2 = {"role": "assistant", "content": "Rome — ünïcødé ✓\n\nTwo paragraphs."}
U3 = {"role": "user", "content": "Thanks!"}

CONVERSATIONS = {
    "user only": [U1],
    "system + user": [S, U1],
    "multi-turn": [U1, A1, U2, A2, U3],
    "system + multi-turn": [S, U1, A1, U2],
}

TEMPLATES = list_templates()


def ollama_chat_messages(tpl, conversation):
    """The messages Ollama renders for /api/chat with ftpack's Modelfile (routes.go ChatHandler)."""
    msgs = [dict(m) for m in conversation]
    modelfile_system = tpl.default_system  # what ftpack writes as SYSTEM when the user gives none
    if msgs[0]["role"] != "system" and modelfile_system:
        msgs = [{"role": "system", "content": modelfile_system}] + msgs
    return msgs


def _diff(a: str, b: str) -> str:
    return "\n".join(difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True),
                                          "training (HF Jinja)", "ollama (Go TEMPLATE)", lineterm="")) + \
        f"\ntraining: {a!r}\nollama:   {b!r}"


@pytest.fixture(scope="module")
def rendered(go_renderer):
    """Every (template, conversation) rendered by Go in one process."""
    jobs, keys = [], []
    for tpl in TEMPLATES:
        for conv_name, conv in CONVERSATIONS.items():
            jobs.append((tpl.ollama_template, ollama_chat_messages(tpl, conv)))
            keys.append((tpl.name, conv_name))
    return dict(zip(keys, go_renderer.render_many(jobs)))


def test_every_template_is_covered():
    assert {t.name for t in TEMPLATES} >= {"vicuna_v1.1", "llama2", "llama3", "chatml", "mistral", "zephyr",
                                           "gemma", "phi3"}


@pytest.mark.parametrize("conv_name", list(CONVERSATIONS))
@pytest.mark.parametrize("tpl", TEMPLATES, ids=lambda t: t.name)
def test_ollama_prompt_is_byte_identical_to_training(tpl, conv_name, rendered):
    go = rendered[(tpl.name, conv_name)]
    assert not go.get("error"), f"{tpl.name}: Ollama cannot execute the TEMPLATE: {go.get('error')}"
    training = tpl.inference_prompt(CONVERSATIONS[conv_name])
    assert go["prompt"] == training, f"{tpl.name} / {conv_name} differs:\n" + _diff(training, go["prompt"])


@pytest.mark.parametrize("tpl", TEMPLATES, ids=lambda t: t.name)
def test_trained_answer_ends_where_ollama_stops(tpl, rendered):
    """The trained assistant turn is the Ollama prompt + answer + end-of-turn, and Ollama stops there."""
    conv = CONVERSATIONS["multi-turn"]
    prompt = rendered[(tpl.name, "multi-turn")]["prompt"]
    answer = "The answer."
    trained = tpl.training_text(conv + [{"role": "assistant", "content": answer}])
    assert trained.startswith(prompt), _diff(trained, prompt)
    generated = trained[len(prompt):]  # what the model learned to produce after Ollama's prompt
    assert re.match(r"\s*" + re.escape(answer) + r"\s*" + re.escape(tpl.end_of_turn), generated), \
        f"{tpl.name}: trained continuation {generated!r} is not answer + end of turn"
    assert any(stop in tpl.end_of_turn for stop in tpl.stop), \
        f"{tpl.name}: end of turn {tpl.end_of_turn!r} contains none of the stop strings {tpl.stop}"
    # no stop string fires before the end of turn: Ollama would cut the answer short
    cut = generated.index(tpl.end_of_turn)
    assert not any(s in generated[:cut] for s in tpl.stop), f"{tpl.name}: a stop string fires inside the answer"


@pytest.mark.parametrize("tpl", TEMPLATES, ids=lambda t: t.name)
def test_modelfile_carries_the_same_template(tpl, tmp_path):
    """What ftpack writes into TEMPLATE/PARAMETER stop is read back by Ollama's parser unchanged."""
    from ftpack.ollama.modelfile import build_spec, parse_modelfile, write_modelfile

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    out = tmp_path / "Modelfile"
    write_modelfile(out, build_spec(gguf, out, template_name=tpl.name))
    cmds = parse_modelfile(out.read_bytes())
    assert [c.args for c in cmds if c.name == "template"] == [tpl.ollama_template]
    assert [c.args for c in cmds if c.name == "stop"] == list(tpl.stop)
    assert [c.args for c in cmds if c.name == "system"] == ([tpl.default_system] if tpl.default_system else [])


# -- the Go renderer itself is Ollama: its own template tests pass through it ----------------

def test_renderer_reproduces_ollamas_own_template_tests(go_renderer):
    """Ollama's template/*.gotmpl with its expected outputs (template/testdata, TestTemplate)."""
    import json
    from pathlib import Path

    data = json.loads((Path(__file__).parent / "gotemplate" / "ollama_conformance.json").read_text())
    convs = {
        "user": [{"role": "user", "content": "Hello, how are you?"}],
        "user-assistant-user": [{"role": "user", "content": "Hello, how are you?"},
                                {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
                                {"role": "user", "content": "I'd like to show off how chat templating works!"}],
    }
    convs["system-user-assistant-user"] = [{"role": "system", "content": "You are a helpful assistant."}] + \
        convs["user-assistant-user"]
    jobs, keys = [], []
    for name, entry in sorted(data["templates"].items()):
        for case, expected in entry["expected"].items():
            jobs.append((entry["template"], convs[case]))
            keys.append((name, case, expected))
    assert len(jobs) >= 50
    failures = []
    for (name, case, expected), got in zip(keys, go_renderer.render_many(jobs)):
        out = got.get("prompt", "")
        if name in ("chatqa.gotmpl", "llama2-chat.gotmpl", "mistral-instruct.gotmpl", "openchat.gotmpl",
                    "vicuna.gotmpl") and out.endswith(" "):
            out = out[:-1]  # the same allowance Ollama's TestTemplate makes
        if got.get("error") or out != expected:
            failures.append(f"{name}/{case}: {got.get('error') or _diff(expected, out)}")
    assert not failures, "\n".join(failures)
