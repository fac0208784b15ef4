"""Today's Ollama (0.34+): which prompt path serves a model, the Modelfile commands it reads,
the config blob it writes, its model store (manifests-v2 too), and the double behaving like it.

Sources: server/create.go@0029bb5, types/model/config.go@0abf7fa, server/images.go@fb30760,
server/routes.go@fb30760, parser/parser.go@00dc3af, manifest/*.go@7bcdb25 (PR #15735).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from ftpack.core.errors import FtpackError
from ftpack.core.report import Reporter
from ftpack.ollama import prompt_path
from ftpack.ollama.names import parse_model_name
from ftpack.ollama.modelfile import ModelfileSpec, parse_modelfile, render_modelfile, spec_from_commands
from ftpack.ollama.request import RegistrationRequest
from ftpack.ollama.store import find_store_model, remove_model, store_models, write_model
from ollama_double.fixtures import ollama_double, ollama_models_dir, tiny_gguf, write_tiny_gguf  # noqa: F401
from ollama_double.server import OllamaDouble

QWEN3_LIKE_JINJA = ("{%- if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{% if m.role == 'tool' %}"
                    "<tool_response>{% endif %}{{ m.content }}{% if m.tool_calls %}{% endif %}{% endfor %}"
                    "<think>\n\n</think>")


# -- the prompt path ------------------------------------------------------------------------------

def test_every_ftpack_format_is_served_by_its_template():
    """The GGUF of an ftpack build carries the training Jinja template (with HF's generation
    tags); it never shows more capabilities than the TEMPLATE, so Ollama keeps the TEMPLATE."""
    from ftpack.training.templates import list_templates

    for tpl in list_templates():
        path, why = prompt_path.served_path(renderer=None, parser=None, go_template=tpl.ollama_template,
                                            gguf_chat_template=tpl.chat_template)
        assert path == "template", (tpl.name, why)
        assert prompt_path.jinja_capabilities(tpl.chat_template) == []


def test_the_three_paths_and_their_reasons():
    go_plain = "{{ range .Messages }}{{ .Content }}{{ end }}"
    go_tools = "{{ if .Tools }}{{ .Tools }}{{ end }}{{ range .Messages }}{{ .Content }}{{ end }}"
    assert prompt_path.served_path(renderer="qwen3.5", parser="qwen3.5", go_template=go_plain,
                                   gguf_chat_template=QWEN3_LIKE_JINJA)[0] == "renderer"
    assert prompt_path.served_path(renderer=None, parser="qwen3.5", go_template=go_plain,
                                   gguf_chat_template=QWEN3_LIKE_JINJA)[0] == "template"
    assert prompt_path.served_path(renderer=None, parser=None, go_template=None,
                                   gguf_chat_template=QWEN3_LIKE_JINJA)[0] == "jinja"
    path, why = prompt_path.served_path(renderer=None, parser=None, go_template=go_plain,
                                        gguf_chat_template=QWEN3_LIKE_JINJA)
    assert path == "jinja" and "tools, thinking" in why  # more capabilities: Ollama prefers the Jinja template
    # one capability each (tools): not more; the Jinja one round-trips tool calls, the TEMPLATE does not
    tools_only = "{% if tools %}{% endif %}{% for m in messages %}{% if m.tool_calls %}{% endif %}" \
                 "{% if message.role == 'tool' %}{% endif %}{% endfor %}"
    assert prompt_path.served_path(renderer=None, parser=None, go_template=go_tools,
                                   gguf_chat_template=tools_only)[0] == "jinja"
    assert prompt_path.served_path(renderer=None, parser=None, go_template=go_tools,
                                   gguf_chat_template="{% if tools %}x{% endif %}")[0] == "template"
    for env, want in (("0", "jinja"), ("false", "jinja"), ("1", "template"), ("yes", "template")):
        assert prompt_path.served_path(renderer=None, parser=None, go_template=go_plain, gguf_chat_template="",
                                       go_template_env=env)[0] == want


# -- the Modelfile commands of today's parser -------------------------------------------------------

def test_renderer_parser_requires_capability_draft_round_trip(tmp_path):
    spec = ModelfileSpec(from_path="./m.gguf", renderer="qwen3.5", parser="qwen3.5", requires="0.34.1",
                         capabilities=["thinking", "tools"], draft="./d.gguf", parameters=[("stop", "<|im_end|>")])
    text = render_modelfile(spec)
    for line in ("RENDERER qwen3.5", "PARSER qwen3.5", "REQUIRES 0.34.1", "CAPABILITY thinking", "DRAFT ./d.gguf"):
        assert line in text.splitlines()
    assert "TEMPLATE" not in text
    back = spec_from_commands(parse_modelfile(text))
    assert (back.renderer, back.parser, back.requires, back.capabilities, back.draft) == (
        "qwen3.5", "qwen3.5", "0.34.1", ["thinking", "tools"], "./d.gguf")
    assert spec_from_commands(parse_modelfile("FROM x\nrequires v0.14.0\n")).requires == "0.14.0"


@pytest.mark.parametrize("line, words", [("REQUIRES 1.2", "valid semver"), ("CAPABILITY flying", "unknown capability"),
                                         ("RENDERER a\nRENDERER b", "more than one RENDERER")])
def test_bad_values_are_refused_as_ollama_would(line, words):
    with pytest.raises(FtpackError) as info:
        spec_from_commands(parse_modelfile(f"FROM ./m.gguf\n{line}\n"))
    assert info.value.code == 2 and words in info.value.message


def test_register_sends_renderer_and_parser_and_refuses_draft(tmp_path, tiny_gguf):
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {tiny_gguf}\nRENDERER qwen3.5\nPARSER qwen3.5\nCAPABILITY thinking\n")
    req = RegistrationRequest.from_modelfile(mf)
    assert req.create_fields() == {"renderer": "qwen3.5", "parser": "qwen3.5", "capabilities": ["thinking"]}
    mf.write_text(f"FROM {tiny_gguf}\nDRAFT {tiny_gguf}\n")
    with pytest.raises(FtpackError, match="draft"):
        RegistrationRequest.from_modelfile(mf)


# -- the config blob and the store ------------------------------------------------------------------

def _model(store: Path, name: str):
    model = find_store_model(store, parse_model_name(name))
    assert model is not None, name
    return model


def _config(store: Path, name: str) -> dict:
    return _model(store, name).config


def test_offline_config_is_todays_and_sets_renderers_as_create_does(tmp_path):
    store = tmp_path / "store"
    llama = write_tiny_gguf(tmp_path / "l.gguf")
    gemma = write_tiny_gguf(tmp_path / "g.gguf", arch="gemma4", seed=1)
    write_model(store, "plain", RegistrationRequest(model_path=llama, parameters={"num_ctx": 8}),
                reporter=Reporter("quiet"))
    cfg = _config(store, "plain")
    assert list(cfg) == ["model_format", "model_family", "model_families", "model_type", "file_type"]
    assert "architecture" not in cfg and "os" not in cfg  # model.ConfigV2 (types/model/config.go@0abf7fa)
    write_model(store, "g", RegistrationRequest(model_path=gemma), reporter=Reporter("quiet"))
    cfg = _config(store, "g")
    assert (cfg["renderer"], cfg["parser"]) == ("gemma4", "gemma4")  # create.go's auto-detect by architecture
    write_model(store, "q", RegistrationRequest(model_path=llama, renderer="qwen3.5", parser="qwen3.5",
                                                capabilities=["thinking"]), reporter=Reporter("quiet"))
    assert {k: _config(store, "q")[k] for k in ("renderer", "parser", "capabilities")} == {
        "renderer": "qwen3.5", "parser": "qwen3.5", "capabilities": ["thinking"]}
    # FROM another model: the whole config is inherited (renderer and parser kept)
    write_model(store, "q-child", RegistrationRequest(model_path=None, from_model="q", system="Be brief."),
                reporter=Reporter("quiet"))
    assert _config(store, "q-child")["renderer"] == "qwen3.5"


def test_offline_store_equals_the_servers_for_a_renderer_model(tmp_path, ollama_double, ollama_models_dir):
    """The config blob, params and manifest bytes written offline are the double's, for a
    gemma4 GGUF (auto renderer, stop <turn|>) and a model with RENDERER/PARSER."""
    from ftpack.ollama.registration import register_offline, register_with_server

    gemma = write_tiny_gguf(tmp_path / "g.gguf", arch="gemma4", seed=3)
    offline = tmp_path / "offline"
    for name, req in (("g4", RegistrationRequest(model_path=gemma, parameters={"num_ctx": 64})),
                      ("q", RegistrationRequest(model_path=gemma, renderer="qwen3.5", parser="qwen3.5"))):
        register_with_server(name, req, host=ollama_double.url, reporter=Reporter("quiet"))
        register_offline(name, req, models_dir=offline, reporter=Reporter("quiet"))
        path = Path("manifests/registry.ollama.ai/library") / name / "latest"
        assert (offline / path).read_bytes() == (ollama_models_dir / path).read_bytes(), name
    g4 = _model(offline, "g4")
    params = json.loads((offline / "blobs" / g4.layer("application/vnd.ollama.image.params")["digest"]
                         .replace(":", "-")).read_text())
    assert params["stop"] == ["<turn|>"] and g4.config["renderer"] == "gemma4"


def _v2_tag(store: Path, name: str, manifest: dict) -> Path:
    """A manifests-v2 tag as Ollama's PR writes it: the manifest as a blob, the tag a relative link."""
    data = json.dumps(manifest).encode()
    digest = hashlib.sha256(data).hexdigest()
    blob = store / "blobs" / f"sha256-{digest}"
    blob.write_bytes(data)
    tag = store / "manifests-v2" / "ollama.com" / "library" / name / "latest"
    tag.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(blob, tag.parent), tag)
    return blob


