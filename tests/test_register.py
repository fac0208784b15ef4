"""Registration with Ollama (through the HTTP double and offline into the store), list, remove,
and the double's own fidelity to Ollama's API (status codes, error texts, store layout)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftpack.core.errors import FtpackError
from ftpack.ollama.modelfile import build_spec, write_modelfile
from ftpack.ollama.gojson import go_json
from ftpack.ollama.names import parse_model_name
from ftpack.core.report import Reporter
from ollama_double import OllamaDouble, parse_name
from ollama_double.fixtures import (ftpack_home, go_renderer, old_ollama_double, ollama_double,  # noqa: F401
                                    ollama_models_dir, tiny_gguf, write_tiny_gguf)
from ollama_double.gojson import go_json as double_go_json

MEDIA = "application/vnd.ollama.image."


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_modelfile(folder: Path, gguf: Path, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "Modelfile"
    spec = build_spec(gguf, out, template_name=kw.pop("template_name", "chatml"), num_ctx=kw.pop("num_ctx", 2048),
                      **kw)
    write_modelfile(out, spec)
    return out


@pytest.fixture
def modelfile(tmp_path, tiny_gguf) -> Path:
    lic = "Apache-2.0 <see LICENSE> & more"
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "build.json").write_text(json.dumps(
        {"config": {"base": "smollm2-135m", "method": "lora"}, "stages": {}}))
    return make_modelfile(tmp_path / "build" / "ollama", tiny_gguf, system="You are terse.",
                          parameters=[("temperature", "0.7")], messages=[("user", "Hi"), ("assistant", "Hello!")],
                          license_text=lic)


def store_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def manifest_of(root: Path, name: str) -> dict:
    n = parse_model_name(name)
    return json.loads((root / "manifests" / n.host / n.namespace / n.model / n.tag).read_bytes())


# -- online registration, end to end -------------------------------------------------------

def test_register_end_to_end(run_cli, ollama_double, modelfile, tiny_gguf, ollama_models_dir, ftpack_home):
    result = run_cli("register", "tiny-chat", "--modelfile", modelfile)
    assert result.exit_code == 0, result.output
    assert "ollama run tiny-chat" in result.output
    assert "ollama: success" in result.output and "ollama: writing manifest" in result.output

    m = manifest_of(ollama_models_dir, "tiny-chat")
    assert m["schemaVersion"] == 2 and m["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert [x["mediaType"].removeprefix(MEDIA) for x in m["layers"]] == \
        ["model", "template", "system", "license", "params", "messages"]
    model_layer = m["layers"][0]
    assert model_layer == {"mediaType": MEDIA + "model", "digest": "sha256:" + sha(tiny_gguf),
                           "size": tiny_gguf.stat().st_size}
    blob = lambda d: ollama_models_dir / "blobs" / d.replace(":", "-")  # noqa: E731
    assert blob(model_layer["digest"]).read_bytes() == tiny_gguf.read_bytes()
    for layer in m["layers"] + [m["config"]]:
        assert blob(layer["digest"]).stat().st_size == layer["size"]
        assert "sha256:" + sha(blob(layer["digest"])) == layer["digest"]
    from ftpack.training.templates import load_template

    chatml = load_template("chatml")
    assert blob(m["layers"][1]["digest"]).read_text() == chatml.ollama_template
    assert blob(m["layers"][4]["digest"]).read_bytes() == \
        b'{"num_ctx":2048,"stop":["\\u003c|im_start|\\u003e","\\u003c|im_end|\\u003e"],"temperature":0.7}\n'
    assert json.loads(blob(m["layers"][5]["digest"]).read_bytes()) == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert json.loads(blob(m["config"]["digest"]).read_bytes()) == {
        "model_format": "gguf", "model_family": "llama", "model_families": ["llama"], "model_type": "136",
        "file_type": "Q4_K_M"}  # model.ConfigV2: no architecture/os any more (types/model/config.go@0abf7fa)
    # HEAD before the one upload
    blob_calls = [c for c in ollama_double.requests if c[1].startswith("/api/blobs/")]
    assert blob_calls == [("HEAD", "/api/blobs/" + model_layer["digest"]), ("POST", "/api/blobs/" + model_layer["digest"])]


def test_upload_reports_byte_progress(ollama_double, modelfile, tiny_gguf, ftpack_home):
    from ftpack.ollama.registration import register

    out = io.StringIO()
    register("tiny-chat", modelfile, reporter=Reporter("json", out=out))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    start = next(e for e in events if e["event"] == "progress_start")
    assert start["unit"] == "bytes" and start["total"] == tiny_gguf.stat().st_size
    end = next(e for e in events if e["event"] == "progress_end")
    assert end["completed"] == tiny_gguf.stat().st_size
    assert [e["status"] for e in events if e["event"] == "ollama_status"][-1] == "success"


def test_existing_model_needs_force_and_reregistering_uploads_nothing(run_cli, ollama_double, modelfile,
                                                                     ftpack_home):
    assert run_cli("register", "tiny-chat", "--modelfile", modelfile).exit_code == 0
    n_posts = sum(1 for c in ollama_double.requests if c[0] == "POST" and c[1].startswith("/api/blobs/"))
    again = run_cli("register", "Tiny-Chat:latest", "--modelfile", modelfile)  # Ollama folds case
    assert again.exit_code == 2 and "already exists" in again.output and "--force" in again.output
    forced = run_cli("register", "tiny-chat", "--modelfile", modelfile, "--force")
    assert forced.exit_code == 0, forced.output
    assert "already has blob" in forced.output
    assert sum(1 for c in ollama_double.requests if c[0] == "POST" and c[1].startswith("/api/blobs/")) == n_posts


@pytest.mark.parametrize("with_adapter", [False, True])
def test_offline_store_is_byte_identical_to_the_servers(run_cli, request, modelfile, ollama_models_dir,
                                                        tmp_path, ftpack_home, tiny_gguf, with_adapter):
    # adapters: a server of the last release that still creates them (0.34.0)
    request.getfixturevalue("old_ollama_double" if with_adapter else "ollama_double")
    offline_dir = tmp_path / "offline-store"
    if with_adapter:
        adapter = write_tiny_gguf(tmp_path / "lora.gguf", kind="adapter", seed=1)
        modelfile = make_modelfile(tmp_path / "with-adapter", tiny_gguf, adapter=adapter, system="S",
                                   messages=[("system", "ctx"), ("user", "q")])
    assert run_cli("register", "tiny-chat", "--modelfile", modelfile).exit_code == 0
    result = run_cli("register", "tiny-chat", "--modelfile", modelfile, "--offline", "--models-dir", offline_dir)
    assert result.exit_code == 0, result.output
    assert "ollama run tiny-chat" in result.output
    assert store_files(offline_dir) == store_files(ollama_models_dir)
    assert not list(offline_dir.rglob("*.partial*"))
    if with_adapter:
        layer = manifest_of(offline_dir, "tiny-chat")["layers"][1]
        assert layer == {"mediaType": MEDIA + "adapter", "digest": "sha256:" + sha(adapter),
                         "size": adapter.stat().st_size, "from": "lora.gguf"}


# -- adapter models: FROM a model + ADAPTER ----------------------------------------------------------

def _adapter_modelfile(folder: Path, base_name: str, adapter: Path, **kw) -> Path:
    """FROM <model> (not a file) + ADAPTER: what an adapter build writes."""
    import dataclasses

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "Modelfile"
    spec = build_spec(adapter, out, template_name="chatml", num_ctx=1024, adapter=adapter, **kw)
    write_modelfile(out, dataclasses.replace(spec, from_path=base_name))
    return out


def test_adapter_model_store_is_byte_identical_to_the_servers_and_reuses_the_base(
        run_cli, old_ollama_double, ollama_models_dir, tmp_path, tiny_gguf, ftpack_home):
    """Ollama's create with `from` + `adapters`: the base's layers by digest (marked from the base),
    the adapter, then TEMPLATE/SYSTEM replaced, LICENSE added, PARAMETERs merged with the base's.
    The offline writer produces the very same store, and sends or copies nothing but the adapter."""
    base_mf = make_modelfile(tmp_path / "base", tiny_gguf, system="Base system.", license_text="base license",
                             parameters=[("temperature", "0.6"), ("top_k", "20")])
    adapter = write_tiny_gguf(tmp_path / "tuned.lora.gguf", kind="adapter", seed=3)
    mf = _adapter_modelfile(tmp_path / "tuned", "tiny-base", adapter, system="Tuned system.",
                            parameters=[("temperature", "0.2")], messages=[("user", "hi")],
                            license_text="adapter license")
    assert mf.read_text().startswith("FROM tiny-base\nADAPTER ../tuned.lora.gguf\n")
    offline_dir = tmp_path / "offline-store"
    for where in ([], ["--offline", "--models-dir", offline_dir]):
        assert run_cli("register", "tiny-base", "--modelfile", base_mf, *where).exit_code == 0
        result = run_cli("register", "tuned", "--modelfile", mf, *where)
        assert result.exit_code == 0, result.output
    assert store_files(offline_dir) == store_files(ollama_models_dir)

    base, tuned = manifest_of(offline_dir, "tiny-base"), manifest_of(offline_dir, "tuned")
    kinds = [x["mediaType"].removeprefix(MEDIA) for x in tuned["layers"]]
    assert kinds == ["model", "license", "adapter", "template", "system", "license", "params", "messages"]
    assert tuned["layers"][0] == {**base["layers"][0], "from": "tiny-base:latest"}
    assert tuned["layers"][1] == {**next(x for x in base["layers"] if x["mediaType"] == MEDIA + "license"),
                                  "from": "tiny-base:latest"}
    assert tuned["layers"][2] == {"mediaType": MEDIA + "adapter", "digest": "sha256:" + sha(adapter),
                                  "size": adapter.stat().st_size, "from": "tuned.lora.gguf"}
    blob = lambda d: offline_dir / "blobs" / d.replace(":", "-")  # noqa: E731
    assert blob(tuned["layers"][4]["digest"]).read_text() == "Tuned system."
    params = json.loads(blob(tuned["layers"][6]["digest"]).read_bytes())
    assert params["temperature"] == 0.2 and params["top_k"] == 20 and params["num_ctx"] == 1024
    assert manifest_of(offline_dir, "tuned")["config"] == base["config"]  # described by the base's GGUF
    # the server received the base GGUF once and then only the adapter
    posts = [p for m, p in old_ollama_double.requests if m == "POST" and p.startswith("/api/blobs/")]
    assert posts == ["/api/blobs/sha256:" + sha(tiny_gguf), "/api/blobs/sha256:" + sha(adapter)]


def test_adapter_model_needs_its_base_where_it_is_registered(run_cli, old_ollama_double, tmp_path, ftpack_home):
    ollama_double = old_ollama_double
    adapter = write_tiny_gguf(tmp_path / "a.gguf", kind="adapter")
    mf = _adapter_modelfile(tmp_path / "m", "nowhere-base", adapter)
    server = run_cli("register", "tuned", "--modelfile", mf)
    assert server.exit_code == 2 and "nowhere-base:latest is not on the Ollama server" in server.output
    offline = run_cli("register", "tuned", "--modelfile", mf, "--offline", "--models-dir", tmp_path / "s")
    assert offline.exit_code == 2 and "nowhere-base:latest is not in the Ollama store" in offline.output
    assert not any(p.startswith("/api/blobs/") for _, p in ollama_double.requests)  # nothing sent


def test_remove_keeps_a_base_an_adapter_model_is_built_on_server(run_cli, old_ollama_double, tmp_path, tiny_gguf,
                                                                   ftpack_home):
    assert run_cli("register", "tiny-base", "--modelfile", make_modelfile(tmp_path / "b", tiny_gguf)).exit_code == 0
    adapter = write_tiny_gguf(tmp_path / "a.gguf", kind="adapter")
    assert run_cli("register", "tuned", "--modelfile", _adapter_modelfile(tmp_path / "m", "tiny-base", adapter)
                   ).exit_code == 0
    listed = run_cli("--json", "list")
    data = next(json.loads(x)["data"] for x in listed.output.splitlines() if '"result"' in x)
    rows = {m["name"]: m for m in data["models"]}
    assert rows["tuned:latest"]["shipped"] == "adapter" and rows["tuned:latest"]["base_model"] == "tiny-base:latest"
    assert rows["tuned:latest"]["own_size"] == adapter.stat().st_size and rows["tiny-base:latest"]["shipped"] == "gguf"
    refused = run_cli("remove", "tiny-base", "--force")
    assert refused.exit_code == 2 and "base of 1 other model(s)" in " ".join(refused.output.split())
    assert run_cli("remove", "tuned").exit_code == 0
    assert run_cli("remove", "tiny-base").exit_code == 0


@pytest.mark.parametrize("behaviour", ["reject", "fail"])
def test_a_server_without_adapters_creates_nothing(tmp_path, tiny_gguf, monkeypatch, ftpack_home, behaviour):
    """Newer Ollama releases refuse `adapters` outright (400 "LoRA adapters are no longer supported"):
    the probe finds out before anything is uploaded; a create that fails later leaves no model."""
    from ftpack.ollama.registration import AdaptersRejected, register

    double = OllamaDouble(tmp_path / "store", adapters=behaviour,
                          version="0.34.2" if behaviour == "reject" else "0.32.15").start()
    monkeypatch.setenv("OLLAMA_HOST", double.url)
    try:
        assert register("tiny-base", make_modelfile(tmp_path / "b", tiny_gguf), reporter=Reporter("quiet"))
        adapter = write_tiny_gguf(tmp_path / "a.gguf", kind="adapter")
        with pytest.raises(AdaptersRejected) as info:
            register("tuned", _adapter_modelfile(tmp_path / "m", "tiny-base", adapter), reporter=Reporter("quiet"))
    finally:
        double.stop()
    posted = [p for m, p in double.requests if m == "POST" and p.startswith("/api/blobs/")]
    if behaviour == "reject":
        assert "LoRA adapters are no longer supported" in info.value.message and "0.34.2" in info.value.message
        assert posted == ["/api/blobs/sha256:" + sha(tiny_gguf)]  # the base's, before; never the adapter
    else:
        assert "could not create tuned:latest with the adapter" in info.value.message
    assert not (tmp_path / "store" / "manifests" / "registry.ollama.ai" / "library" / "tuned").exists()


def test_running_server_lists_an_offline_model_without_restart(run_cli, ollama_double, modelfile,
                                                               ollama_models_dir, ftpack_home):
    import ollama

    client = ollama.Client(host=ollama_double.url)
    assert client.list().models == []
    result = run_cli("register", "me/offline-one:v1", "--modelfile", modelfile, "--offline",
                     "--models-dir", ollama_models_dir)
    assert result.exit_code == 0, result.output
    listed = client.list().models
    assert [m.model for m in listed] == ["me/offline-one:v1"]
    assert listed[0].details.quantization_level == "Q4_K_M"
    shown = client.show("me/offline-one:v1")
    assert "<|im_start|>" in shown.template and "num_ctx" in shown.parameters


def test_offline_default_store_follows_OLLAMA_MODELS(run_cli, modelfile, tmp_path, monkeypatch, ftpack_home):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "env-store"))
    assert run_cli("register", "tiny-chat", "--modelfile", modelfile, "--offline").exit_code == 0
    assert (tmp_path / "env-store" / "manifests" / "registry.ollama.ai" / "library" / "tiny-chat" / "latest").is_file()


# -- failures: clear messages, no traceback, nothing lost ------------------------------------

def test_server_unreachable(run_cli, modelfile, monkeypatch, ftpack_home):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{port}")
    result = run_cli("register", "tiny-chat", "--modelfile", modelfile)
    assert result.exit_code == 1
    assert f"not reachable at http://127.0.0.1:{port}" in result.output
    assert "ollama serve" in result.output and "OLLAMA_HOST" in result.output and "--offline" in result.output
    assert "Traceback" not in result.output
    assert modelfile.is_file()


def test_server_too_old(run_cli, modelfile, tmp_path, monkeypatch, ftpack_home):
    old = OllamaDouble(tmp_path / "old-store", version="0.5.4").start()
    try:
        monkeypatch.setenv("OLLAMA_HOST", old.url)
        result = run_cli("register", "tiny-chat", "--modelfile", modelfile)
    finally:
        old.stop()
    assert result.exit_code == 1
    assert "Ollama 0.5.4" in result.output and "needs Ollama 0.5.5 or newer" in result.output
    assert "Traceback" not in result.output
    assert not any(p == "/api/create" for _, p in old.requests)


def test_digest_mismatch_is_reported(ollama_double, tiny_gguf):
    from ftpack.ollama.api import OllamaServer

    with OllamaServer(ollama_double.url) as server, pytest.raises(FtpackError) as info:
        server.upload_blob(tiny_gguf, "sha256:" + "0" * 64, Reporter("quiet"))
    assert "digest mismatch" in info.value.message and "run the same command again" in info.value.hint


def test_ollama_error_text_reaches_the_user(run_cli, tmp_path, tiny_gguf, go_renderer, monkeypatch, ftpack_home):
    double = OllamaDouble(tmp_path / "store", template_check=go_renderer.parse_error).start()
    monkeypatch.setenv("OLLAMA_HOST", double.url)
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {tiny_gguf}\nTEMPLATE {{{{ .Prompt \n")  # unclosed action
    try:
        result = run_cli("register", "broken", "--modelfile", mf)
    finally:
        double.stop()
    assert result.exit_code == 1
    assert "template error: template: :1: unclosed action" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", ["bad name", "a/b/c/d", ".leading-dot", "ns.with.dot/model", "x" * 81, "m:t:u"])
def test_invalid_names_are_refused_with_ollamas_rules(run_cli, modelfile, name, ftpack_home):
    result = run_cli("register", name, "--modelfile", modelfile, "--offline", "--models-dir", modelfile.parent / "s")
    assert result.exit_code == 2 and "Invalid Ollama model name" in result.output
    assert "[host/][namespace/]model[:tag]" in result.output


def test_missing_gguf_in_modelfile(run_cli, tmp_path, ftpack_home):
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM ./nowhere.gguf\n")
    result = run_cli("register", "x", "--modelfile", mf, "--offline", "--models-dir", tmp_path / "s")
    assert result.exit_code == 2 and "not an existing file" in " ".join(result.output.split())


# -- list and remove -------------------------------------------------------------------------

@pytest.mark.parametrize("offline", [False, True])
def test_list_and_remove_keep_shared_blobs(run_cli, ollama_double, modelfile, ollama_models_dir, tiny_gguf,
                                           offline, ftpack_home):
    import ollama

    where = ["--offline", "--models-dir", str(ollama_models_dir)] if offline else []
    for name in ("alpha", "beta"):
        assert run_cli("register", name, "--modelfile", modelfile, *where).exit_code == 0
    # a model ftpack did not make, sharing the same GGUF blob
    client = ollama.Client(host=ollama_double.url)
    digest = "sha256:" + sha(tiny_gguf)
    list(client.create("other", files={"tiny.gguf": digest}, stream=True))

    listed = run_cli("--json", "list", *where)
    data = next(json.loads(x)["data"] for x in listed.output.splitlines() if '"result"' in x)
    assert sorted(m["name"] for m in data["models"]) == ["alpha:latest", "beta:latest"]
    assert all(m["build_dir"] == str(modelfile.parent.parent.resolve()) and m["quant"] == "Q4_K_M"
               and m["base"] == "smollm2-135m" and m["method"] == "lora" for m in data["models"])
    everything = run_cli("--json", "list", "--all", *where)
    data = next(json.loads(x)["data"] for x in everything.output.splitlines() if '"result"' in x)
    assert {m["name"]: m["ftpack"] for m in data["models"]} == {"alpha:latest": True, "beta:latest": True,
                                                                "other:latest": False}

    refused = run_cli("remove", "other", *where)
    assert refused.exit_code == 2 and "not created by ftpack" in refused.output
    blob = ollama_models_dir / "blobs" / digest.replace(":", "-")
    assert run_cli("remove", "alpha", *where).exit_code == 0
    assert blob.exists()  # beta and other still use it
    assert run_cli("remove", "beta", *where).exit_code == 0
    assert run_cli("remove", "other", "--force", *where).exit_code == 0
    assert not blob.exists()
    assert client.list().models == []
    missing = run_cli("remove", "alpha", *where)
    assert missing.exit_code == 2 and "not in Ollama" in missing.output


def test_model_recreated_by_others_is_no_longer_claimed(run_cli, ollama_double, modelfile, tiny_gguf, ftpack_home):
    import ollama

    assert run_cli("register", "alpha", "--modelfile", modelfile).exit_code == 0
    client = ollama.Client(host=ollama_double.url)
    list(client.create("alpha", files={"t.gguf": "sha256:" + sha(tiny_gguf)}, system="changed", stream=True))
    listed = run_cli("--json", "list")
    data = next(json.loads(x)["data"] for x in listed.output.splitlines() if '"result"' in x)
    assert data["models"] == []


# -- the stages ------------------------------------------------------------------------------

def _stage_ctx(build_dir: Path, stage: str, cfg, manifest, reporter: Reporter | None = None):
    from ftpack.core.runner import StageContext

    return StageContext(config=cfg, build_dir=build_dir, stage=stage, manifest=manifest,
                        reporter=reporter or Reporter("quiet"))


def test_modelfile_and_register_stages(tmp_path, tiny_gguf, ftpack_home):
    from ftpack.core.manifest import Manifest, StageRecord
    from ftpack.ollama.modelfile import Command, parse_modelfile, run_modelfile_stage
    from ftpack.ollama.registration import run_register_stage
    from ftpack.settings import build_config

    build_dir = tmp_path / "builds" / "demo"
    gguf = build_dir / "gguf" / "demo.Q4_K_M.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(tiny_gguf.read_bytes())
    manifest = Manifest.load(build_dir)
    manifest.stages["data"] = StageRecord(status="done", metrics={"template": "chatml"})
    manifest.stages["quantize"] = StageRecord(status="done", main_output="gguf/demo.Q4_K_M.gguf")
    manifest.save()
    store = tmp_path / "store"
    cfg = build_config("demo", {"register": "offline", "models_dir": str(store), "max_seq_length": 1024,
                                "parameters": ["temperature=0.3"], "system": "Be brief."})
    res = run_modelfile_stage(_stage_ctx(build_dir, "modelfile", cfg, manifest))
    assert res.main_output == build_dir / "ollama" / "Modelfile"
    cmds = parse_modelfile(res.main_output.read_bytes())
    assert cmds[0] == Command("model", "../gguf/demo.Q4_K_M.gguf")
    assert Command("num_ctx", "1024") in cmds and Command("temperature", "0.3") in cmds
    assert Command("system", "Be brief.") in cmds
    manifest.stages["modelfile"] = StageRecord(status="done", main_output="ollama/Modelfile", metrics=res.metrics)
    reg = run_register_stage(_stage_ctx(build_dir, "register", cfg, manifest))
    assert reg.metrics["run"] == "ollama run demo" and reg.metrics["model_digest"] == "sha256:" + sha(gguf)
    assert reg.metrics["store"] == str(store)
    assert json.loads((build_dir / "register" / "registration.json").read_text()) == reg.metrics
    m = manifest_of(store, "demo")
    assert m["layers"][0]["digest"] == reg.metrics["model_digest"]
    # the build is recorded for `ftpack list`
    from ftpack.ollama.registration import list_models

    _, models = list_models(offline=True, models_dir=store)
    assert models[0].ftpack["build_dir"] == str(build_dir.resolve())
    # a rebuild replaces its own model ...
    assert run_register_stage(_stage_ctx(build_dir, "register", cfg, manifest)).metrics["run"] == "ollama run demo"
    # ... but never someone else's model of the same name
    from ftpack.ollama.request import RegistrationRequest
    from ftpack.ollama.store import write_model

    write_model(store, "foreign", RegistrationRequest(model_path=gguf), reporter=Reporter("quiet"))
    other = build_config("foreign", {"register": "offline", "models_dir": str(store)})
    with pytest.raises(FtpackError) as info:
        run_register_stage(_stage_ctx(build_dir, "register", other, manifest))
    assert info.value.code == 2 and "not created by this ftpack build" in info.value.message


def test_modelfile_stage_serves_the_template_saved_with_the_weights(tmp_path, tiny_gguf):
    """The Modelfile's TEMPLATE and stops are the format the weights were trained with (saved beside
    them), not a fresh look-up of the name in templates/, which may have changed since."""
    import dataclasses

    from ftpack.core.manifest import Manifest, StageRecord
    from ftpack.ollama.modelfile import read_modelfile, run_modelfile_stage
    from ftpack.settings import build_config
    from ftpack.training.templates import load_template, save_template

    build_dir = tmp_path / "builds" / "demo"
    (build_dir / "gguf").mkdir(parents=True)
    (build_dir / "gguf" / "demo.Q4_K_M.gguf").write_bytes(tiny_gguf.read_bytes())
    trained = dataclasses.replace(load_template("chatml"), stop=("<|im_end|>", "<|trained-stop|>"),
                                  ollama_template="{{ .Prompt }} (as trained)")
    save_template(trained, build_dir / "train" / "adapter")
    manifest = Manifest.load(build_dir)
    manifest.stages["data"] = StageRecord(status="done", metrics={"template": "chatml"})
    manifest.stages["train"] = StageRecord(status="done", main_output="train/adapter")
    manifest.stages["quantize"] = StageRecord(status="done", main_output="gguf/demo.Q4_K_M.gguf")
    manifest.save()
    res = run_modelfile_stage(_stage_ctx(build_dir, "modelfile", build_config("demo", {}), manifest))
    spec = read_modelfile(res.main_output)
    assert spec.template == "{{ .Prompt }} (as trained)"
    assert [v for n, v in spec.parameters if n == "stop"] == ["<|im_end|>", "<|trained-stop|>"]
    assert res.metrics["stop"] == ["<|im_end|>", "<|trained-stop|>"]


# -- one registration, seen from the store and from the server on that store ------------------

def _demo_build(tmp_path: Path, tiny_gguf: Path):
    """A build dir `demo` whose quantize and modelfile stages are done (the tiny GGUF, chatml)."""
    from ftpack.core.manifest import Manifest, StageRecord
    from ftpack.ollama.modelfile import run_modelfile_stage
    from ftpack.settings import build_config

    build_dir = tmp_path / "builds" / "demo"
    gguf = build_dir / "gguf" / "demo.Q4_K_M.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(tiny_gguf.read_bytes())
    manifest = Manifest.load(build_dir)
    manifest.config = {"base": "smollm2-135m", "method": "lora"}
    manifest.stages["data"] = StageRecord(status="done", metrics={"template": "chatml"})
    manifest.stages["quantize"] = StageRecord(status="done", main_output="gguf/demo.Q4_K_M.gguf")
    manifest.save()
    res = run_modelfile_stage(_stage_ctx(build_dir, "modelfile", build_config("demo", {}), manifest))
    manifest.stages["modelfile"] = StageRecord(status="done", main_output="ollama/Modelfile", metrics=res.metrics)
    return build_dir, manifest


def _register_demo(build_dir: Path, manifest, mode: str, reporter: Reporter | None = None, **settings) -> dict:
    """The register stage of the demo build, as a rebuild runs it (register = server | offline)."""
    from ftpack.ollama.registration import run_register_stage
    from ftpack.settings import build_config

    cfg = build_config("demo", {"register": mode, **settings})
    return run_register_stage(_stage_ctx(build_dir, "register", cfg, manifest, reporter)).metrics


def _ftpack_models(run_cli, *where) -> dict[str, str]:
    """`ftpack list`: {name: build dir} of the models it shows as ftpack's."""
    listed = run_cli("--json", "list", *where)
    assert listed.exit_code == 0, listed.output
    data = next(json.loads(x)["data"] for x in listed.output.splitlines() if '"result"' in x)
    return {m["name"]: m["build_dir"] for m in data["models"] if m["ftpack"]}


