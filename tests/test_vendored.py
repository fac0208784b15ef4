"""llama.cpp's own converter, from the llama-cpp-python sdist: fetched, listed, routed, run.

The sdist of the installed llama-cpp-python is fetched with pip (from PyPI or pip's
cache) into ftpack's cache once; the tests then use that copy like ftpack does.

Measured while writing these tests (llama-cpp-python 0.3.36):
- llama.cpp's converter refuses a BPE tokenizer it does not know ("BPE pre-tokenizer was
  not recognized", NotImplementedError) — every locally trained BPE tokenizer, such as
  the tiny Llama's. Honest routes: a SentencePiece family (Gemma2, trained locally here;
  no hash check) and a real BPE tokenizer, Qwen2's, rebuilt by transformers from the
  sdist's own ``ggml-vocab-qwen2.gguf`` (the converter then recognises it as ``qwen2``).
- A tiny Qwen2 with that tokenizer: ftpack's own converter and llama.cpp's write the same
  26 tensors byte for byte and the same metadata, except general.name's capitalisation
  and the add_bos/add_eos flags ftpack writes explicitly (both false, llama.cpp's default).
- llama.cpp's Gemma2 scales queries by 1/sqrt(head_dim) and ignores
  ``query_pre_attn_scalar``; real Gemma2 configs set it to head_dim (2B, 9B), so the tiny
  model does too (with transformers' default 256 the logits differ by ~2).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ftpack.core.errors import FtpackError
from ftpack.gguf import vendored
from ftpack.gguf.vendored import (ConverterSupport, conversion_route, converter_support, llama_cpp_source,
                                  parse_converter_architectures, run_converter, vendored_source, verify_vendored)

import torch
import llama_cpp

#: HF architecture -> llama.cpp architecture, as llama.cpp's converter registers them.
EXPECTED = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3", "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3", "Phi3ForCausalLM": "phi3",
}
F16_BOUND = 0.05  # max |logit difference| llama.cpp F16 vs transformers fp32 on the tiny models; measured ~0.005
TEXTS = ["Hello world, this is a test 123 café", "  two leading spaces\n\tand a tab", "Paris? 4096 tokens!"]


@pytest.fixture(scope="session")
def vendored_llama_cpp():
    """The vendored llama.cpp of the installed llama-cpp-python (ftpack's shared cache)."""
    return vendored_source()


# -- fetch, cache, verify ---------------------------------------------------------------------

@pytest.mark.slow
def test_sdist_fetched_into_a_cache_keyed_by_version_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("FTPACK_CACHE", str(tmp_path / "cache"))
    version = vendored.installed_version()
    src = vendored_source()
    assert src.root == tmp_path / "cache" / "llama.cpp" / version
    assert src.version == version and src.origin == f"llama-cpp-python {version} sdist"
    assert src.commit and len(src.commit) == 40
    for rel in vendored.REQUIRED_FILES:
        assert (src.root / rel).is_file(), rel
    assert (src.root / "conversion" / "__init__.py").is_file()
    assert verify_vendored(src.root) > 100  # every extracted file re-hashed against the manifest
    manifest = vendored.read_manifest(src.root)
    assert manifest["sdist"]["sha256"] == vendored.KNOWN_SDIST_SHA256.get(version, manifest["sdist"]["sha256"])
    assert [p.name for p in src.root.parent.iterdir()] == [version]  # no partial or download folder left

    def no_download(*a, **kw):
        raise AssertionError("the cached copy should be reused")

    monkeypatch.setattr(vendored, "download_sdist", no_download)
    again = vendored_source()
    assert again == src

    (src.root / "convert_lora_to_gguf.py").unlink()  # a damaged copy is not used
    with pytest.raises(FtpackError, match="not in"):
        vendored_source(download=False)
    with pytest.raises(AssertionError, match="reused"):
        vendored_source()  # ... and would be fetched again


def test_leftovers_of_killed_fetches_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale = [tmp_path / f"0.3.36.partial-{dead.pid}", tmp_path / f"{vendored._DOWNLOAD_PREFIX}{dead.pid}-x1"]
    live = [tmp_path / f"0.3.36.partial-{os.getpid()}", tmp_path / "0.3.36"]
    for p in stale + live:
        p.mkdir()
    assert sorted(vendored.remove_stale_work(tmp_path)) == sorted(stale)
    assert all(p.is_dir() for p in live)


def test_vocab_tests_and_gguf_py_are_extracted(vendored_llama_cpp):
    tests = vendored_llama_cpp.vocab_tests()
    for name in ("llama-spm", "llama-bpe", "qwen2", "phi-3", "gpt-2", "starcoder", "gemma-4"):
        vocab, inp, out = tests[name]
        assert vocab.stat().st_size > 0 and inp.read_text(encoding="utf-8") and out.read_text(encoding="utf-8")
    assert (vendored_llama_cpp.gguf_py / "gguf" / "gguf_writer.py").is_file()


def test_damaged_file_is_caught_by_verify(vendored_llama_cpp, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(vendored_llama_cpp.root, copy)
    assert verify_vendored(copy) > 100
    target = copy / "gguf-py" / "gguf" / "constants.py"
    text = target.read_text(encoding="utf-8")
    target.write_text(text.replace('"llama"', '"llamb"', 1), encoding="utf-8")  # same size, other bytes
    with pytest.raises(FtpackError, match="differs"):
        verify_vendored(copy)


# -- what it converts and runs ------------------------------------------------------------------

def test_converter_lists_the_architectures_ftpack_offers(vendored_llama_cpp):
    support = converter_support(vendored_llama_cpp)
    for hf, gguf_arch in EXPECTED.items():
        assert support.text_architectures[hf] == gguf_arch, hf
        assert gguf_arch in support.runtime_architectures
    assert "clip" not in support.runtime_architectures  # the projector pseudo-architecture
    assert not any(name.endswith("VisionModel") for name in support.text_architectures)


def test_text_parse_equals_the_converters_own_registry(vendored_llama_cpp):
    """The ast parse gives exactly what the converter registers when imported."""
    code = (
        "import json, sys, gguf\n"
        "from conversion import load_all_models, ModelBase, ModelType\n"
        "from conversion import TEXT_MODEL_MAP\n"
        "load_all_models()\n"
        "text = ModelBase._model_classes[ModelType.TEXT]\n"
        "print(json.dumps({n: gguf.MODEL_ARCH_NAMES[c.model_arch] for n, c in text.items() if n in TEXT_MODEL_MAP}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=vendored_llama_cpp.root, capture_output=True, text=True,
                          env=vendored_llama_cpp.subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = json.loads(proc.stdout.strip().splitlines()[-1])
    assert parse_converter_architectures(vendored_llama_cpp.root) == imported
    assert len(imported) > 200


def test_conversion_route():
    support = ConverterSupport({"Gemma2ForCausalLM": "gemma2", "Gemma3ForConditionalGeneration": "gemma3",
                                "Gemma3ForCausalLM": "gemma3", "Phi3ForCausalLM": "phi3",
                                "FancyForCausalLM": "fancy"},
                               frozenset({"llama", "gemma2", "gemma3", "phi3"}), "test llama.cpp")
    route, reason = conversion_route({"architectures": ["LlamaForCausalLM"]}, support)
    assert route == "own" and "streaming" in reason
    assert conversion_route({"architectures": ["Qwen3ForCausalLM"]}, support)[0] == "own"
    route, reason = conversion_route({"architectures": ["Phi3ForCausalLM"]}, support)
    assert route == "vendored" and "phi3" in reason and "test llama.cpp" in reason
    route, reason = conversion_route({"architectures": ["Gemma3ForConditionalGeneration"],
                                      "text_config": {"architectures": ["Gemma3ForCausalLM"]}}, support)
    assert route == "vendored" and "Gemma3ForCausalLM" in reason
    route, reason = conversion_route({"architectures": ["NoSuchForCausalLM"]}, support)
    assert route is None and "NoSuchForCausalLM" in reason and "LlamaForCausalLM" in reason
    route, reason = conversion_route({"model_type": "mystery"}, support)
    assert route is None and "mystery" in reason
    route, reason = conversion_route({"architectures": ["FancyForCausalLM"]}, support)
    assert route is None and "'fancy'" in reason and "runs" in reason


def test_conversion_route_with_the_real_lists(vendored_llama_cpp):
    support = converter_support(vendored_llama_cpp)
    for hf in EXPECTED:
        assert conversion_route({"architectures": [hf]}, support)[0] in ("own", "vendored"), hf
    assert conversion_route({"architectures": ["Gemma2ForCausalLM"]})[0] == "vendored"  # default: the vendored lists
    assert conversion_route({"architectures": ["NoSuchForCausalLM"]})[0] is None


def test_llama_cpp_dir_overrides_and_its_gguf_py_comes_first(tmp_path, monkeypatch):
    checkout = tmp_path / "llama.cpp"
    (checkout / "gguf-py" / "gguf").mkdir(parents=True)
    (checkout / "gguf-py" / "gguf" / "__init__.py").write_text("MARK = 'checkout gguf-py'\n")
    (checkout / "convert_hf_to_gguf.py").write_text(
        "import sys, gguf\n"
        "out = sys.argv[sys.argv.index('--outfile') + 1]\n"
        "open(out, 'w').write(gguf.MARK + ' ' + sys.argv[sys.argv.index('--outtype') + 1])\n")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(checkout))
    src = llama_cpp_source()
    assert src.root == checkout.resolve() and src.version is None
    assert not converter_support(src).checked  # no conversion/ or constants.py: the script decides
    run_converter(src, tmp_path, tmp_path / "out.txt", "bf16")
    assert (tmp_path / "out.txt").read_text() == "checkout gguf-py bf16"  # PyPI's gguf was not imported

    with pytest.raises(FtpackError) as err:
        llama_cpp_source(tmp_path / "nothing-here")
    assert err.value.code == 2 and "convert_hf_to_gguf.py" in err.value.message


def test_converter_failure_carries_its_last_lines(tiny_llama, tmp_path, vendored_llama_cpp):
    """A locally trained BPE tokenizer: llama.cpp's converter does not know its pre-tokenizer."""
    with pytest.raises(FtpackError) as err:
        run_converter(vendored_llama_cpp, tiny_llama, tmp_path / "x.gguf", "f16")
    assert "BPE pre-tokenizer was not recognized" in err.value.message
    assert "exit 1" in err.value.message and "does not know" in err.value.hint
    assert not (tmp_path / "x.gguf").exists()


def test_unsupported_architecture_is_refused_before_converting(tiny_llama, tmp_path, run_cli, vendored_llama_cpp):
    odd = tmp_path / "odd"
    shutil.copytree(tiny_llama, odd)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["architectures"] = ["NoSuchModelForCausalLM"]
    (odd / "config.json").write_text(json.dumps(cfg))
    res = run_cli("convert", odd, "-o", tmp_path / "odd.gguf", env={"LLAMA_CPP_DIR": ""})
    assert res.exit_code == 2, res.output
    assert "NoSuchModelForCausalLM" in res.output and "--llama-cpp" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "odd.gguf").exists()


# -- real conversions ------------------------------------------------------------------------

def _randomize(model, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():  # larger-than-default init: logits that are not all ~equal
        for p in model.parameters():
            p.normal_(0.0, 0.08 if p.dim() == 2 else 0.1)


def _compare_logits(model, gguf_path: Path, ids: list[int]) -> tuple[float, float]:
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=128, logits_all=True, verbose=False)
    try:
        llm.eval(ids)
        ours = np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].float().numpy()
    return float(np.abs(ours - ref).max()), float((ours.argmax(-1) == ref.argmax(-1)).mean())


