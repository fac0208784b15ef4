"""`--ship adapter`: the fine-tune as a llama.cpp LoRA GGUF on the base's own GGUF.

Equivalence (the adapter means what PEFT trained): llama.cpp's logits of base GGUF +
adapter GGUF equal llama.cpp's logits of the merged GGUF (ftpack's converter with the
adapter fused) and transformers' base + PEFT adapter, within the bounds stated below,
for F32 and F16 files; on a Q4_K_M base (what Ollama pulls) the *change* the adapter
makes matches transformers' on the dequantized base. Then the build: stages, what is
registered on servers older than Ollama 0.34.1 (the base's model blob reused, the adapter a
fraction of it), today's servers refusing it before any work, and the refusals before
training. The default ships merged (ftpack.pipeline.resolve_ship).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ollama_double import OllamaDouble
from ollama_double.fixtures import (_render_with_go, llama_generator, old_ollama_double, ollama_double,  # noqa: F401
                                   ollama_models_dir)
from runnable_gguf import tiny_ggufs  # noqa: F401  (fixture)
from test_build_e2e import write_hello_data

MEDIA = "application/vnd.ollama.image."
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = "Hello world, the capital of France is Paris. What is the color of the river? 12345"

#: Stated bounds, max |logit difference| (the tiny model's logits have a std of ~1.3):
#: F32 files: llama.cpp base + adapter vs merged (measured 0.0012), vs transformers (0.0059)
#: F16 files: the same (measured 0.012 and 0.013): F16 rounding of W + BA in the merged file
BOUNDS = {"f32": (0.005, 0.02), "f16": (0.03, 0.03)}


def random_adapter(base: Path, out: Path, *, seed: int = 1, b_std: float = 0.05, **lora_kw) -> Path:
    """A PEFT LoRA adapter with random A and B (an untrained one has B = 0 and proves nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    kw = {"r": 8, "lora_alpha": 16, "target_modules": TARGETS, **lora_kw}
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **kw))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, b_std)
    peft_model.save_pretrained(out)
    return out


def hf_logits(base: Path, adapter: Path | None, ids: list[int]) -> np.ndarray:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy().astype(np.float64)


def cpp_logits(gguf: Path, ids: list[int], lora: Path | None = None) -> np.ndarray:
    from ftpack.inference.runtime import open_llama

    with open_llama(gguf, n_ctx=256, logits_all=True, lora=lora) as llm:
        llm.eval(ids)
        return np.asarray(llm.scores[:len(ids)], dtype=np.float64)


def prompt_ids(base: Path) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)(PROMPT)["input_ids"]


@pytest.fixture(scope="module")
def shipped(tiny_llama, tmp_path_factory) -> dict:
    """The tiny Llama with a random rsLoRA adapter (rank/alpha patterns too): base, merged and adapter
    GGUFs in F32 and F16."""
    from ftpack.gguf.convert import convert_to_gguf
    from ftpack.gguf.lora_gguf import write_lora_gguf

    root = tmp_path_factory.mktemp("shipped")
    adapter = random_adapter(tiny_llama, root / "adapter", use_rslora=True, rank_pattern={"down_proj": 4},
                             alpha_pattern={"o_proj": 8})
    out: dict = {"root": root, "adapter": adapter, "base_dir": tiny_llama}
    for outtype in ("f32", "f16"):
        out[f"base.{outtype}"] = convert_to_gguf(tiny_llama, root / f"base.{outtype}.gguf", outtype=outtype).path
        out[f"merged.{outtype}"] = convert_to_gguf(tiny_llama, root / f"merged.{outtype}.gguf", outtype=outtype,
                                                   adapter_dir=adapter).path
        out[f"lora.{outtype}"] = write_lora_gguf(adapter, root / f"lora.{outtype}.gguf", base_dir=tiny_llama,
                                                 base_gguf=out[f"base.{outtype}"], outtype=outtype).path
    return out


# -- the file ---------------------------------------------------------------------------------