def test_offline_registration_stays_the_builds_own_once_a_server_runs_on_that_store(run_cli, tmp_path, tiny_gguf,
                                                                                   monkeypatch):
    """The README demo: build with no server (offline into the store), then `ollama serve`, then rebuild."""
    store = tmp_path / "shared-store"
    build_dir, manifest = _demo_build(tmp_path, tiny_gguf)
    _register_demo(build_dir, manifest, "offline", models_dir=str(store))
    ours = {"demo:latest": str(build_dir.resolve())}
    double = OllamaDouble(store).start()
    try:
        monkeypatch.setenv("OLLAMA_HOST", double.url)
        assert _ftpack_models(run_cli) == ours  # the server lists it as this build's model
        served = _register_demo(build_dir, manifest, "server")  # the rebuild replaces its own model
        assert served["where"] == f"server:{double.url}" and served["store"] is None
        assert ("POST", "/api/create") in double.requests
        assert _ftpack_models(run_cli) == ours
        assert _ftpack_models(run_cli, "--offline", "--models-dir", store) == ours
        removed = run_cli("remove", "demo")  # no --force needed: it is ftpack's
        assert removed.exit_code == 0, removed.output
        assert not (store / "manifests" / "registry.ollama.ai" / "library" / "demo" / "latest").exists()
    finally:
        double.stop()


