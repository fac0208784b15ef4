"""`--base ollama:NAME[:TAG]`: fine-tune a model already in Ollama, in Ollama's own chat format.

A tiny runnable Llama GGUF (Q4_K_M, tests/runnable_gguf.py) is put into a test store the
way Ollama stores a pulled model (blobs + manifest + template/system/params layers):

* the store is read as Ollama reads it (library and full names), the server's /api/show
  (the Ollama double on that store) confirms the blob; unknown names list the nearest
  local models as `ollama list` does; a model with no GGUF layer, an architecture
  transformers cannot load, a built-in renderer, no TEMPLATE are refused before any work;
* the chat format comes from the model: an Ollama TEMPLATE identical to one of ftpack's
  maps to it; any other is rendered as Ollama renders it — the training text equals Go's
  rendering of the TEMPLATE (tests/gotemplate), its token ids equal llama.cpp's on the
  very blob, and the loss covers exactly the answers and their end of turn;
* `ftpack train --base ollama:tiny` trains on it (the data stage records that training
  happens on a dequantized 4-bit model), and so does the build's data + train stages.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ftpack.core.errors import FtpackError
from ftpack.ollama.base import list_table, read_ollama_base
from ftpack.training.ollama_format import (encode_conversation, ollama_prompt, template_for_ollama_base,
                                           training_sequences)
from ollama_double.fixtures import go_renderer, ollama_double, ollama_models_dir, write_tiny_gguf  # noqa: F401
from runnable_gguf import tiny_ggufs  # noqa: F401

# A format of the tiny model's vocabulary that is none of ftpack's: a system block only
# when there is a system prompt, "### Question"/"### Answer" turns, answers ending in the
# EOS token, and a generation prompt only after the last message ($last, slice, len).
CUSTOM_TEMPLATE = """{{- if .System }}<|im_start|>{{ .System }}
{{ end }}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}### Question
{{ .Content }}
{{ if $last }}### Answer
{{ end }}
{{- else if eq .Role "assistant" }}### Answer
{{ .Content }}<|im_end|>
{{ end }}
{{- end }}"""
CUSTOM_STOPS = ["### Question", "<|im_end|>"]
# Mistral's shape: the system prompt goes into the *last* user turn, so earlier turns
# render differently as the conversation grows.
SYSTEM_LAST_TEMPLATE = """{{- range $index, $_ := .Messages }}
{{- if eq .Role "user" }}[INST] {{ if and (eq (len (slice $.Messages $index)) 1) $.System }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }} {{ .Content }}</s>
{{- end }}
{{- end }}"""

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris."}],
    [{"role": "system", "content": "Answer in one word."},
     {"role": "user", "content": "Capital of Italy?"}, {"role": "assistant", "content": "Rome."},
     {"role": "user", "content": "  And of Japan?\n"}, {"role": "assistant", "content": "Tokyo — 東京.\n\nDone."}],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
]


def _blob(store: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = store / "blobs" / digest.replace(":", "-")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def put_model(store: Path, name: str, gguf: Path | None, *, template: str | None = None, system: str | None = None,
              params: dict | None = None, config: dict | None = None, extra_layers: list[tuple[str, bytes]] = ()
              ) -> Path:
    """Write ``name`` into ``store`` as Ollama keeps a pulled model: blobs by digest, a manifest
    under manifests/<host>/<namespace>/<model>/<tag>, the config blob."""
    host, namespace, model_tag = "registry.ollama.ai", "library", name
    if name.count("/") == 2:
        host, namespace, model_tag = name.split("/")
    model, _, tag = model_tag.partition(":")
    layers = []
    if gguf is not None:
        layers.append({"mediaType": "application/vnd.ollama.image.model", **_blob(store, gguf.read_bytes())})
    for media, text in (("template", template), ("system", system)):
        if text is not None:
            layers.append({"mediaType": f"application/vnd.ollama.image.{media}", **_blob(store, text.encode())})
    if params is not None:
        layers.append({"mediaType": "application/vnd.ollama.image.params", **_blob(store, json.dumps(params).encode())})
    for media, data in extra_layers:
        layers.append({"mediaType": media, **_blob(store, data)})
    cfg = {"model_format": "gguf", "model_family": "llama", "file_type": "Q4_K_M", **(config or {})}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           **_blob(store, json.dumps(cfg).encode())},
                "layers": layers}
    path = store / "manifests" / host / namespace / model / (tag or "latest")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return path


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """An empty Ollama store that is OLLAMA_MODELS; materialised bases cached per test."""
    root = tmp_path / "ollama-store"
    root.mkdir()
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    monkeypatch.setenv("FTPACK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")  # no server unless a test starts the double
    return root


@pytest.fixture
def tiny_blob(tiny_ggufs) -> Path:
    return tiny_ggufs["Q4_K_M"]


# -- reading the store -----------------------------------------------------------------------

def test_a_pulled_model_is_read_as_ollama_stores_it(store, tiny_blob, tmp_path):
    put_model(store, "tiny:latest", tiny_blob, template=CUSTOM_TEMPLATE, system="Be brief.",
              params={"stop": CUSTOM_STOPS, "temperature": 0.2})
    put_model(store, "example.com/team/tiny:v1", tiny_blob, template="{{ .Prompt }}")
    ob = read_ollama_base("ollama:tiny")
    digest = "sha256:" + hashlib.sha256(tiny_blob.read_bytes()).hexdigest()
    assert (ob.display, ob.model_digest, ob.model_size) == ("tiny:latest", digest, tiny_blob.stat().st_size)
    assert ob.model_blob == store / "blobs" / digest.replace(":", "-")
    assert (ob.template, ob.system, ob.stop) == (CUSTOM_TEMPLATE, "Be brief.", tuple(CUSTOM_STOPS))
    assert (ob.architecture, ob.file_type, ob.quantized, ob.bits) == ("llama", "Q4_K_M", True, 4)
    assert "training happens on a dequantized 4-bit model" in ob.quantization_note
    assert ob.confirmed_by is None  # no server answered
    full = read_ollama_base("ollama:example.com/team/tiny:v1")
    assert (full.display, full.template, full.model_digest) == ("example.com/team/tiny:v1", "{{ .Prompt }}", digest)
    other = tmp_path / "elsewhere"
    put_model(other, "tiny:latest", tiny_blob, template="X")
    assert read_ollama_base("ollama:tiny", models_dir=other).store == other  # --models-dir wins


def test_an_unknown_model_lists_the_nearest_local_models(store, tiny_blob):
    for name in ("tiny:latest", "tiny:q8", "llama3.2:latest", "qwen2.5:0.5b"):
        put_model(store, name, tiny_blob, template="{{ .Prompt }}")
    with pytest.raises(FtpackError) as err:
        read_ollama_base("ollama:tinyy")
    text = err.value.message
    assert err.value.code == 2 and "tinyy:latest is not in the Ollama store" in text and str(store) in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:4] == ["NAME", "ID", "SIZE", "MODIFIED"])
    listed = [line.split()[0] for line in lines[header + 1:]]
    assert listed[:2] == ["tiny:latest", "tiny:q8"] and "qwen2.5:0.5b" not in listed
    assert "ollama pull tinyy" in err.value.hint
    with pytest.raises(FtpackError, match="holds no models") as empty:
        read_ollama_base("ollama:tiny", models_dir=store / "nothing-here")
    assert "ollama pull tiny" in empty.value.hint
    with pytest.raises(FtpackError, match="needs a model name"):
        read_ollama_base("ollama:")


def test_list_table_has_ollama_lists_columns(store, tiny_blob):
    from ftpack.ollama.store import store_models

    put_model(store, "tiny:latest", tiny_blob, template="{{ .Prompt }}")
    table = list_table(store_models(store)).splitlines()
    assert table[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    name, ident, size, unit, *ago = table[1].split()
    assert name == "tiny:latest" and len(ident) == 12 and unit in ("KB", "MB") and ago


def test_a_model_without_a_gguf_layer_is_refused_before_any_work(store, tiny_blob):
    put_model(store, "mlx-model:latest", None, template="{{ .Prompt }}", config={"model_format": "safetensors"},
              extra_layers=[("application/vnd.ollama.image.tensor", b"\x00" * 64)])
    with pytest.raises(FtpackError) as err:
        read_ollama_base("ollama:mlx-model")
    assert err.value.code == 2 and "no GGUF model layer" in err.value.message and "tensors" in err.value.message
    fake = store.parent / "not-a-gguf.bin"
    fake.write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    put_model(store, "zip:latest", fake)
    with pytest.raises(FtpackError, match="not a GGUF file"):
        read_ollama_base("ollama:zip")


def test_an_architecture_transformers_cannot_load_is_refused(store, tmp_path):
    bert = write_tiny_gguf(tmp_path / "bert.gguf", arch="bert")
    put_model(store, "embedder:latest", bert)
    with pytest.raises(FtpackError) as err:
        read_ollama_base("ollama:embedder")
    assert err.value.code == 2 and "'bert'" in err.value.message and "transformers cannot load" in err.value.message
    assert "llama" in err.value.hint


def test_architectures_of_transformers_fast_gguf_loader_are_accepted(store, tmp_path):
    """transformers 5 loads qwen35 GGUFs with its new loader, whose table the legacy
    GGUF_SUPPORTED_ARCHITECTURES list lacks: such an Ollama model was refused."""
    from transformers.integrations.gguf import GGUF_CONFIG_ARCHS
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    newer = sorted(set(GGUF_CONFIG_ARCHS) - set(GGUF_SUPPORTED_ARCHITECTURES))
    if not newer:
        pytest.skip("this transformers has no GGUF architecture outside the legacy table")
    arch = newer[0]
    put_model(store, "newer:latest", write_tiny_gguf(tmp_path / "newer.gguf", arch=arch))
    assert read_ollama_base("ollama:newer").architecture == arch


def test_the_server_confirms_the_blob(ollama_double, ollama_models_dir, tiny_blob, tmp_path, monkeypatch):
    """/api/show names the blob the server runs: the same one confirms; another is an error;
    a model only the server knows is read from the store its blob lies in."""
    put_model(ollama_models_dir, "tiny:latest", tiny_blob, template=CUSTOM_TEMPLATE)
    ob = read_ollama_base("ollama:tiny", models_dir=ollama_models_dir)
    assert ob.confirmed_by == ollama_double.url
    elsewhere = tmp_path / "user-store"
    found = read_ollama_base("ollama:tiny", models_dir=elsewhere)  # not in the user's store: the server's
    assert found.store == ollama_models_dir and found.confirmed_by == ollama_double.url
    put_model(elsewhere, "tiny:latest", write_tiny_gguf(tmp_path / "other.gguf"), template="X")
    monkeypatch.setattr("ftpack.ollama.base._read_model", lambda *a: pytest.fail("read after a mismatch"))
    with pytest.raises(FtpackError, match="runs tiny:latest from blob") as err:
        read_ollama_base("ollama:tiny", models_dir=elsewhere)  # two versions: no guessing which to train
    assert "--models-dir" in err.value.hint


# -- the chat format ------------------------------------------------------------------------------

def _base(store: Path, blob: Path, template: str, *, stops=CUSTOM_STOPS, system: str | None = None,
          name: str = "tiny:latest", **kw):
    put_model(store, name, blob, template=template, system=system, params={"stop": stops} if stops else None, **kw)
    return read_ollama_base("ollama:" + name)


def test_a_template_identical_to_ftpacks_maps_to_it(store, tiny_blob):
    from ftpack.training.templates import load_template

    chatml = load_template("chatml")
    ob = _base(store, tiny_blob, chatml.ollama_template, stops=list(chatml.stop))
    assert template_for_ollama_base(ob).name == "chatml"
    ob = _base(store, tiny_blob, chatml.ollama_template, stops=list(chatml.stop), system="Talk like a pirate.")
    own = template_for_ollama_base(ob)  # its SYSTEM is part of every prompt: no longer ftpack's chatml
    assert own.renders_ollama and own.default_system == "Talk like a pirate."
    assert template_for_ollama_base(ob, explicit="llama3").name == "llama3"  # --template wins


def test_training_text_and_ids_equal_ollamas_rendering(store, tiny_blob, go_renderer):
    """A template that is none of ftpack's: every training sequence is Go's rendering of the
    TEMPLATE (prompt = what Ollama sends at that turn; answer + end of turn after it), its
    ids are llama.cpp's on the blob itself, and only answers + end of turn carry loss."""
    from ftpack.inference.runtime import open_llama
    from ftpack.training.bases import load_tokenizer, resolve_base

    ob = _base(store, tiny_blob, CUSTOM_TEMPLATE, system="Be brief.")
    tpl = template_for_ollama_base(ob)
    assert tpl.renders_ollama and tpl.end_of_turn == "<|im_end|>" and tpl.stop == tuple(CUSTOM_STOPS)
    resolved = resolve_base("ollama:tiny", tokenizer_only=True)
    assert resolved.source == "ollama" and resolved.ollama.model_digest == ob.model_digest
    tokenizer = load_tokenizer(resolved.path)
    with open_llama(ob.model_blob, vocab_only=True) as llm:
        for conv in CONVERSATIONS:
            (text, spans), = training_sequences(tpl, conv)  # this template renders a conversation as one text
            msgs = conv if conv[0]["role"] == "system" else [{"role": "system", "content": "Be brief."}, *conv]
            answers = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
            prompts = go_renderer.render_many([(CUSTOM_TEMPLATE, msgs[:k]) for k in answers])
            for k, (start, end), go in zip(answers, spans, prompts):
                assert text[:start] == go["prompt"]  # Ollama's prompt at that turn, byte for byte
                assert text[start:end] == msgs[k]["content"] + "<|im_end|>"
                assert ollama_prompt(tpl, [m for m in conv[:conv.index(msgs[k])]]) == go["prompt"]
            nxt = go_renderer.render(CUSTOM_TEMPLATE, msgs + [{"role": "user", "content": "more"}])
            assert nxt.startswith(text)  # the next prompt continues the trained text
            (row,) = encode_conversation(tpl, tokenizer, conv)
            assert row["input_ids"] == llm.tokenize(text.encode(), add_bos=True, special=True)
            trained = [t for t, m in zip(row["input_ids"], row["assistant_masks"]) if m]
            assert tokenizer.decode(trained) == "".join(text[s:e] for s, e in spans)
            assert row["assistant_masks"][0] == 0 and sum(row["assistant_masks"]) < len(row["input_ids"])