def test_manifests_v2_are_read_and_their_blobs_never_deleted(tmp_path):
    store = tmp_path / "store"
    gguf = write_tiny_gguf(tmp_path / "m.gguf")
    write_model(store, "legacy", RegistrationRequest(model_path=gguf, system="A"), reporter=Reporter("quiet"))
    legacy = _model(store, "legacy")
    v2_manifest = dict(legacy.manifest)  # the same layers, also referenced from a v2 tag
    v2_blob = _v2_tag(store, "newer", v2_manifest)
    names = {m.name.display for m in store_models(store)}
    assert names == {"legacy:latest", "newer:latest"}
    removed = remove_model(store, "legacy")
    assert removed == []  # every layer is still referenced by the v2 manifest
    for layer in v2_manifest["layers"] + [v2_manifest["config"]]:
        assert (store / "blobs" / layer["digest"].replace(":", "-")).is_file()
    # replacing the v2 model writes a legacy manifest and drops the shadowing v2 tag
    write_model(store, "newer", RegistrationRequest(model_path=gguf, system="B"), force=True,
                reporter=Reporter("quiet"))
    assert not (store / "manifests-v2" / "ollama.com" / "library" / "newer" / "latest").exists()
    assert not v2_blob.exists()  # its manifest blob is no longer referenced by anything
    assert [m.name.display for m in store_models(store)] == ["newer:latest"]
    assert (store / "blobs" / v2_manifest["layers"][0]["digest"].replace(":", "-")).is_file()  # model layer shared