def test_server_registration_is_ftpacks_in_the_servers_store(run_cli, ollama_double, ollama_models_dir, tmp_path,
                                                             tiny_gguf):
    import ollama

    build_dir, manifest = _demo_build(tmp_path, tiny_gguf)
    _register_demo(build_dir, manifest, "server")
    ours = {"demo:latest": str(build_dir.resolve())}
    assert _ftpack_models(run_cli, "--offline", "--models-dir", ollama_models_dir) == ours
    # a rebuild with the server stopped writes the same store offline: still its own model
    offline = _register_demo(build_dir, manifest, "offline", models_dir=str(ollama_models_dir))
    assert offline["store"] == str(ollama_models_dir)
    assert _ftpack_models(run_cli) == ours
    removed = run_cli("remove", "demo", "--offline", "--models-dir", ollama_models_dir)
    assert removed.exit_code == 0, removed.output
    assert ollama.Client(host=ollama_double.url).list().models == []


# -- which store offline registration writes (OLLAMA_MODELS, ~/.ollama/models, the service's) ----

@pytest.fixture
def stores(tmp_path, monkeypatch) -> dict[str, Path]:
    """A fresh home (no ~/.ollama yet), no OLLAMA_MODELS, and a Linux service store that exists."""
    from ftpack.core import locations

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    service = tmp_path / "usr-share" / "ollama" / ".ollama" / "models"
    service.mkdir(parents=True)
    monkeypatch.setattr(locations, "OLLAMA_SERVICE_MODELS", service)
    return {"service": service, "user": home / ".ollama" / "models", "env": tmp_path / "env-store"}