def test_a_template_that_moves_the_system_prompt_trains_each_turn_in_its_own_context(store, tiny_blob,
                                                                                   go_renderer):
    ob = _base(store, tiny_blob, SYSTEM_LAST_TEMPLATE, stops=["[INST]", "[/INST]"], system="Be terse.")
    tpl = template_for_ollama_base(ob)
    assert tpl.renders_ollama and tpl.end_of_turn == "</s>"  # the EOS token ends an answer (no stop given)
    conv = CONVERSATIONS[2]
    msgs = [{"role": "system", "content": "Be terse."}, *conv]
    seqs = training_sequences(tpl, conv)
    assert len(seqs) == 2  # one per answer: the system prompt sits in a different turn each time
    for (text, [(start, end)]), k in zip(seqs, (2, 4)):
        assert text[:start] == go_renderer.render(SYSTEM_LAST_TEMPLATE, msgs[:k])
        assert text[start:end] == " " + msgs[k]["content"] + "</s>"


@pytest.mark.parametrize("case", ["renderer", "no-end", "bad-syntax"])
def test_formats_that_cannot_be_trained_are_refused_with_the_reason(store, tiny_blob, case):
    kw = {"renderer": dict(template=CUSTOM_TEMPLATE, config={"renderer": "harmony"}),
          "no-end": dict(template="{{ range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}assistant:",
                         stops=None),
          "bad-syntax": dict(template="{{ range .Messages }}{{ js .Content }}{{ end }}")}[case]
    template = kw.pop("template")
    ob = _base(store, tiny_blob, template, **kw)
    with pytest.raises(FtpackError) as err:
        template_for_ollama_base(ob)
    why = {"renderer": "built-in 'harmony' renderer, which ftpack does not reproduce",
           "no-end": "could not learn where to stop", "bad-syntax": "js"}[case]
    assert err.value.code == 2 and why in err.value.message, err.value.message
    assert "--template" in err.value.hint
    assert template_for_ollama_base(ob, explicit="chatml").name == "chatml"  # the way out