def _tokenize(gguf_path: Path, text: str) -> list[int]:
    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    try:
        return llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
    finally:
        llm.close()


@pytest.fixture(scope="module")
def tiny_gemma2(tmp_path_factory):
    """A tiny random Gemma2 with a SentencePiece tokenizer trained on the spot (Gemma's ids)."""
    import sentencepiece as spm
    from tiny_model import training_corpus
    from transformers import Gemma2Config, Gemma2ForCausalLM

    folder = tmp_path_factory.mktemp("tiny-gemma2") / "model"
    folder.mkdir()
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_corpus()), model_writer=buf, vocab_size=600, model_type="bpe",
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        add_dummy_prefix=False, normalization_rule_name="identity", character_coverage=0.9995,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", num_threads=1, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False}))
    config = Gemma2Config(vocab_size=600, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=64, query_pre_attn_scalar=64,
                          max_position_embeddings=512, sliding_window=128, pad_token_id=0, eos_token_id=1,
                          bos_token_id=2)
    model = Gemma2ForCausalLM(config)
    _randomize(model)
    model.save_pretrained(folder)
    return folder, model.eval(), spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


def test_gemma2_converts_with_the_vendored_converter(tiny_gemma2, tmp_path, vendored_llama_cpp):
    """Outside ftpack's own converter: convert_to_gguf hands Gemma2 to llama.cpp's script."""
    from ftpack.gguf.convert import convert_to_gguf

    folder, model, sp = tiny_gemma2
    out = tmp_path / "gemma2.f16.gguf"
    result = convert_to_gguf(folder, out, outtype="f16")
    assert result.architecture == "gemma2" and result.tensors > 0
    assert result.metadata["converter_origin"] == vendored_llama_cpp.origin
    for text in TEXTS:
        assert _tokenize(out, text) == [2] + sp.encode(text), text
    ids = _tokenize(out, "The capital of France is Paris. Who knows 42?")
    diff, top1 = _compare_logits(model, out, ids)
    assert top1 == 1.0 and diff < F16_BOUND, (diff, top1)