@pytest.mark.parametrize("case", ["service", "user", "env"])
def test_offline_registration_writes_the_store_a_local_server_uses(run_cli, modelfile, stores, monkeypatch, case,
                                                                   ftpack_home):
    expected = stores[case]
    if case == "user":  # the user's own store exists: it wins over the service's
        expected.mkdir(parents=True)
    if case == "env":  # OLLAMA_MODELS always wins
        monkeypatch.setenv("OLLAMA_MODELS", str(expected))
    result = run_cli("--json", "register", "tiny-chat", "--modelfile", modelfile, "--offline")
    assert result.exit_code == 0, result.output
    events = [json.loads(x) for x in result.output.splitlines()]
    assert {"event": "info", "message": f"Ollama store: {expected}", "store": str(expected)} in events
    assert next(e["data"] for e in events if e["event"] == "result")["store"] == str(expected)
    assert f"in the Ollama store at {expected}" in next(e["message"] for e in events if e["event"] == "final")
    written = [k for k, root in stores.items() if (root / "manifests").exists()]
    assert written == [case]
    manifest = expected / "manifests" / "registry.ollama.ai" / "library" / "tiny-chat" / "latest"
    assert manifest.is_file()
    # list and remove look in the same store
    assert list(_ftpack_models(run_cli, "--offline")) == ["tiny-chat:latest"]
    assert run_cli("remove", "tiny-chat", "--offline").exit_code == 0
    assert not manifest.exists()


