"""Every architecture ftpack offers, proven per architecture (issue 11).

For each case of tests/tiny_archs.py (llama with Llama-2's SentencePiece vocabulary, llama
with Llama-3's BPE vocabulary and rope scaling, mistral, qwen2, qwen3, gemma2, gemma3,
phi3, gemma4 with Gemma 4's real vocabulary and its Ollama renderer): ``ftpack build --method lora --max-steps 4 --no-register`` runs data, train,
convert and quantize to Q4_K_M, and the F16 GGUF run by llama.cpp gives the logits of
transformers' base model with the trained adapter (top-1 agreement 100%, max |diff| under
F16_BOUND), on ids both tokenizers agree on. The adapter is trained hard enough (lr 2e-2)
that it moves the logits by far more than the bound, so a dropped adapter would fail. The
Q4_K_M the build ships is loaded and run too: finite logits, and its next-token choices agree
with the F16 file's above a measured floor (Q4_TOP1_FLOOR).

Also: an unsupported architecture stops the build at config load (exit 2) before any
training output exists and without importing torch, and every alias of the alias table
passes the architecture check.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import torch
import llama_cpp

from test_build_e2e import write_hello_data
from tiny_archs import CASES, ArchCase, build_tiny_model

#: max |logit difference| llama.cpp F16 vs transformers fp32 (base + adapter) on the tiny models.
#: Measured: llama 0.0021, llama3 0.0021, mistral 0.0024, qwen2 0.0019, qwen3 0.0042; gemma2 0.0030
#: and gemma3 0.0038 with the KNOWN_DEFECTS fixed by hand; gemma4 0.0123 (final logit softcapping,
#: per-layer embeddings, proportional rope) (top-1 100% everywhere).
F16_BOUND = 0.02
#: the adapter must move the logits by more than this (else the comparison proves nothing);
#: measured 3.4-4.5 after 4 steps at lr 2e-2
ADAPTER_EFFECT = 0.5
#: top-1 agreement of the shipped Q4_K_M with the F16 GGUF, both run by llama.cpp, on PROBE's
#: positions (29-59 of them). Random tiny models are a hard case for 4 bits (their logits are
#: nearly flat, so small errors swap the top token; 64-wide rows are a quarter of a Q4_K
#: super-block). Measured (llama-cpp-python 0.3.36, this CPU): llama 0.941, llama3 0.939,
#: mistral 0.939, qwen2 0.879, qwen3 0.970, gemma2 0.966, gemma3 0.949, phi3 0.862, gemma4
#: 0.610 (its 262k-token vocabulary on a 64-wide model: the flattest logits of all). Floors:
#: about 0.1 below the lowest measured value of the kind, for seed/CPU differences in training.
Q4_TOP1_FLOOR = {"gemma4": 0.5}
Q4_TOP1_FLOOR_DEFAULT = 0.75
PROBE = [{"role": "user", "content": "Say hello to Ada. And Kim?  Twice 42 times."},
         {"role": "assistant", "content": "Hello, Ada! Hello, Kim!"}]


@pytest.fixture(scope="module")
def hello_data(tmp_path_factory) -> Path:
    return write_hello_data(tmp_path_factory.mktemp("data") / "hello.jsonl")


def _events(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _llama_cpp_logits(gguf_path: Path, ids: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=256, logits_all=True, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def _transformers_logits(base: Path, adapter: Path | None, ids: list[int]) -> np.ndarray:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _gguf_text(path: Path, key: str) -> str | None:
    from gguf import GGUFReader

    f = GGUFReader(str(path)).fields.get(key)
    return None if f is None else bytes(f.parts[f.data[0]]).decode("utf-8")


#: Known defects, found by these tests (ftpack.training.spm_tokenizer / bases own the fixes).
#: phi3 (llama.cpp strips after Phi-3's markers only when general.name says "phi3"/"phi-3") is
#: fixed: ftpack writes one name per build that selects its tokenizer's behaviour
#: (ftpack.training.token_check, tests/test_final_tokenization.py).
KNOWN_DEFECTS: dict[str, str] = {}


def _case_param(case: ArchCase):
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_DEFECTS[case.name])] if case.name in KNOWN_DEFECTS else []
    return pytest.param(case, marks=marks, id=case.name)


@pytest.mark.slow
@pytest.mark.parametrize("case", [_case_param(c) for c in CASES.values()])
def test_build_reaches_q4_k_m_and_f16_logits_match(case: ArchCase, tmp_path, run_cli, hello_data, record_property):
    from gguf import GGUFReader

    from ftpack.core.layout import BuildLayout
    from ftpack.gguf.vendored import conversion_route
    from ftpack.training.bases import load_tokenizer
    from ftpack.training.templates import load_template, template_of_build
    from ftpack.training.token_check import check_tokenization, training_ids

    base = build_tiny_model(case, tmp_path / "base")
    assert conversion_route(json.loads((base / "config.json").read_text()))[0] == case.route

    out = tmp_path / "build"
    name = f"tiny-{case.name}"
    chosen = ("--template", case.template) if case.template else ()  # gemma4: Ollama's renderer, chosen by the build
    res = run_cli("--json", "build", name, "--base", base, "--data", hello_data, "--out", out, *chosen,
                  "--method", "lora", "--max-steps", "4", "--learning-rate", "2e-2",
                  "--lora-dropout", "0", "--max-seq-length", "64", "--no-register", "--no-verify")
    assert res.exit_code == 0, res.output
    stages = {e["stage"]: e for e in _events(res.stdout) if e["event"] == "stage_end"}
    for stage in ("data", "train", "convert", "quantize", "modelfile", "report"):
        assert stages[stage]["status"] == "done", (stage, stages[stage])

    layout = BuildLayout(out)
    f16, q4 = layout.gguf_file(name, "f16"), layout.gguf_file(name, "Q4_K_M")
    manifest = json.loads((out / "build.json").read_text())
    convert = manifest["stages"]["convert"]["metrics"]
    assert convert["architecture"] == case.gguf_architecture
    assert _gguf_text(f16, "general.architecture") == case.gguf_architecture
    reader = GGUFReader(str(q4))
    file_type = reader.fields["general.file_type"]
    assert int(file_type.parts[file_type.data[0]][0]) == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert _gguf_text(q4, "general.architecture") == case.gguf_architecture

    # the final GGUF tokenizes chats as training did (the data stage checked a vocab-only GGUF)
    template = load_template(case.template) if case.template else template_of_build(layout)
    tokenizer = load_tokenizer(layout.adapter_dir)
    conversations = [PROBE] + [json.loads(line)["messages"] for line in hello_data.read_text().splitlines()]
    check = check_tokenization(tokenizer, template, conversations, f16, raise_on_mismatch=False)
    assert check.checked == len(conversations) and not check.mismatches, check.mismatches[:1]

    ids = training_ids(tokenizer, template, PROBE)
    adapter = layout.adapter_dir
    ours = _llama_cpp_logits(f16, ids)
    tuned = _transformers_logits(base, adapter, ids)
    plain = _transformers_logits(base, None, ids)
    diff = float(np.abs(ours - tuned).max())
    top1 = float((ours.argmax(-1) == tuned.argmax(-1)).mean())
    effect = float(np.abs(tuned - plain).max())
    for key, value in (("max_abs_logit_diff", diff), ("top1", top1), ("adapter_effect", effect),
                       ("quantize", manifest["stages"]["quantize"]["metrics"].get("imatrix"))):
        record_property(key, value)  # pytest --junitxml shows the measured values
    assert effect > ADAPTER_EFFECT  # the adapter matters ...
    assert top1 == 1.0 and diff < F16_BOUND, (case.name, diff, top1)  # ... and llama.cpp runs it
    # the Q4_K_M file the build ships loads and runs: finite logits, next-token choices mostly the F16's
    quant = _llama_cpp_logits(q4, ids)
    q4_top1 = float((quant.argmax(-1) == ours.argmax(-1)).mean())
    record_property("q4_top1_vs_f16", q4_top1)
    print(f"{case.name}: Q4_K_M top-1 vs F16 {q4_top1:.3f} on {len(ids)} positions")
    assert np.isfinite(quant).all() and quant.shape == ours.shape
    assert q4_top1 >= Q4_TOP1_FLOOR.get(case.name, Q4_TOP1_FLOOR_DEFAULT), (case.name, q4_top1)
    if case.name == "llama3":  # Llama 3.1 rope scaling travels as rope_freqs
        assert "rope_freqs.weight" in {t.name for t in GGUFReader(str(f16)).tensors}


def test_unsupported_architecture_stops_the_build_before_training(tmp_path, hello_data, cli_in_fresh_process):
    """Exit 2 at config load: no build folder, and torch is never imported (so it takes seconds)."""
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"],
                                                 "model_type": "no_such_model"}))
    (odd / "model.safetensors").write_bytes(b"")
    out = tmp_path / "build"
    status, heavy, output = cli_in_fresh_process("build", "odd", "--base", odd, "--data", hello_data, "--out", out,
                                                 "--method", "lora", "--no-register")
    assert (status, heavy) == (2, False), output
    assert "NoSuchModelForCausalLM" in output
    assert not out.exists()


#: the architecture of every alias's hub model (its config.json ``architectures[0]``).
ALIAS_ARCHITECTURES = {
    "smollm2-135m": "LlamaForCausalLM", "smollm2-360m": "LlamaForCausalLM", "smollm2-1.7b": "LlamaForCausalLM",
    "qwen2.5-0.5b-instruct": "Qwen2ForCausalLM", "qwen2.5-1.5b-instruct": "Qwen2ForCausalLM",
    "qwen2.5-7b-instruct": "Qwen2ForCausalLM", "llama-3.2-1b-instruct": "LlamaForCausalLM",
    "llama-3.2-3b-instruct": "LlamaForCausalLM", "llama-3.1-8b-instruct": "LlamaForCausalLM",
    "llama-2-7b-chat": "LlamaForCausalLM", "mistral-7b-instruct": "MistralForCausalLM",
    "tinyllama-chat": "LlamaForCausalLM", "zephyr-7b-beta": "MistralForCausalLM",
    "phi-3-mini": "Phi3ForCausalLM", "gemma-2-2b-it": "Gemma2ForCausalLM", "vicuna-7b": "LlamaForCausalLM",
    "vicuna-13b": "LlamaForCausalLM",
}


def test_every_alias_passes_the_architecture_check(tmp_path, monkeypatch):
    """Each alias's hub model, as its config.json names it, converts (own or llama.cpp's converter)
    and passes the config-load check; an alias added without an entry here fails this test."""
    from ftpack.settings import build_config
    from ftpack.training.bases import ALIASES, EMBEDDED_NAME

    assert set(ALIAS_ARCHITECTURES) == set(ALIASES)
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for alias, arch in ALIAS_ARCHITECTURES.items():
        if alias == EMBEDDED_NAME:
            continue  # a GGUF from PyPI, checked when materialised (tests/test_embedded.py)
        repo = tmp_path / "hub" / ("models--" + ALIASES[alias].replace("/", "--"))
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("abc")
        (repo / "snapshots" / "abc").mkdir(parents=True)
        (repo / "snapshots" / "abc" / "config.json").write_text(json.dumps({"architectures": [arch]}))
        assert build_config("m", {"base": alias}).base == alias


def test_readme_architecture_list_is_generated_from_the_code(tmp_path):
    """scripts/architectures.py lists every architecture proven above under its route, and
    --check / --write keep a README's generated block current."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("architectures_script",
                                                  Path(__file__).resolve().parents[1] / "scripts" / "architectures.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    facts = script.architecture_facts()
    vendored = {name: arch for arch, names in facts["vendored"].items() for name in names}
    for case in CASES.values():
        if case.route == "own":
            assert facts["own"][case.hf_architecture] == case.gguf_architecture, case.name
        else:
            assert vendored[case.hf_architecture] == case.gguf_architecture, case.name
    assert "NoSuchModelForCausalLM" not in vendored

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{script.START}\nold list\n{script.END}\n\nmore\n")
    assert script.main(["--check", str(readme)]) == 1
    assert script.main(["--write", str(readme)]) == 0
    assert script.main(["--check", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\n") and text.endswith("\nmore\n") and "old list" not in text
    assert "`Gemma2ForCausalLM`" in text and "`LlamaForCausalLM`" in text
    # and the project's docs/architectures.md (linked from the README) carries the current list,
    # which is also what --check checks without a file
    page = Path(__file__).resolve().parents[1] / "docs" / "architectures.md"
    assert script.PAGE == page
    assert script.main(["--check", str(page)]) == 0
    assert script.main(["--check"]) == 0