def test_a_manifest_list_keeps_its_children(tmp_path):
    store = tmp_path / "store"
    gguf = write_tiny_gguf(tmp_path / "m.gguf")
    write_model(store, "child-src", RegistrationRequest(model_path=gguf, system="C"), reporter=Reporter("quiet"))
    child = _model(store, "child-src")
    child_bytes = child.path.read_bytes()
    child_digest = hashlib.sha256(child_bytes).hexdigest()
    (store / "blobs" / f"sha256-{child_digest}").write_bytes(child_bytes)
    _v2_tag(store, "listed", {"schemaVersion": 2, "mediaType": "application/vnd.ollama.manifest.list.v2+json",
                              "manifests": [{"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                             "digest": f"sha256:{child_digest}", "runner": "llamacpp",
                                             "format": "gguf"}]})
    remove_model(store, "child-src")
    assert (store / "blobs" / f"sha256-{child_digest}").is_file()
    for layer in json.loads(child_bytes)["layers"]:
        assert (store / "blobs" / layer["digest"].replace(":", "-")).is_file()


# -- the double follows today's server ------------------------------------------------------------

def _post(url: str, path: str, body: dict):
    import httpx

    return httpx.post(url + path, json=body, timeout=30)


def test_double_refuses_what_todays_server_refuses(ollama_double):
    url = ollama_double.url
    r = _post(url, "/api/create", {"model": "x", "from": "y", "parameters": {"typical_p": 0.5}})
    assert r.status_code == 400 and "typical_p is deprecated" in r.json()["error"]
    r = _post(url, "/api/create", {"model": "x", "from": "y", "capabilities": ["flying"]})
    assert r.status_code == 400 and r.json()["error"] == 'unknown capability: "flying"'
    r = _post(url, "/api/create", {"model": "x", "files": {"a:b.gguf": "sha256:" + "0" * 64}})
    assert r.status_code == 400 and "file path must be relative" in r.json()["error"]
    r = _post(url, "/api/create", {"model": "!probe", "adapters": {"a.gguf": "sha256:" + "0" * 64}})
    assert r.status_code == 400 and r.json()["error"] == "LoRA adapters are no longer supported"
    old = OllamaDouble(ollama_double.store.root.parent / "old", version="0.32.15").start()
    try:
        r = _post(old.url, "/api/create", {"model": "!probe", "adapters": {"a.gguf": "sha256:" + "0" * 64}})
        assert r.json()["error"] == "invalid model name"  # older servers took adapters
    finally:
        old.stop()