def test_register_stage_says_which_store_it_wrote(stores, tmp_path, tiny_gguf, ftpack_home):
    build_dir, manifest = _demo_build(tmp_path, tiny_gguf)
    out = io.StringIO()
    metrics = _register_demo(build_dir, manifest, "offline", reporter=Reporter("json", out=out))
    assert metrics["store"] == str(stores["service"]) and metrics["where"] == f"store:{stores['service']}"
    messages = [json.loads(x).get("message", "") for x in out.getvalue().splitlines()]
    assert f"registered demo:latest in the Ollama store at {stores['service']}: try `ollama run demo`" in messages


# -- cross-checks of the two independent implementations (ftpack vs the double) ---------------

NAME_CHARS = st.text(alphabet="aZ09_-.:/ é", max_size=24)


@settings(max_examples=300, deadline=None)
@given(NAME_CHARS)
def test_name_rules_agree_with_the_double(name):
    try:
        ours = parse_model_name(name).parts
    except FtpackError:
        ours = None
    assert ours == parse_name(name.strip())


JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(JSONISH)
def test_go_json_encoders_agree(value):
    assert go_json(value, sort_keys=True) == double_go_json(value, sort_keys=True)
    assert _floats(json.loads(go_json(value), parse_int=float)) == _floats(value)  # shortest repr round-trips