# -- training ----------------------------------------------------------------------------------------

def _dataset(path: Path) -> Path:
    rows = [{"messages": CONVERSATIONS[i % 3]} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ftpack_data_counts_tokens_in_the_ollama_models_format(run_cli, store, tiny_blob, tmp_path):
    """`ftpack data --base ollama:tiny` reads only the tokenizer (no dequantized copy) and counts
    the tokens of the sequences training will see (the longest one per record)."""
    from ftpack.training.bases import load_tokenizer, resolve_base

    put_model(store, "tiny:latest", tiny_blob, template=CUSTOM_TEMPLATE, params={"stop": CUSTOM_STOPS})
    result = run_cli("--json", "data", _dataset(tmp_path / "d.jsonl"), "--base", "ollama:tiny")
    assert result.exit_code == 0, result.output
    resolved = resolve_base("ollama:tiny", tokenizer_only=True)
    assert resolved.path.name.endswith("-tokenizer") and not list(resolved.path.glob("*.safetensors"))
    tpl = template_for_ollama_base(resolved.ollama)
    tokenizer = load_tokenizer(resolved.path)
    lengths = [len(encode_conversation(tpl, tokenizer, CONVERSATIONS[i % 3])[0]["input_ids"]) for i in range(6)]
    assert f'"total": {sum(lengths)}' in result.output and f'"max": {max(lengths)}' in result.output


def test_ftpack_train_on_an_ollama_base(run_cli, store, tiny_blob, tmp_path):
    """`ftpack train --base ollama:tiny` trains on the dequantized blob in the model's own
    format; the data stage records the base and that it was a 4-bit model."""
    from ftpack.training.templates import template_of_weights

    put_model(store, "tiny:latest", tiny_blob, template=CUSTOM_TEMPLATE, system="Be brief.",
              params={"stop": CUSTOM_STOPS})
    out = tmp_path / "run"
    result = run_cli("--json", "train", "--base", "ollama:tiny", "--data", _dataset(tmp_path / "d.jsonl"),
                     "--method", "lora", "--max-steps", "3", "--batch-size", "2", "--lora-r", "4", "--out", out)
    assert result.exit_code == 0, result.output
    assert "training happens on a dequantized 4-bit model" in result.output
    saved = template_of_weights(out / "adapter")
    assert saved.renders_ollama and saved.ollama_template == CUSTOM_TEMPLATE and saved.default_system == "Be brief."
    info = json.loads((out / "train_info.json").read_text())
    assert info["base"] == "ollama:tiny:latest" and info["base_source"] == "ollama"
    source = json.loads((Path(info["base_path"]) / "ftpack-source.json").read_text())
    assert source["sha256"] == hashlib.sha256(tiny_blob.read_bytes()).hexdigest()
    losses = [float(r.split(",")[2]) for r in (out / "loss.csv").read_text().splitlines()[1:] if r.split(",")[2]]
    assert len(losses) >= 3 and all(x > 0 for x in losses)


def test_build_data_and_train_stages_on_an_ollama_base(store, tiny_blob, tmp_path):
    """The build's data stage chooses the Ollama model's format (saved in data/, read back by
    template_of_build), records the base and its quantization; the train stage trains it."""
    from ftpack.core.layout import BuildLayout
    from ftpack.core.report import get_reporter
    from ftpack.settings import build_config
    from ftpack.training.data import prepare_build_data, read_messages_jsonl
    from ftpack.training.settings import TrainSettings
    from ftpack.training.templates import template_of_build
    from ftpack.training.train import setup, train

    put_model(store, "tiny:latest", tiny_blob, template=SYSTEM_LAST_TEMPLATE, params={"stop": ["[INST]"]},
              system="Be terse.")
    cfg = build_config("tuned", flag_values={"base": "ollama:tiny", "data": _dataset(tmp_path / "d.jsonl"),
                                             "out": tmp_path / "build", "models_dir": store})
    layout = BuildLayout(tmp_path / "build")
    built = prepare_build_data(cfg, layout, get_reporter())
    record = built.metrics["ollama_base"]
    assert record["name"] == "tiny:latest" and record["file_type"] == "Q4_K_M" and record["quantized"] is True
    assert "dequantized 4-bit" in record["note"] and built.metrics["tokenization_equal"] is True
    assert built.template.renders_ollama and (layout.data_dir / "ftpack_template.json") in built.outputs
    settings = TrainSettings.of(TrainSettings.from_config(cfg), method="lora", max_steps=2, lora_r=4,
                                per_device_train_batch_size=2)
    run = setup(cfg.base, layout.train_file, layout.train_dir, settings, template=built.template, models_dir=store)
    # TRL trains on our sequences as they are: labels are the ids on answers + end of turn, -100 elsewhere
    rows = [r for conv in read_messages_jsonl(layout.train_file)
            for r in encode_conversation(built.template, run.tokenizer, conv)]
    dataset = run.trainer.train_dataset
    assert len(dataset) == len(rows) > len(read_messages_jsonl(layout.train_file))  # one sequence per answer
    for got, want in zip(dataset, rows):
        assert got["input_ids"] == want["input_ids"]
        assert got["labels"] == [t if m else -100 for t, m in zip(want["input_ids"], want["assistant_masks"])]
    result = train(cfg.base, layout.train_file, layout.train_dir, template=built.template, models_dir=store,
                   settings=settings)
    assert result.steps == 2 and result.metrics["base"] == "ollama:tiny:latest"
    assert template_of_build(layout).ollama_template == SYSTEM_LAST_TEMPLATE  # saved beside the adapter


def test_the_model_card_says_training_started_from_a_quantized_blob(tmp_path):
    from ftpack.core.manifest import Manifest, StageRecord
    from ftpack.model_card import render_model_card

    note = "ollama:tiny:latest is stored quantized (Q4_K_M): training happens on a dequantized 4-bit model."
    data = StageRecord(status="done", metrics={"template": "ollama:tiny:latest", "records": 3, "ollama_base": {
        "name": "tiny:latest", "digest": "sha256:" + "d" * 64, "quantized": True, "note": note}})
    card = render_model_card(Manifest(path=tmp_path / "build.json", name="x", stages={"data": data}, updated="now",
                                      config={"name": "x", "base": "ollama:tiny", "method": "lora", "quant": "Q4_K_M",
                                              "register": "none", "verify": False}))
    assert f"Base: {note} Blob `sha256:{'d' * 64}`." in card


def _build_offline(run_cli, name: str, base: str, store: Path, tmp_path: Path, *, steps: int = 2):
    """`ftpack build NAME --base BASE` on the tiny model, registered offline into ``store``. The
    random tiny model never ends a turn by itself: extra stop strings it emits early let verify pass."""
    build = tmp_path / "build"
    result = run_cli("build", name, "--base", base, "--data", _dataset(tmp_path / "d.jsonl"),
                     "--method", "lora", "--max-steps", str(steps), "--batch-size", "2", "--lora-r", "4",
                     "--register", "offline", "--models-dir", store, "--out", build,
                     *[x for s in ("e", "a", "o", " ") for x in ("--param", f"stop={s}")])
    assert result.exit_code == 0, result.output
    return result, build


def test_build_on_an_ollama_base_ships_the_merged_model_and_no_adapter(run_cli, store, tiny_blob, tmp_path):
    """`ftpack build my-tiny --base ollama:tiny`: trains in tiny's format and, because Ollama
    0.34.1+ no longer creates models with LoRA adapters (server/create.go@0029bb5), registers
    one merged GGUF: no adapter is built, no ADAPTER line is written, no adapter layer is
    stored. The model is served with tiny's TEMPLATE and SYSTEM, as trained. (The random tiny
    model never ends a turn by itself: extra stop strings it emits early let verify pass.)"""
    put_model(store, "tiny:latest", tiny_blob, template=CUSTOM_TEMPLATE, system="Be brief.",
              params={"stop": CUSTOM_STOPS})
    base = json.loads((store / "manifests/registry.ollama.ai/library/tiny/latest").read_text())
    result, build = _build_offline(run_cli, "my-tiny", "ollama:tiny", store, tmp_path, steps=3)
    assert "no longer create models with LoRA adapters" in " ".join(result.output.split())
    tuned = json.loads((store / "manifests/registry.ollama.ai/library/my-tiny/latest").read_text())

    def layer(manifest, kind):
        return next((x for x in manifest["layers"] if x["mediaType"] == f"application/vnd.ollama.image.{kind}"), None)

    assert layer(tuned, "adapter") is None and layer(tuned, "model")["digest"] != layer(base, "model")["digest"]
    for kind in ("template", "system"):  # served exactly as trained: the base's own texts
        assert layer(tuned, kind)["digest"] == layer(base, kind)["digest"]
    modelfile = (build / "ollama" / "Modelfile").read_text()
    assert "ADAPTER" not in modelfile and "\nTEMPLATE " in modelfile
    assert not list(build.rglob("*.lora.gguf"))  # no adapter built anywhere
    manifest = json.loads((build / "build.json").read_text())
    assert manifest["stages"]["modelfile"]["metrics"]["prompt_path"] == "template"
    assert "adapter" not in manifest["stages"] or manifest["stages"]["adapter"]["status"] != "done"
    record = manifest["stages"]["data"]["metrics"]["ollama_base"]
    assert record["digest"] == layer(base, "model")["digest"] and record["quantized"] is True
    assert "dequantized 4-bit" in (build / "report.md").read_text()


# -- bases Ollama prompts with a built-in RENDERER -------------------------------------------------------

def check_served_prompts(tpl, ob, base: str, served) -> object:
    """For every answer of CONVERSATIONS: the prompt training puts before it is ``served(the
    messages before it)`` — what Ollama sends — and its training ids are llama.cpp's tokens of
    that prompt on the model's own blob. Returns the training tokenizer."""
    from ftpack.inference.runtime import open_llama
    from ftpack.training.bases import load_tokenizer, resolve_base
    from ftpack.training.ollama_format import served_turns

    tokenizer = load_tokenizer(resolve_base(base, tokenizer_only=True).path)
    with open_llama(ob.model_blob, vocab_only=True) as llm:
        for conv in CONVERSATIONS:
            answers = [k for k, m in enumerate(conv) if m["role"] == "assistant"]
            turns = served_turns(tpl, tokenizer, conv)
            assert len(turns) == len(answers)
            for k, (prompt, before) in zip(answers, turns):
                assert prompt == served(conv[:k])
                assert before == llm.tokenize(prompt.encode(), add_bos=True, special=True)
    return tokenizer


RENDERER_CASES = [("qwen3.5", "qwen3.5", "qwen3.5"), ("gemma4", "gemma4", "gemma4-small"),
                  ("nemotron-3-nano", "nemotron-3-nano", "nemotron-3-nano")]


@pytest.mark.parametrize("renderer, parser, resolved", RENDERER_CASES)
def test_a_renderer_model_trains_on_the_prompt_ollama_serves_at_every_turn(store, tiny_blob, renderer, parser,
                                                                          resolved):
    """A library model of the newest families has no TEMPLATE, only ``renderer``/``parser`` in
    its config. Training renders with that renderer in the mode it is served in (think on: the
    parser can think), and for every answer the ids before its first trained token are
    exactly llama.cpp's ids of the prompt Ollama serves at that turn (the renderer's text for
    the messages before it, BOS as the runtime adds it); the trained part is what the renderer
    writes for the model's own answer, and its end of turn."""
    from ftpack.ollama import renderers

    put_model(store, "fam:latest", tiny_blob, config={"renderer": renderer, "parser": parser, "model_type": "4.0B"})
    ob = read_ollama_base("ollama:fam")
    tpl = template_for_ollama_base(ob)
    assert (tpl.ollama_renderer, tpl.ollama_parser, tpl.think) == (resolved, parser, True)
    assert tpl.end_of_turn == renderers.END_OF_TURN[resolved]
    def served(before_answer):  # what Ollama's renderer serves (its textual <bos> dropped for gemma4)
        want = renderers.render(resolved, before_answer, True)
        return want[len("<bos>"):] if resolved.startswith("gemma4") else want

    tokenizer = check_served_prompts(tpl, ob, "ollama:fam", served)
    for conv in CONVERSATIONS:
        for row in encode_conversation(tpl, tokenizer, conv):
            trained = tokenizer.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"]) if m])
            assert trained.endswith(tpl.end_of_turn)
    if resolved == "qwen3.5":  # not prefix-stable: earlier answers lose their think block, one sequence each
        assert len(training_sequences(tpl, CONVERSATIONS[1])) == 2
        text, [(start, end)] = training_sequences(tpl, CONVERSATIONS[0])[0]
        assert text[:start].endswith("<|im_start|>assistant\n<think>\n")
        assert text[start:end] == "\n</think>\n\nParis.<|im_end|>"


def test_a_renderer_ftpack_does_not_reproduce_is_refused_naming_the_supported_ones(store, tiny_blob):
    put_model(store, "glm:latest", tiny_blob, config={"renderer": "glm-4.7", "parser": "glm-4.7"})
    with pytest.raises(FtpackError) as err:
        template_for_ollama_base(read_ollama_base("ollama:glm"))
    assert err.value.code == 2 and "'glm-4.7'" in err.value.message
    assert "qwen3.5" in err.value.hint and "gemma4" in err.value.hint


@pytest.mark.parametrize("renderer, resolved", [("qwen3.5", "qwen3.5"), ("gemma4", "gemma4-small")])
def test_build_on_a_renderer_model_registers_merged_with_its_renderer_and_parser(run_cli, store, tiny_blob,
                                                                                tmp_path, renderer, resolved):
    """A qwen3.5- or gemma4-style base (no TEMPLATE, RENDERER/PARSER in its config): the build
    trains on the renderer's text, checks every turn's served prompt against llama.cpp,
    verifies that the model answers and stops with the served prompt, registers the merged
    GGUF with RENDERER and PARSER kept (no TEMPLATE: it would not be used), and records that
    Ollama prompts it with its renderer path."""
    put_model(store, "fam:latest", tiny_blob, config={"renderer": renderer, "parser": renderer, "requires": "0.30.0",
                                                      "capabilities": ["completion", "thinking"]})
    _, build = _build_offline(run_cli, "fam-qa", "ollama:fam", store, tmp_path)
    manifest = json.loads((build / "build.json").read_text())
    data = manifest["stages"]["data"]["metrics"]
    assert data["tokenization_equal"] and data["tokenization_turns"] >= 6
    assert manifest["stages"]["modelfile"]["metrics"]["prompt_path"] == "renderer"
    assert manifest["stages"]["verify"]["metrics"]["stopped"] is True
    modelfile = (build / "ollama" / "Modelfile").read_text().splitlines()
    assert f"RENDERER {resolved}" in modelfile and f"PARSER {renderer}" in modelfile
    # the rest of the base's config is inherited as Ollama's `from` inherits it
    assert "REQUIRES 0.30.0" in modelfile and "CAPABILITY thinking" in modelfile
    assert not any(line.startswith(("TEMPLATE", "ADAPTER")) for line in modelfile)
    tuned = json.loads((store / "manifests/registry.ollama.ai/library/fam-qa/latest").read_text())
    config = json.loads((store / "blobs" / tuned["config"]["digest"].replace(":", "-")).read_text())
    assert (config["renderer"], config["parser"]) == (resolved, renderer)
    assert config["requires"] == "0.30.0" and config["capabilities"] == ["completion", "thinking"]
    assert not any(x["mediaType"].endswith((".adapter", ".template")) for x in tuned["layers"])


def test_a_template_for_a_gemma4_ollama_base_is_refused(store, tiny_blob):
    """Ollama gives a gemma4 GGUF its built-in renderer at create whatever TEMPLATE is sent
    (server/create.go@0029bb5): --template would train a format the model is not served in."""
    import dataclasses

    put_model(store, "g4:latest", tiny_blob, config={"renderer": "gemma4", "parser": "gemma4"})
    ob = dataclasses.replace(read_ollama_base("ollama:g4"), architecture="gemma4")  # the tiny blob is a llama GGUF
    with pytest.raises(FtpackError) as err:
        template_for_ollama_base(ob, explicit="chatml")
    assert err.value.code == 2 and "'gemma4' renderer" in err.value.message


def test_the_modelfile_stage_sees_the_renderer_ollama_create_would_add(tmp_path):
    """A TEMPLATE sent for a gemma4 GGUF is not what serves it: the prompt-path check counts
    the renderer `ollama create` fills in by architecture and refuses the mismatch."""
    from ollama_double.fixtures import write_tiny_gguf as tiny

    from ftpack.ollama.modelfile import ModelfileSpec, check_prompt_path
    from ftpack.training.templates import load_template

    chatml = load_template("chatml")
    spec = ModelfileSpec(from_path="./m.gguf", template=chatml.ollama_template)
    assert check_prompt_path(spec, tiny(tmp_path / "l.gguf"), chatml)[0] == "template"
    with pytest.raises(FtpackError) as err:
        check_prompt_path(spec, tiny(tmp_path / "g.gguf", arch="gemma4"), chatml)
    assert "renderer path" in err.value.message and "gemma4" in err.value.message


# -- bases without a TEMPLATE: Ollama serves them with the GGUF's own Jinja template ---------------

def test_a_model_without_template_trains_on_its_ggufs_jinja_template_as_llama_cpp_renders_it(store, tiny_blob):
    """No TEMPLATE, no renderer: today's Ollama hands the GGUF's Jinja chat template to
    llama-server (server/routes.go@fb30760 chatModeForModel). Training renders it per turn;
    every served prompt equals llama.cpp's own engine's rendering and, tokenized by llama.cpp,
    the ids before the answer's first trained token."""
    from ftpack.gguf.header import read_gguf_header
    from ftpack.inference.llama_jinja import render_with_llama_cpp
    from ftpack.training.ollama_format import check_llama_cpp_renders_alike

    put_model(store, "jt:latest", tiny_blob)  # like a library model imported without a TEMPLATE layer
    ob = read_ollama_base("ollama:jt")
    tpl = template_for_ollama_base(ob)
    template, bos, eos, add_bos = tpl.gguf_jinja
    assert template == read_gguf_header(tiny_blob).get("tokenizer.chat_template") and "<|im_start|>" in template
    assert tpl.end_of_turn == eos and tpl.renders_ollama and not tpl.ollama_renderer
    check_served_prompts(tpl, ob, "ollama:jt", lambda before_answer: render_with_llama_cpp(
        template, before_answer, bos_token=bos, eos_token=eos, add_bos=add_bos, enable_thinking=False))
    assert check_llama_cpp_renders_alike(tpl, CONVERSATIONS) == 5


def test_a_jinja_template_llama_cpp_renders_differently_is_refused(store, tiny_blob):
    """llama.cpp's engine is not jinja2 (it prints lists its own way): where they differ, the
    build stops with the first difference instead of training on a text Ollama never sends."""
    import dataclasses

    from ftpack.training.ollama_format import check_llama_cpp_renders_alike

    put_model(store, "jt:latest", tiny_blob)
    tpl = template_for_ollama_base(read_ollama_base("ollama:jt"))
    odd = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
           "{% if add_generation_prompt %}<|im_start|>assistant {{ [1, 'a'] }}\n{% endif %}")
    with pytest.raises(FtpackError) as err:
        check_llama_cpp_renders_alike(dataclasses.replace(tpl, gguf_jinja=(odd, *tpl.gguf_jinja[1:])), CONVERSATIONS)
    assert err.value.code == 2 and "renders record 0, answer 1's prompt differently" in err.value.message


def test_build_on_a_model_without_template_serves_the_ggufs_jinja_template(run_cli, store, tiny_blob, tmp_path):
    put_model(store, "jt:latest", tiny_blob)
    result, build = _build_offline(run_cli, "jt-qa", "ollama:jt", store, tmp_path)
    assert "llama.cpp's engine renders all" in " ".join(result.output.split())
    manifest = json.loads((build / "build.json").read_text())
    assert manifest["stages"]["modelfile"]["metrics"]["prompt_path"] == "jinja"
    modelfile = (build / "ollama" / "Modelfile").read_text().splitlines()
    assert not any(line.startswith(("TEMPLATE", "RENDERER", "ADAPTER")) for line in modelfile)
    tuned = json.loads((store / "manifests/registry.ollama.ai/library/jt-qa/latest").read_text())
    assert not any(x["mediaType"].endswith(".template") for x in tuned["layers"])