def test_adapter_gguf_is_llama_cpps_lora_format(shipped):
    from gguf import GGUFReader
    from safetensors.numpy import load_file

    from ftpack.gguf.convert import permute_rope_rows

    reader = GGUFReader(str(shipped["lora.f32"]))
    field = lambda k: reader.fields[k].contents()  # noqa: E731
    assert field("general.type") == "adapter" and field("general.architecture") == "llama"
    assert field("adapter.type") == "lora"
    assert reader.fields["adapter.lora.alpha"].types[0].name == "FLOAT32"
    # rsLoRA: PEFT's scaling is alpha / sqrt(r) = 16 / sqrt(8); llama.cpp's is alpha' / r
    assert field("adapter.lora.alpha") == pytest.approx(16 / 8 ** 0.5 * 8, rel=1e-6)
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 * 2 * len(TARGETS)  # 2 layers, 7 modules, lora_a + lora_b
    peft = load_file(shipped["adapter"] / "adapter_model.safetensors")
    key = "base_model.model.model.layers.1.self_attn.{}.lora_{}.weight"
    for module, gguf_name, heads in (("q_proj", "attn_q", 4), ("k_proj", "attn_k", 2), ("v_proj", "attn_v", None)):
        a, b = tensors[f"blk.1.{gguf_name}.weight.lora_a"], tensors[f"blk.1.{gguf_name}.weight.lora_b"]
        pa, pb = peft[key.format(module, "A")], peft[key.format(module, "B")]
        assert list(a.shape) == [pa.shape[1], pa.shape[0]]  # ggml ne = [n_in, r]
        assert list(b.shape) == [pb.shape[1], pb.shape[0]]  # ggml ne = [r, n_out]
        np.testing.assert_array_equal(a.data, pa)  # PEFT's A as it is
        expected_b = permute_rope_rows(pb, heads) if heads else pb  # q/k rows in llama.cpp's rope order
        np.testing.assert_array_equal(b.data, expected_b)
        if heads:
            assert not np.array_equal(b.data, pb)
    # down_proj has its own rank (4) and o_proj its own alpha: folded into lora_b
    assert list(tensors["blk.0.ffn_down.weight.lora_b"].shape)[0] == 4
    o_b = tensors["blk.0.attn_output.weight.lora_b"].data
    scale_o, scale_all = 8 / 8 ** 0.5, 16 / 8 ** 0.5
    np.testing.assert_allclose(o_b, peft[key.replace("1.", "0.").format("o_proj", "B")] * scale_o / scale_all,
                               rtol=1e-6)


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_base_plus_adapter_equals_merged_and_transformers(shipped, outtype):
    ids = prompt_ids(shipped["base_dir"])
    with_adapter = cpp_logits(shipped[f"base.{outtype}"], ids, lora=shipped[f"lora.{outtype}"])
    merged = cpp_logits(shipped[f"merged.{outtype}"], ids)
    reference = hf_logits(shipped["base_dir"], shipped["adapter"], ids)
    base_only = cpp_logits(shipped[f"base.{outtype}"], ids)
    vs_merged, vs_hf = BOUNDS[outtype]
    assert np.abs(with_adapter - merged).max() <= vs_merged
    assert np.abs(with_adapter - reference).max() <= vs_hf
    assert np.abs(base_only - reference).max() > 50 * vs_hf  # the adapter really changes the model
    # the most likely next token agrees wherever it is not a near tie (top-2 gap above twice the bound)
    top2 = np.sort(reference, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 2 * vs_hf
    assert decided.sum() >= 0.8 * len(ids)
    assert (with_adapter.argmax(1) == reference.argmax(1))[decided].all()
    assert (with_adapter.argmax(1) == merged.argmax(1))[decided].all()


def test_on_a_q4_base_the_adapter_changes_what_transformers_changes(shipped, tmp_path):
    """Ollama's bases are quantized: training sees the dequantized GGUF; llama.cpp runs the
    Q4_K_M file, quantizing activations to 8 bits in its matmuls, so even the base alone
    differs from transformers (measured: max 0.218). The adapter adds nothing to that
    (with it: 0.219; bound: 1.25 x the base's + 0.02), and its effect (logits with minus
    without it, up to 5.9) agrees to 4.8% (relative Frobenius norm; bound 10%)."""
    from ftpack.gguf.lora_gguf import write_lora_gguf
    from ftpack.gguf.quantize import quantize_gguf
    from ftpack.training.bases import materialise_gguf

    q4 = quantize_gguf(shipped["base.f16"], tmp_path / "base.Q4_K_M.gguf", "Q4_K_M").path
    dequantized = materialise_gguf(q4, cache_dir=tmp_path / "cache")
    lora = write_lora_gguf(shipped["adapter"], tmp_path / "lora.gguf", base_dir=dequantized, base_gguf=q4).path
    ids = prompt_ids(shipped["base_dir"])
    cpp_with, cpp_base = cpp_logits(q4, ids, lora=lora), cpp_logits(q4, ids)
    hf_with, hf_base = hf_logits(dequantized, shipped["adapter"], ids), hf_logits(dequantized, None, ids)
    floor = np.abs(cpp_base - hf_base).max()
    assert np.abs(cpp_with - hf_with).max() <= 1.25 * floor + 0.02
    cpp_effect, hf_effect = cpp_with - cpp_base, hf_with - hf_base
    assert np.abs(hf_effect).max() > 1.0
    assert np.linalg.norm(cpp_effect - hf_effect) <= 0.1 * np.linalg.norm(hf_effect)


def test_loading_an_adapter_is_quiet_unless_debug(shipped, tmp_path, capfd, monkeypatch):
    """llama.cpp logs one line per adapted tensor when the base is repacked for the CPU (quantized
    bases): hidden like the rest of its log unless --debug."""
    from ftpack.gguf.lora_gguf import write_lora_gguf
    from ftpack.gguf.quantize import quantize_gguf
    from ftpack.inference.runtime import open_llama

    q4 = quantize_gguf(shipped["base.f16"], tmp_path / "q4.gguf", "Q4_K_M").path
    lora = write_lora_gguf(shipped["adapter"], tmp_path / "lora.gguf", base_dir=shipped["base_dir"], base_gguf=q4).path
    capfd.readouterr()
    with open_llama(q4, n_ctx=64, lora=lora):
        pass
    assert "lora" not in capfd.readouterr().err
    monkeypatch.setenv("FTPACK_DEBUG", "1")
    with open_llama(q4, n_ctx=64, lora=lora):
        pass
    assert "llama_adapter_lora_init_impl" in capfd.readouterr().err


def test_dora_and_other_inexpressible_adapters_are_refused(tiny_llama, tmp_path):
    from ftpack.core.errors import FtpackError
    from ftpack.gguf.lora_gguf import write_lora_gguf

    dora = random_adapter(tiny_llama, tmp_path / "dora", use_dora=True)
    with pytest.raises(FtpackError) as info:
        write_lora_gguf(dora, tmp_path / "x.gguf", base_dir=tiny_llama)
    assert "DoRA" in info.value.message and "--ship merged" in info.value.hint
    saved = random_adapter(tiny_llama, tmp_path / "saved", target_modules=["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(FtpackError) as info:
        write_lora_gguf(saved, tmp_path / "y.gguf", base_dir=tiny_llama)
    assert "modules_to_save" in info.value.message
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "y.gguf").exists()


def test_adapter_for_another_base_is_refused(shipped, tmp_path):
    from ftpack.core.errors import FtpackError
    from ftpack.gguf.convert import convert_to_gguf
    from ftpack.gguf.lora_gguf import write_lora_gguf
    from tiny_model import build_tiny_llama

    other_dir = build_tiny_llama(tmp_path / "wide", hidden=128, intermediate=256)
    other = convert_to_gguf(other_dir, tmp_path / "wide.gguf").path
    with pytest.raises(FtpackError) as info:
        write_lora_gguf(shipped["adapter"], tmp_path / "z.gguf", base_dir=shipped["base_dir"], base_gguf=other)
    assert "does not fit" in info.value.message


def test_fast_header_reader_agrees_with_gguf_py(shipped, tiny_ggufs, tmp_path):
    """The header reader the store writer, the LoRA check and `ftpack inspect` use (milliseconds
    instead of gguf-py's seconds on a real tokenizer) sees the same scalars, arrays, tensor shapes,
    types and offsets as gguf-py's GGUFReader."""
    import math

    from gguf import GGUFReader

    from ftpack.core.errors import FtpackError
    from ftpack.gguf.header import read_gguf_header

    for path in (shipped["base.f16"], shipped["lora.f32"], tiny_ggufs["Q4_K_M"]):
        reader = GGUFReader(str(path))
        arrays = {k: f for k, f in reader.fields.items() if f.types[0].name == "ARRAY"}
        assert "tokenizer.ggml.tokens" in arrays or path == shipped["lora.f32"]
        header = read_gguf_header(path, arrays=tuple(arrays))
        assert header.tensors == {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}
        assert header.tensor_types == {t.name: int(t.tensor_type) for t in reader.tensors}
        assert {n: header.data_start + o for n, o in header.tensor_offsets.items()} == \
            {t.name: int(t.data_offset) for t in reader.tensors}
        assert header.arrays == {k: f.contents() for k, f in arrays.items()}
        short = read_gguf_header(path)  # without asking: only the short arrays
        assert short.arrays == {k: f.contents() for k, f in arrays.items() if len(f.data) <= 4096}
        scalars = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.") and f.types[0].name != "ARRAY"}
        assert set(header.scalars) == set(scalars)
        for key, f in scalars.items():
            kind, value = header.scalars[key]
            assert kind == f.types[0].name
            assert value == f.contents() or math.isclose(value, f.contents(), rel_tol=1e-7)
        assert header.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(shipped["base.f16"].read_bytes()[:2000])
    with pytest.raises(FtpackError, match="not a readable GGUF"):
        read_gguf_header(cut)


# -- refused before training ----------------------------------------------------------------------

@pytest.mark.parametrize("flags, says", [(["--dora"], "DoRA"), (["--method", "full"], "no adapter to ship")])
def test_ship_adapter_refuses_what_it_cannot_ship_before_training(run_cli, tiny_llama, tmp_path, flags, says):
    data = write_hello_data(tmp_path / "hello.jsonl")
    out = tmp_path / "build"
    result = run_cli("build", "x", "--base", tiny_llama, "--data", data, "--out", out, "--ship", "adapter",
                     "--register", "none", *flags)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert says in said and "--ship merged" in said
    assert not (out / "train").exists()


def test_ship_auto_is_merged_for_every_base(tiny_llama):
    """Ollama 0.34.1+ refuses to create models with LoRA adapters (server/create.go@0029bb5):
    auto ships one merged GGUF, also for a base that comes from Ollama; adapter only when asked."""
    from ftpack.pipeline import resolve_ship
    from ftpack.settings import build_config

    assert resolve_ship(build_config("x", {"base": str(tiny_llama)}), "lora")[0] == "merged"
    cfg = build_config("x", {})
    cfg.base = "ollama:llama3.2"
    ship, why = resolve_ship(cfg, "lora")
    assert ship == "merged" and "no longer create models with LoRA adapters" in why and "0029bb5" in why
    cfg.ship = "adapter"
    assert resolve_ship(cfg, "lora")[0] == "adapter"


# -- the build ------------------------------------------------------------------------------------

ADAPTER_STAGES = ["data", "train", "base", "adapter", "verify", "modelfile", "register", "roundtrip", "report"]


def _build(run_cli, name: str, base: Path, data: Path, out: Path, *extra: str):
    return run_cli("--json", "build", name, "--base", base, "--data", data, "--out", out, "--method", "lora",
                   "--max-steps", "30", "--learning-rate", "5e-3", "--max-seq-length", "64",
                   "--per-device-train-batch-size", "4", "--ship", "adapter", "--template", "chatml", *extra)


def _events(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _statuses(output: str) -> dict[str, str]:
    return {e["stage"]: e["status"] for e in _events(output) if e["event"] == "stage_end"}


def _manifest(store: Path, name: str) -> dict:
    return json.loads((store / "manifests" / "registry.ollama.ai" / "library" / name / "latest").read_bytes())


def _blob(store: Path, digest: str) -> Path:
    return store / "blobs" / digest.replace(":", "-")


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory) -> dict:
    """One adapter build on the tiny Llama (a Hugging Face folder: its base is converted and
    quantized to Q4_K_M by the build), trained once, not registered (tests copy it and register
    it in different ways)."""
    from click.testing import CliRunner

    from ftpack.cli import cli

    root = tmp_path_factory.mktemp("trained")
    data = write_hello_data(root / "hello.jsonl")
    out = root / "build"
    args = ["--json", "build", "tiny-ad", "--base", str(tiny_llama), "--data", str(data), "--out", str(out),
            "--method", "lora", "--max-steps", "30", "--learning-rate", "5e-3", "--max-seq-length", "64",
            "--per-device-train-batch-size", "4", "--ship", "adapter", "--template", "chatml", "--register", "none"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {"build": out, "data": data, "base": tiny_llama, "output": result.output}


def _copy(trained: dict, tmp_path: Path) -> Path:
    out = tmp_path / "build"
    shutil.copytree(trained["build"], out)
    return out


def test_adapter_build_stages_and_files(trained):
    from ftpack.core.manifest import Manifest

    st = _statuses(trained["output"])
    assert st == {s: "done" for s in ADAPTER_STAGES if s not in ("register", "roundtrip")}
    m = Manifest.load(trained["build"])
    assert "convert" not in m.stages and "quantize" not in m.stages
    base = m.stages["base"].metrics
    assert base == {"source": "converted", "model": "tiny-ad-base:latest", "gguf": "gguf/tiny-ad.base.Q4_K_M.gguf",
                    "sha256": base["sha256"], "bytes": (trained["build"] / base["gguf"]).stat().st_size,
                    "file_type": "Q4_K_M", "architecture": "llama"}
    assert not (trained["build"] / "gguf" / "tiny-ad.base.f16.gguf").exists()  # the intermediate is gone
    adapter = trained["build"] / m.stages["adapter"].main_output
    assert adapter.name == "tiny-ad.lora.gguf"
    assert m.stages["adapter"].metrics["bytes"] == adapter.stat().st_size
    verify = m.stages["verify"].metrics
    assert verify["stopped"] and verify["fidelity"] is None and "adapter build" in verify["fidelity_note"]
    mf = (trained["build"] / "ollama" / "Modelfile").read_text()
    assert "\nFROM tiny-ad-base:latest\n" in mf and "\nADAPTER ../gguf/tiny-ad.lora.gguf\n" in mf
    assert m.config["ship"] == "adapter"
    # `ftpack verify BUILD` and `ftpack chat BUILD` run the base GGUF + the adapter too
    from ftpack.core.report import Reporter
    from ftpack.inference.chat import resolve_target
    from ftpack.inference.verify import verify_target

    target = resolve_target(trained["build"])
    assert target.gguf == trained["build"] / base["gguf"] and target.adapter == adapter
    report = verify_target(trained["build"], reporter=Reporter("quiet"))
    assert report.stopped and report.gguf.endswith(" + " + str(adapter)) and report.fidelity is None


def test_adapter_build_registers_on_the_bases_blob(trained, run_cli, old_ollama_double, ollama_models_dir, tmp_path):
    """--ship adapter on a server that still creates adapter models (Ollama before 0.34.1)."""
    ollama_double = old_ollama_double
    from ftpack.core.atomic import sha256_file
    from ftpack.core.manifest import Manifest
    from ftpack.training.templates import load_template

    out = _copy(trained, tmp_path)
    result = _build(run_cli, "tiny-ad", trained["base"], trained["data"], out, "--register", "server")
    assert result.exit_code == 0, result.output
    st = _statuses(result.stdout)
    assert st["register"] == st["roundtrip"] == "done" and st["train"] == "skipped"

    base_file = out / "gguf" / "tiny-ad.base.Q4_K_M.gguf"
    base_digest = "sha256:" + sha256_file(base_file)
    adapter_file = out / "gguf" / "tiny-ad.lora.gguf"
    adapter_digest = "sha256:" + sha256_file(adapter_file)
    model, base = _manifest(ollama_models_dir, "tiny-ad"), _manifest(ollama_models_dir, "tiny-ad-base")
    kinds = [x["mediaType"].removeprefix(MEDIA) for x in model["layers"]]
    assert kinds == ["model", "adapter", "template", "params"]
    assert model["layers"][0] == {"mediaType": MEDIA + "model", "digest": base_digest,
                                  "size": base_file.stat().st_size, "from": "tiny-ad-base:latest"}
    assert base["layers"][0]["digest"] == base_digest  # the same blob: stored once
    assert model["layers"][1] == {"mediaType": MEDIA + "adapter", "digest": adapter_digest,
                                  "size": adapter_file.stat().st_size, "from": "tiny-ad.lora.gguf"}
    # the adapter is a fraction of the base: 313,600 of 1,144,352 bytes (27%) for this tiny model (hidden 256,
    # rank 16 on every projection); SmolLM2-135M: see benchmarks/ship_size.py
    assert adapter_file.stat().st_size < 0.3 * base_file.stat().st_size
    chatml = load_template("chatml")
    assert _blob(ollama_models_dir, model["layers"][2]["digest"]).read_text() == chatml.ollama_template
    params = json.loads(_blob(ollama_models_dir, model["layers"][3]["digest"]).read_bytes())
    assert params["stop"] == list(chatml.stop)
    # HEAD before each upload; the base blob went up once (with the base), the adapter model sent only the adapter
    blob_calls = [c for c in ollama_double.requests if c[1].startswith("/api/blobs/")]
    assert blob_calls == [("HEAD", f"/api/blobs/{base_digest}"), ("POST", f"/api/blobs/{base_digest}"),
                          ("HEAD", f"/api/blobs/{adapter_digest}"), ("POST", f"/api/blobs/{adapter_digest}")]
    reg = Manifest.load(out).stages["register"].metrics
    assert reg["shipped"] == "adapter" and reg["base"] == "registered by this build"
    assert reg["model_digest"] == base_digest and reg["adapter_bytes"] == adapter_file.stat().st_size
    assert reg["uploaded_bytes"] == adapter_file.stat().st_size
    assert reg["base_uploaded_bytes"] == base_file.stat().st_size
    # the round trip went through the double's /api/chat, which applies the ADAPTER layer as Ollama does
    rt = Manifest.load(out).stages["roundtrip"].metrics
    assert rt["ollama_answer"].startswith("Hello, ")

    # registering again (a rebuild from the register stage on) reuses the base: nothing but the adapter is sent
    posts = sum(1 for c in ollama_double.requests if c[0] == "POST" and c[1].startswith("/api/blobs/"))
    again = _build(run_cli, "tiny-ad", trained["base"], trained["data"], out, "--register", "server",
                   "--force", "register")
    assert again.exit_code == 0, again.output
    assert Manifest.load(out).stages["register"].metrics["base"] == "already registered"
    assert sum(1 for c in ollama_double.requests if c[0] == "POST" and c[1].startswith("/api/blobs/")) == posts


def test_adapter_build_offline_and_list_remove(trained, run_cli, tmp_path):
    out = _copy(trained, tmp_path)
    store = tmp_path / "store"
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(json.dumps({"question": "Say hello to Zed.", "keywords": ["Hello"]}) + "\n")
    result = _build(run_cli, "tiny-ad", trained["base"], trained["data"], out, "--register", "offline",
                    "--models-dir", store, "--heldout", heldout)
    assert result.exit_code == 0, result.output
    card = (out / "report.md").read_text()
    assert "shipped as a LoRA adapter on the base's own Q4_K_M GGUF" in card and "## Shipped as an adapter" in card
    assert "## Quantization" not in card and "as an adapter (" in card
    # held-out questions: asked of the base GGUF + the adapter, and of the same base GGUF without it
    from ftpack.core.manifest import Manifest

    asked = Manifest.load(out).stages["report"].metrics["heldout"]
    assert asked["tuned_correct"] == 1 and asked["base"].startswith("the base GGUF the adapter is shipped on")
    model = _manifest(store, "tiny-ad")
    assert model["layers"][0]["digest"] == _manifest(store, "tiny-ad-base")["layers"][0]["digest"]

    listed = run_cli("--json", "list", "--offline", "--models-dir", store)
    data = next(json.loads(x)["data"] for x in listed.output.splitlines() if '"result"' in x)
    rows = {m["name"]: m for m in data["models"]}
    assert rows["tiny-ad:latest"]["shipped"] == "adapter" and rows["tiny-ad:latest"]["base_model"] == "tiny-ad-base:latest"
    assert rows["tiny-ad:latest"]["own_size"] == (out / "gguf" / "tiny-ad.lora.gguf").stat().st_size
    assert rows["tiny-ad-base:latest"]["shipped"] == "gguf" and rows["tiny-ad-base:latest"]["role"] == "base"
    table = run_cli("list", "--offline", "--models-dir", store)
    assert "adapter" in table.output and "tiny-ad-base" in table.output

    refused = run_cli("remove", "tiny-ad-base", "--offline", "--models-dir", store, "--force")
    assert refused.exit_code == 2 and "tiny-ad:latest" in refused.output and "base of 1 other model" in refused.output
    base_blob = _blob(store, model["layers"][0]["digest"])
    assert run_cli("remove", "tiny-ad", "--offline", "--models-dir", store).exit_code == 0
    assert base_blob.exists()  # the base still uses it
    assert run_cli("remove", "tiny-ad-base", "--offline", "--models-dir", store).exit_code == 0
    assert not base_blob.exists()


def test_ship_adapter_to_todays_server_stops_before_any_work(trained, run_cli, tmp_path, monkeypatch):
    """Today's server refuses adapters: --ship adapter asks it first (a side-effect-free probe)
    and stops with exit 2 before training or converting anything; nothing is registered."""
    store = tmp_path / "server-store"
    double = OllamaDouble(store).start()  # today's release: adapters refused
    monkeypatch.setenv("OLLAMA_HOST", double.url)
    try:
        out = tmp_path / "fresh-build"
        result = _build(run_cli, "tiny-ad", trained["base"], trained["data"], out, "--register", "server")
    finally:
        double.stop()
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "LoRA adapters are no longer supported" in said and "--ship merged" in said
    assert not (out / "train").exists() and not any(p.startswith("/api/blobs/") for _, p in double.requests)
    assert not (store / "manifests" / "registry.ollama.ai" / "library" / "tiny-ad").exists()


def test_a_server_that_fails_the_adapter_model_leaves_nothing_registered(trained, run_cli, tmp_path, monkeypatch):
    """An older server takes the probe but fails to create the adapter model: a clear error, and
    the base this build registered for it is removed again."""
    store = tmp_path / "server-store"
    generator = llama_generator()
    double = OllamaDouble(store, version="0.32.15", renderer=_render_with_go, generator=generator,
                          adapters="fail").start()
    monkeypatch.setenv("OLLAMA_HOST", double.url)
    try:
        out = _copy(trained, tmp_path)
        result = _build(run_cli, "tiny-ad", trained["base"], trained["data"], out, "--register", "server")
    finally:
        double.stop()
        generator.close()
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "nothing was registered" in said and "--ship merged" in said
    library = store / "manifests" / "registry.ollama.ai" / "library"
    assert not (library / "tiny-ad").exists() and not (library / "tiny-ad-base").exists()


def test_adapter_build_offline_warns_that_todays_ollama_cannot_create_it(trained, run_cli, tmp_path):
    out = _copy(trained, tmp_path)
    result = _build(run_cli, "tiny-ad", trained["base"], trained["data"], out, "--register", "offline",
                    "--models-dir", tmp_path / "store")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "Ollama 0.34.1 and later cannot create models with a LoRA adapter" in said


# -- the base stage for GGUF and Ollama bases (no training needed) -------------------------------------

def _base_stage(tmp_path: Path, cfg_values: dict, *, source: str, base: str, trained_sha: str | None = None):
    from ftpack.core.manifest import Manifest, StageRecord
    from ftpack.core.report import Reporter
    from ftpack.core.runner import StageContext
    from ftpack.gguf.ship import run_base_stage
    from ftpack.settings import build_config

    build_dir = tmp_path / "build"
    folder = tmp_path / "materialised"
    folder.mkdir(exist_ok=True)
    if trained_sha:
        (folder / "ftpack-source.json").write_text(json.dumps({"source": "x", "sha256": trained_sha}))
    info = build_dir / "train" / "train_info.json"
    info.parent.mkdir(parents=True, exist_ok=True)
    info.write_text(json.dumps({"method": "lora", "base": base, "base_path": str(folder), "base_source": source}))
    manifest = Manifest.load(build_dir)
    manifest.stages["train"] = StageRecord(status="done", main_output="train/adapter", metrics={"method": "lora"})
    cfg = build_config("demo", {"ship": "adapter", **cfg_values})
    ctx = StageContext(config=cfg, build_dir=build_dir, stage="base", manifest=manifest, reporter=Reporter("quiet"))
    return run_base_stage(ctx)


def test_base_stage_uses_a_gguf_base_as_it_is(shipped, tmp_path):
    from ftpack.core.atomic import sha256_file

    gguf = shipped["base.f16"]
    res = _base_stage(tmp_path, {"ollama_base": "team/tiny-base:v1"}, source="gguf", base=str(gguf))
    assert res.metrics == {"source": "gguf", "model": "team/tiny-base:v1", "gguf": str(gguf),
                           "sha256": sha256_file(gguf), "bytes": gguf.stat().st_size, "file_type": "F16",
                           "architecture": "llama"}
    assert res.outputs == [res.main_output]  # nothing converted, nothing copied


def test_base_stage_uses_the_ollama_models_own_blob(shipped, tmp_path):
    from ftpack.core.atomic import sha256_file
    from ftpack.core.errors import FtpackError
    from ftpack.core.report import Reporter
    from ftpack.ollama.request import RegistrationRequest
    from ftpack.ollama.store import write_model

    store = tmp_path / "store"
    gguf = shipped["base.f16"]
    write_model(store, "tiny", RegistrationRequest(model_path=gguf), reporter=Reporter("quiet"))
    sha = sha256_file(gguf)
    res = _base_stage(tmp_path, {"base": "ollama:tiny", "models_dir": str(store)}, source="ollama",
                      base="ollama:tiny", trained_sha=sha)
    assert res.metrics["source"] == "ollama" and res.metrics["model"] == "tiny:latest"
    assert res.metrics["gguf"] == str(store / "blobs" / f"sha256-{sha}") and res.metrics["sha256"] == sha
    with pytest.raises(FtpackError) as info:  # the model was re-pulled since training: its blob changed
        _base_stage(tmp_path, {"base": "ollama:tiny", "models_dir": str(store)}, source="ollama",
                    base="ollama:tiny", trained_sha="0" * 64)
    assert "changed since training" in info.value.message and "--force train" in info.value.hint


# -- the two-line story: a model already in Ollama, tuned and shipped as an adapter on it -------------

def test_build_on_an_ollama_model_ships_an_adapter_on_its_blob(run_cli, old_ollama_double, ollama_models_dir,
                                                               tiny_ggufs, tmp_path, monkeypatch):
    """`ftpack build my-x --base ollama:tiny --ship adapter` to a server older than 0.34.1: the new
    model's layers are tiny's own model
    blob (same digest, not uploaded), the adapter (27% of the Q4_K_M base for this tiny model,
    hidden 256 at rank 16; ~3% for a 1B Llama: benchmarks/ship_size.py), and tiny's template and stops."""
    from ftpack.core.manifest import Manifest
    from ftpack.training.templates import load_template
    from test_ollama_base import put_model

    monkeypatch.setenv("FTPACK_CACHE", str(tmp_path / "cache"))
    chatml = load_template("chatml")
    put_model(ollama_models_dir, "tiny:latest", tiny_ggufs["Q4_K_M"], template=chatml.ollama_template,
              params={"stop": list(chatml.stop), "temperature": 0.6})
    base = _manifest(ollama_models_dir, "tiny")
    data = write_hello_data(tmp_path / "hello.jsonl")
    out = tmp_path / "build"
    result = run_cli("--json", "build", "my-tiny", "--base", "ollama:tiny", "--data", data, "--out", out,
                     "--method", "lora", "--max-steps", "30", "--learning-rate", "5e-3", "--max-seq-length", "64",
                     "--per-device-train-batch-size", "4", "--register", "server", "--ship", "adapter")
    assert result.exit_code == 0, result.output
    assert _statuses(result.stdout) == {s: "done" for s in ADAPTER_STAGES}
    assert any("ship: adapter (as asked" in e.get("message", "") for e in _events(result.stdout))

    model = _manifest(ollama_models_dir, "my-tiny")
    assert [x["mediaType"].removeprefix(MEDIA) for x in model["layers"]] == ["model", "adapter", "template", "params"]
    assert model["layers"][0] == {**base["layers"][0], "from": "tiny:latest"}  # tiny's own blob, by digest
    adapter = out / "gguf" / "my-tiny.lora.gguf"
    assert model["layers"][1]["size"] == adapter.stat().st_size < 0.3 * base["layers"][0]["size"]
    assert _blob(ollama_models_dir, model["layers"][2]["digest"]).read_bytes() == \
        _blob(ollama_models_dir, base["layers"][1]["digest"]).read_bytes()  # the base's TEMPLATE, as trained
    params = json.loads(_blob(ollama_models_dir, model["layers"][3]["digest"]).read_bytes())
    assert params["stop"] == list(chatml.stop) and params["temperature"] == 0.6  # Ollama keeps the base's others
    posts = [p for m, p in old_ollama_double.requests if m == "POST" and p.startswith("/api/blobs/")]
    assert posts == ["/api/blobs/" + model["layers"][1]["digest"]]  # only the adapter travelled
    reg = Manifest.load(out).stages["register"].metrics
    assert reg["shipped"] == "adapter" and reg["base"] == "pulled into Ollama" and reg["base_source"] == "ollama"
    assert reg["model_digest"] == base["layers"][0]["digest"]
    assert Manifest.load(out).stages["roundtrip"].metrics["ollama_answer"].startswith("Hello, ")


# -- SmolLM2-135M (slow) ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_adapter_in_a_test_store_equals_merged_and_transformers(smollm2_base, tmp_path):
    """SmolLM2-135M-Instruct with a random rank-16 adapter on every projection (9.8 MB as F16).

    F16 base GGUF + adapter GGUF vs the merged F16 GGUF and vs transformers base + adapter
    (logits std 6.2): measured max |difference| 0.070 and 0.051; bounds 0.15 and 0.1; the
    same top-1 token everywhere. The embedded Q4_1 GGUF (what a user pulls) is put into a
    test store and the adapter registered FROM it offline; llama.cpp on the stored blobs
    differs from transformers by no more than 1.5x what the Q4_1 base alone does (llama.cpp
    quantizes activations in its matmuls; measured 1.16 with vs 1.19 without the adapter).
    The adapter (B ~ N(0, 0.03)) moves the logits by 5.2 at most: over 10x the F16 bounds and
    over 2x the Q4_1 one, so a dropped adapter fails each comparison (with B ~ N(0, 0.01) its
    effect, 1.6, was within the Q4_1 bound).
    """
    import dataclasses

    from ftpack.core.report import Reporter
    from ftpack.gguf.convert import convert_to_gguf
    from ftpack.gguf.lora_gguf import write_lora_gguf
    from ftpack.ollama.modelfile import build_spec, write_modelfile
    from ftpack.ollama.registration import register, register_request
    from ftpack.ollama.request import RegistrationRequest
    from ftpack.training.bases import embedded_gguf_path

    adapter = random_adapter(smollm2_base, tmp_path / "adapter", r=16, lora_alpha=32, b_std=0.03)
    base = convert_to_gguf(smollm2_base, tmp_path / "base.f16.gguf", outtype="f16").path
    merged = convert_to_gguf(smollm2_base, tmp_path / "merged.f16.gguf", outtype="f16", adapter_dir=adapter).path
    lora = write_lora_gguf(adapter, tmp_path / "lora.f16.gguf", base_dir=smollm2_base, base_gguf=base).path
    ids = prompt_ids(smollm2_base)
    with_adapter = cpp_logits(base, ids, lora=lora)
    reference = hf_logits(smollm2_base, adapter, ids)
    base_only = hf_logits(smollm2_base, None, ids)
    effect = np.abs(reference - base_only).max()
    # the adapter moves the logits far beyond every bound below: a dropped adapter fails them all
    assert effect > 10 * 0.15, effect
    assert np.abs(with_adapter - cpp_logits(merged, ids)).max() <= 0.15
    assert np.abs(with_adapter - reference).max() <= 0.1
    assert (with_adapter.argmax(1) == reference.argmax(1)).all()

    store = tmp_path / "store"
    quiet = Reporter("quiet")
    register_request("smollm2", RegistrationRequest(model_path=embedded_gguf_path()), mode="offline",
                     models_dir=store, reporter=quiet)
    q41 = write_lora_gguf(adapter, tmp_path / "lora.q41.gguf", base_dir=smollm2_base,
                          base_gguf=embedded_gguf_path()).path
    mf = tmp_path / "tuned" / "Modelfile"
    mf.parent.mkdir()
    spec = build_spec(q41, mf, template_name="chatml", adapter=q41)
    write_modelfile(mf, dataclasses.replace(spec, from_path="smollm2"))
    result = register("smol-tuned", mf, mode="offline", models_dir=store, reporter=quiet)
    model = _manifest(store, "smol-tuned")
    assert model["layers"][0]["digest"] == _manifest(store, "smollm2")["layers"][0]["digest"] == result.model_digest
    assert result.uploaded_bytes == q41.stat().st_size < 0.15 * embedded_gguf_path().stat().st_size
    stored_base, stored_adapter = _blob(store, model["layers"][0]["digest"]), _blob(store, model["layers"][1]["digest"])
    floor = np.abs(cpp_logits(stored_base, ids) - base_only).max()
    print(f"effect {effect:.3f} floor {floor:.3f} stored {np.abs(cpp_logits(stored_base, ids, lora=stored_adapter) - reference).max():.3f}")
    assert effect > 2 * 1.5 * floor, (effect, floor)
    assert np.abs(cpp_logits(stored_base, ids, lora=stored_adapter) - reference).max() <= 1.5 * floor