def _floats(v):
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, list):
        return [_floats(x) for x in v]
    return {k: _floats(x) for k, x in v.items()}


@pytest.mark.parametrize("value, text", [(0.7, "0.7"), (2048.0, "2048"), (1e21, "1e+21"), (1e-7, "1e-7"),
                                         (1.5e-10, "1.5e-10"), (123456789.0, "123456789"), (0.000001, "0.000001"),
                                         ("<|im_end|>&\u2028", '"\\u003c|im_end|\\u003e\\u0026\\u2028"')])
def test_go_json_known_outputs(value, text):  # values checked against Go's encoding/json
    assert go_json(value) == text


# -- the double's API fidelity (status codes and texts from routes.go / create.go) ---------------

def test_double_status_codes(ollama_double, tiny_gguf):
    url = ollama_double.url
    good = "sha256:" + sha(tiny_gguf)
    with httpx.Client(base_url=url) as c:
        assert c.get("/api/version").json() == {"version": ollama_double.version}
        r = c.head("/api/blobs/sha256:xyz")
        assert r.status_code == 400
        assert c.post("/api/blobs/sha256:xyz", content=b"x").json() == {"error": "invalid digest format"}
        assert c.head(f"/api/blobs/{good}").status_code == 404
        r = c.post(f"/api/blobs/sha256:{'0' * 64}", content=tiny_gguf.read_bytes())
        assert r.status_code == 400 and r.json()["error"] == \
            f'digest mismatch, expected "sha256:{"0" * 64}", got "{good}"'
        assert c.post(f"/api/blobs/{good}", content=tiny_gguf.read_bytes()).status_code == 200  # stored anyway
        assert c.head(f"/api/blobs/{good}").status_code == 200
        r = c.post("/api/create", json={"model": "a/b/c/d", "files": {"m.gguf": good}})
        assert r.status_code == 400 and r.json() == {"error": "invalid model name"}
        r = c.post("/api/create", json={"model": "x", "files": {"../m.gguf": good}})
        assert r.status_code == 400 and r.json() == {"error": "file path must be relative"}
        r = c.post("/api/create", json={"model": "x"})
        assert r.status_code == 400 and r.json() == {"error": "neither 'from' or 'files' was specified"}
        assert c.post("/api/show", json={"model": "nope"}).json() == {"error": "model 'nope' not found"}
        r = c.request("DELETE", "/api/delete", json={"model": "nope"})
        assert r.status_code == 404 and r.json() == {"error": "model 'nope' not found"}
        r = c.post("/api/create", json={"model": "x", "files": {"m.gguf": good}, "stream": True})
        lines = [json.loads(x) for x in r.text.splitlines()]
        assert r.status_code == 200 and lines[0] == {"status": "parsing GGUF"} and lines[-1] == {"status": "success"}