@pytest.fixture(scope="module")
def qwen2_tokenizer_dir(tmp_path_factory, vendored_llama_cpp):
    """Qwen2's real tokenizer, rebuilt by transformers from the sdist's ggml-vocab-qwen2.gguf (~25 s)."""
    from transformers import AutoTokenizer

    vocab = vendored_llama_cpp.vocab_tests()["qwen2"][0]
    tok = AutoTokenizer.from_pretrained(vocab.parent, gguf_file=vocab.name)
    folder = tmp_path_factory.mktemp("qwen2-tokenizer")
    tok.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_qwen2_real_tokenizer_vendored_equals_own_converter(qwen2_tokenizer_dir, tmp_path, vendored_llama_cpp):
    from gguf import GGUFReader
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from ftpack.gguf.convert import convert_to_gguf

    folder = tmp_path / "tiny-qwen2"
    shutil.copytree(qwen2_tokenizer_dir, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id)
    model = Qwen2ForCausalLM(config)
    _randomize(model)
    model.save_pretrained(folder)

    theirs = tmp_path / "vendored.gguf"
    run_converter(vendored_llama_cpp, folder, theirs, "f16")
    arch, tensors, pre = vendored.gguf_summary(theirs)
    assert (arch, pre) == ("qwen2", "qwen2")  # the real tokenizer passes the converter's hash check
    for text in TEXTS:
        assert _tokenize(theirs, text) == tok(text).input_ids, text  # Qwen2 adds no BOS
    ids = tok("The capital of France is Paris. Who knows 42?").input_ids
    diff, top1 = _compare_logits(model.eval(), theirs, ids)
    assert top1 == 1.0 and diff < F16_BOUND, (diff, top1)

    ours = tmp_path / "own.gguf"
    convert_to_gguf(folder, ours, outtype="f16")
    a, b = GGUFReader(str(ours)), GGUFReader(str(theirs))
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert set(ta) == set(tb) and len(ta) == tensors
    for name in ta:
        assert ta[name].tensor_type == tb[name].tensor_type and np.array_equal(ta[name].data, tb[name].data), name
    differing = {k for k in set(a.fields) | set(b.fields) if not k.startswith("GGUF.")
                 and (k not in a.fields or k not in b.fields or a.fields[k].contents() != b.fields[k].contents())}
    assert differing <= {"general.name", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token"}, differing