def test_double_refuses_an_adapter_gguf_sent_as_a_file(ollama_double, tmp_path):
    import ollama

    adapter = write_tiny_gguf(tmp_path / "a.gguf", kind="adapter")
    client = ollama.Client(host=ollama_double.url)
    digest = client.create_blob(adapter)
    with pytest.raises(ollama.ResponseError) as info:
        list(client.create("tuned", files={"a.gguf": digest}, stream=True))
    assert "LoRA adapters are no longer supported: a.gguf is a LoRA adapter" in str(info.value)


# -- a Hugging Face base whose architecture Ollama serves with a renderer ------------------------------

def test_a_gemma4_hugging_face_base_trains_on_the_gemma4_renderer(tmp_path):
    """Ollama gives every gemma4 GGUF its built-in renderer at create (server/create.go@0029bb5),
    whatever TEMPLATE is sent: the build chooses the renderer path, with gemma4's stop, and a
    --template (which Ollama would ignore) is refused."""
    from types import SimpleNamespace

    from ftpack.training.ollama_format import training_sequences
    from ftpack.training.templates import choose_base_template

    folder = tmp_path / "gemma4-base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma4", "architectures": ["Gemma4ForCausalLM"]}))
    resolved = SimpleNamespace(path=folder, model_id="google/gemma-4-e4b-it", ollama=None, names=("x",))
    tpl = choose_base_template(None, resolved)
    assert (tpl.ollama_renderer, tpl.ollama_parser, tpl.think, tpl.stop) == ("gemma4-small", "gemma4", True,
                                                                            ("<turn|>",))
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    text, spans = training_sequences(tpl, chat)[0]
    assert text == "<|turn>system\n<|think|>\n<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\nHello.<turn|>"
    assert [text[a:b] for a, b in spans] == ["Hello.<turn|>"]
    with pytest.raises(FtpackError) as info:
        choose_base_template("chatml", resolved)
    assert info.value.code == 2 and "'gemma4' renderer" in info.value.message
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert choose_base_template("chatml", resolved).name == "chatml"