# -- anchored to real Ollama: blob digests asserted by ollama/ollama server/routes_create_test.go ------

OLLAMA_TEST_DIGESTS = {  # (test in routes_create_test.go) -> content digest Ollama wrote
    "config": "sha256:99759ad5b91e723db0393d698ffbb448b1b7df5ff6377a108c49254583b1bc8c",  # every test's config
    "system": "sha256:f29e82a8284dbdf5910b1555580ff60b04238b8da9d5e51159ada67a4d0d5851",  # TestCreateUnsetsSystem
    "params": "sha256:1d0ad71299d48c2fb7ae2b98e683643e771f8a5b72be34942af90d97a91c1e37",  # TestCreateMergeParameters
    "template": "sha256:b507b9c2f6ca642bffcd06665ea7c91f235fd32daeefdf875a0f938db05fb315",  # TestCreateRemovesLayers
    "messages": "sha256:298baeaf6928a60cf666d88d64a1ba606feb43a2865687c39e40652e407bffc4",  # TestCreateReplacesMessages
    "license_mit": "sha256:e5dcffe836b6ec8a58e492419b550e65fb8cbdc308503979e5dacb33ac7ea3b7",  # TestCreateLicenses
    "license_apache": "sha256:2af71558e438db0b73a20beab92dc278a94e1bbe974c00c1a33e3ab62d53a608",
}


@pytest.mark.parametrize("offline", [True, False])
def test_store_bytes_match_ollamas_own_test_digests(tmp_path, offline, ollama_double, ollama_models_dir, ftpack_home):
    """The same inputs as Ollama's create tests give the blobs (digests) Ollama's tests expect."""
    from gguf import GGUFWriter

    from ftpack.ollama.registration import register_offline, register_with_server
    from ftpack.ollama.request import RegistrationRequest

    gguf = tmp_path / "test.gguf"  # like createBinFile(t, nil, nil): architecture "test", no tensors
    w = GGUFWriter(str(gguf), "test")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    req = RegistrationRequest(
        model_path=gguf, template="{{ .Prompt }}", system="Say hi!",
        parameters={"temperature": 1.0, "top_k": 10, "stop": ["USER:", "ASSISTANT:"]},
        messages=[{"role": "assistant", "content": "What is my purpose?"}, {"role": "user", "content": "You run tests."},
                  {"role": "assistant", "content": "Oh, my god."}],
        licenses=["MIT", "Apache-2.0"])
    quiet = Reporter("quiet")
    if offline:
        register_offline("test", req, models_dir=ollama_models_dir, reporter=quiet)
    else:
        register_with_server("test", req, host=ollama_double.url, reporter=quiet)
    m = manifest_of(ollama_models_dir, "test")
    digests = {x["mediaType"].removeprefix(MEDIA): x["digest"] for x in m["layers"]}
    # The config is today's model.ConfigV2 (types/model/config.go@0abf7fa: no architecture/os; the
    # digest Ollama's older tests assert, 99759ad5…, was of the config with "architecture":"amd64",
    # "os":"linux"): Go's json.Marshal of the struct, fields in order, omitempty ones left out.
    config = (ollama_models_dir / "blobs" / m["config"]["digest"].replace(":", "-")).read_bytes()
    assert config == (b'{"model_format":"gguf","model_family":"test","model_families":["test"],"model_type":"0",'
                      b'"file_type":"unknown"}\n')
    assert digests["system"] == OLLAMA_TEST_DIGESTS["system"]
    assert digests["params"] == OLLAMA_TEST_DIGESTS["params"]
    assert digests["template"] == OLLAMA_TEST_DIGESTS["template"]
    assert digests["messages"] == OLLAMA_TEST_DIGESTS["messages"]
    assert [x["digest"] for x in m["layers"] if x["mediaType"] == MEDIA + "license"] == \
        [OLLAMA_TEST_DIGESTS["license_mit"], OLLAMA_TEST_DIGESTS["license_apache"]]


def test_list_and_remove_choose_like_register_auto(run_cli, modelfile, tmp_path, monkeypatch, ftpack_home):
    """Right after a build registered offline (no server answering), `ftpack list` and `ftpack
    remove` read Ollama's store, saying so, instead of stopping at "server not reachable"."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{port}")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "store"))
    assert run_cli("register", "offline-one", "--modelfile", modelfile, "--offline").exit_code == 0
    listed = run_cli("list")
    assert listed.exit_code == 0, listed.output
    said = " ".join(listed.output.split())
    assert "offline-one:latest" in said and f"No Ollama server at http://127.0.0.1:{port}" in said
    assert "model store" in said
    removed = run_cli("remove", "offline-one")
    assert removed.exit_code == 0, removed.output
    assert not (tmp_path / "store" / "manifests" / "registry.ollama.ai" / "library" / "offline-one").exists()