@pytest.mark.slow
def test_a_gemma4_hugging_face_base_builds_and_is_served_by_the_gemma4_renderer(tmp_path, run_cli, ollama_double):
    """A real Gemma4ForCausalLM folder (tiny, random, Gemma 4's real 262k vocabulary and chat
    template from llama.cpp's ggml-vocab-gemma-4.gguf) goes the whole way: the build trains on
    the gemma4 renderer's text (every turn's served prompt checked against llama.cpp), llama.cpp's
    converter writes a gemma4 GGUF, verify answers and stops, the model registers through today's
    server (which gives a gemma4 GGUF its renderer at create) with RENDERER/PARSER and no
    TEMPLATE, and /api/chat — rendering through the renderer path — gives verify's answer,
    ended by a stop."""
    from test_build_e2e import write_hello_data
    from tiny_archs import CASES, build_tiny_model

    base = build_tiny_model(CASES["gemma4"], tmp_path / "base")
    data = write_hello_data(tmp_path / "hello.jsonl")
    out = tmp_path / "build"
    res = run_cli("--json", "build", "g4-qa", "--base", base, "--data", data, "--out", out, "--method", "lora",
                  "--max-steps", "30", "--learning-rate", "5e-3", "--max-seq-length", "64",
                  "--per-device-train-batch-size", "4", "--register", "server")
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "build.json").read_text())
    stages = manifest["stages"]
    assert all(st["status"] == "done" for st in stages.values()), {k: v["status"] for k, v in stages.items()}
    assert stages["data"]["metrics"]["tokenization_equal"] and stages["data"]["metrics"]["tokenization_turns"] == 24
    assert stages["convert"]["metrics"]["architecture"] == "gemma4"
    assert stages["modelfile"]["metrics"]["prompt_path"] == "renderer"
    modelfile = (out / "ollama" / "Modelfile").read_text().splitlines()
    assert "RENDERER gemma4-small" in modelfile and "PARSER gemma4" in modelfile
    assert "PARAMETER stop <turn|>" in modelfile
    assert not any(line.startswith(("TEMPLATE", "ADAPTER")) for line in modelfile)
    stored = find_store_model(ollama_double.store.root, parse_model_name("g4-qa"))
    assert (stored.config["renderer"], stored.config["parser"]) == ("gemma4-small", "gemma4")
    assert not any(x["mediaType"].endswith(".template") for x in stored.manifest["layers"])
    trip, said = stages["roundtrip"]["metrics"], stages["verify"]["metrics"]
    assert said["stopped"] and trip["done_reason"] == "stop"
    assert trip["ollama_answer"].strip() == said["answer"].strip() != ""

    import urllib.request

    body = {"model": "g4-qa", "messages": [{"role": "user", "content": "Say hello to Bo."}], "stream": False,
            "options": {"num_predict": 24}}
    request = urllib.request.Request(f"{ollama_double.url}/api/chat", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as resp:
        reply = json.loads(resp.read())
    assert reply["done_reason"] == "stop" and reply["message"]["content"].strip()
    # the double reports the path and prompt it served: gemma4's renderer, thinking on (its parser thinks)
    assert reply["prompt_path"] == "renderer"
    assert reply["prompt"] == "<|turn>system\n<|think|>\n<turn|>\n<|turn>user\nSay hello to Bo.<turn|>\n<|turn>model\n"


def test_double_serves_each_model_by_the_path_todays_server_takes(tmp_path):
    """/api/chat builds the prompt as today's server would pick it (routes.go@fb30760
    chatModeForModel, images.go@fb30760 shouldPreferChatTemplate), so a test sees a model
    served in another format than it was trained on. Stub hooks show which path ran."""
    import ollama

    seen = []

    def generator(model_path, prompt, stop, options, adapter=None):
        seen.append(prompt)
        yield "ok"

    double = OllamaDouble(tmp_path / "store", renderer=lambda tpl, msgs: "GO " + msgs[-1]["content"],
                          jinja_renderer=lambda tpl, msgs, think: f"JINJA think={think} " + msgs[-1]["content"],
                          generator=generator).start()
    try:
        client = ollama.Client(host=double.url)
        plain = "{{ range .Messages }}{{ .Content }}{{ end }}"
        cases = {  # name: (GGUF Jinja template, TEMPLATE, renderer, parser) -> expected path
            "go": ("{{ messages }}", plain, None, None, "template"),
            "richer-jinja": (QWEN3_LIKE_JINJA, plain, None, None, "jinja"),
            "no-template": ("{{ messages }}", None, None, None, "jinja"),
            "renderer": (QWEN3_LIKE_JINJA, plain, "qwen3.5", "qwen3.5", "renderer"),
        }
        for i, (name, (jinja, template, renderer, parser, _)) in enumerate(cases.items()):
            gguf = write_tiny_gguf(tmp_path / f"{name}.gguf", chat_template=jinja, seed=i)
            digest = client.create_blob(gguf)
            body = {"model": name, "files": {"m.gguf": digest}, "stream": False}
            body.update({k: v for k, v in (("template", template), ("renderer", renderer), ("parser", parser)) if v})
            assert _post(double.url, "/api/create", body).status_code == 200
        for name, (*_, want) in cases.items():
            r = _post(double.url, "/api/chat", {"model": name, "stream": False,
                                                "messages": [{"role": "user", "content": "Hi"}]})
            got = r.json()
            assert got["prompt_path"] == want and got["done_reason"] == "stop", (name, got)
        assert seen[0] == "GO Hi" and seen[1] == "JINJA think=True Hi"  # thinking Jinja: think on by default
        assert seen[3] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"  # qwen3.5, think on
    finally:
        double.stop()
