"""HF → GGUF is faithful: llama.cpp gives the HF logits and the HF token ids.

The F16 GGUF written by ftpack is loaded by llama.cpp (llama-cpp-python) and fed the
same token ids as transformers; top-1 must agree everywhere and the logits must stay
within a stated bound of the fp32 reference. llama.cpp's tokenizer must produce the
HF tokenizer's ids for special tokens, the chat-template output, unicode and leading
spaces.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import torch
import llama_cpp

from test_merge import make_random_adapter  # noqa: E402

TINY_F16_BOUND = 0.03  # measured 0.012 (F16 rounding of weights; random tiny model)
SMOLLM2_F16_BOUND = 0.2  # measured 0.095 over a 49,152-word vocabulary

TOKENIZER_STRINGS = [
    "Hello world",
    " leading space",
    "   three leading spaces and trailing  ",
    "café naïve — “quoted” 東京 ñ ü € 🦙",
    "numbers 3 33 333 3333 12345 3.14",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "line one\n\n\tindented line\r\nend",
    "don't you're we'll I'VE",
]
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France? Réponds en français, s'il te plaît."},
    {"role": "assistant", "content": "La capitale de la France est Paris."},
    {"role": "user", "content": "And Japan? 東京?"},
]


def load_llama(path: Path):
    return llama_cpp.Llama(str(path), logits_all=True, verbose=False, n_ctx=512, n_threads=2, seed=0)


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def check_fidelity(model_dir: Path, gguf_path: Path, bound: float) -> dict:
    """Tokenizer ids and logits of llama.cpp vs transformers; returns the measured figures."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    chat_text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    llm = load_llama(gguf_path)
    try:
        for text in TOKENIZER_STRINGS + [chat_text]:
            hf_ids = tok(text).input_ids
            cpp_ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            assert cpp_ids == hf_ids, f"tokenization differs for {text!r}: HF {hf_ids} vs llama.cpp {cpp_ids}"
        ids = tok(chat_text).input_ids
        ours = llama_logits(llm, ids)
    finally:
        llm.close()
    ref = hf_logits(model_dir, ids)
    diff = float(np.abs(ours - ref).max())
    top1 = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    print(f"{gguf_path.name}: {len(ids)} tokens, max |logit diff| {diff:.4f}, top-1 agreement {top1:.0%}")
    assert top1 == 1.0
    assert diff < bound
    return {"max_abs": diff, "top1": top1}


def gguf_fields(path: Path) -> dict:
    from ftpack.gguf.inspect import summarize_gguf

    return summarize_gguf(path)


@pytest.fixture(scope="module")
def tiny_f16(tiny_llama, tmp_path_factory) -> Path:
    from ftpack.gguf.convert import convert_to_gguf

    out = tmp_path_factory.mktemp("gguf") / "tiny.f16.gguf"
    convert_to_gguf(tiny_llama, out, outtype="f16", name="tiny-test")
    return out


def test_tiny_f16_matches_transformers(tiny_llama, tiny_f16):
    check_fidelity(tiny_llama, tiny_f16, TINY_F16_BOUND)


def test_metadata_is_complete(tiny_llama, tiny_f16):
    from gguf import GGUFReader

    from ftpack.gguf.inspect import field_value

    s = gguf_fields(tiny_f16)
    cfg = json.loads((tiny_llama / "config.json").read_text())
    assert s["architecture"] == "llama" and s["name"] == "tiny-test"
    assert s["file_type_id"] == 1  # MOSTLY_F16
    assert s["context_length"] == cfg["max_position_embeddings"]
    assert s["block_count"] == cfg["num_hidden_layers"] and s["head_count_kv"] == cfg["num_key_value_heads"]
    assert s["rope_freq_base"] == cfg["rope_parameters"]["rope_theta"]
    assert s["tokenizer_model"] == "gpt2" and s["pre_tokenizer"] == "gpt-2"
    assert s["add_bos_token"] is True and s["add_eos_token"] is False
    assert s["special_tokens"]["bos"]["text"] == "<s>" and s["special_tokens"]["eos"]["text"] == "<|im_end|>"
    assert s["special_tokens"]["pad"]["text"] == "</s>"
    assert s["chat_template"] == (tiny_llama / "chat_template.jinja").read_text()
    reader = GGUFReader(tiny_f16)
    assert len(field_value(reader, "tokenizer.ggml.merges")) > 100
    types = field_value(reader, "tokenizer.ggml.token_type")
    assert types[3] == 3 and types[100] == 1  # <|im_start|> is CONTROL, ordinary tokens NORMAL
    assert field_value(reader, "general.size_label")
    # norms stay F32, matrices F16
    by_name = {t.name: t.tensor_type.name for t in reader.tensors}
    assert by_name["blk.0.attn_norm.weight"] == "F32" and by_name["blk.0.attn_q.weight"] == "F16"


def test_adapter_on_the_fly_equals_converting_the_merged_folder(tiny_llama, tmp_path, run_cli):
    """`convert --adapter` writes the same tensors as merge-then-convert (no merged copy on disk)."""
    from gguf import GGUFReader

    adapter = make_random_adapter(tiny_llama, tmp_path / "adapter", seed=3)
    merged = tmp_path / "merged"
    assert run_cli("merge", "--base", tiny_llama, "--adapter", adapter, "-o", merged, "--dtype", "f32").exit_code == 0
    a, b = tmp_path / "fly.gguf", tmp_path / "merged.gguf"
    res = run_cli("convert", tiny_llama, "--adapter", adapter, "-o", a)
    assert res.exit_code == 0, res.output
    assert run_cli("convert", merged, "-o", b).exit_code == 0
    ra, rb = GGUFReader(a), GGUFReader(b)
    assert [t.name for t in ra.tensors] == [t.name for t in rb.tensors]
    for ta, tb in zip(ra.tensors, rb.tensors):
        assert np.array_equal(np.asarray(ta.data), np.asarray(tb.data)), ta.name
    # and the adapter really changed the weights
    plain = tmp_path / "plain.gguf"
    assert run_cli("convert", tiny_llama, "-o", plain).exit_code == 0
    q_plain = next(t for t in GGUFReader(plain).tensors if t.name == "blk.0.attn_q.weight")
    q_fly = next(t for t in ra.tensors if t.name == "blk.0.attn_q.weight")
    assert not np.array_equal(np.asarray(q_plain.data), np.asarray(q_fly.data))
    # an adapter folder alone is enough: its base comes from adapter_config.json
    c = tmp_path / "from-adapter.gguf"
    assert run_cli("convert", adapter, "-o", c).exit_code == 0
    assert np.array_equal(np.asarray(GGUFReader(c).tensors[3].data), np.asarray(ra.tensors[3].data))


@pytest.mark.parametrize("outtype,file_type,bound", [("f32", 0, 0.02), ("bf16", 32, 0.15), ("q8_0", 7, 0.3)])
def test_other_outtypes_load_and_agree(outtype, file_type, bound, tiny_llama, tmp_path):
    """f32 is bounded by llama.cpp's F16 KV cache (measured 0.006), bf16/q8_0 by weight rounding."""
    from ftpack.gguf.convert import convert_to_gguf

    out = tmp_path / f"tiny.{outtype}.gguf"
    convert_to_gguf(tiny_llama, out, outtype=outtype)
    assert gguf_fields(out)["file_type_id"] == file_type
    ids = [1, 3, 319, 261, 203, 76, 77, 4, 40, 51, 300, 12]
    llm = load_llama(out)
    try:
        ours = llama_logits(llm, ids)
    finally:
        llm.close()
    ref = hf_logits(tiny_llama, ids)
    diff = float(np.abs(ours - ref).max())
    print(f"{outtype}: max |logit diff| {diff:.4f}")
    assert diff < bound
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= (1.0 if outtype == "f32" else 0.9)


def test_wrong_inputs_are_clear_errors(tiny_llama, tmp_path, run_cli):
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    shutil.copy(tiny_llama / "model.safetensors", no_config / "model.safetensors")
    res = run_cli("convert", no_config, "-o", tmp_path / "x.gguf")
    assert res.exit_code == 2 and "no config.json" in res.output and "Traceback" not in res.output

    gpt2 = tmp_path / "gpt2"  # an architecture neither converter knows (GPT-2 itself goes to llama.cpp's)
    shutil.copytree(tiny_llama, gpt2)
    cfg = json.loads((gpt2 / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["NoSuchGPTLMHeadModel"], "nosuch"
    (gpt2 / "config.json").write_text(json.dumps(cfg))
    res = run_cli("convert", gpt2, "-o", tmp_path / "x.gguf", env={"LLAMA_CPP_DIR": ""})
    assert res.exit_code == 2 and "NoSuchGPTLMHeadModel" in res.output and "--llama-cpp" in res.output
    assert "Traceback" not in res.output
    res = run_cli("convert", gpt2, "-o", tmp_path / "x.gguf", "--llama-cpp", tmp_path)
    assert res.exit_code == 2 and "convert_hf_to_gguf.py" in res.output
    assert not (tmp_path / "x.gguf").exists()


def test_other_architectures_go_to_llama_cpp_script(tiny_llama, tmp_path, run_cli):
    """With a llama.cpp checkout, an unsupported architecture runs its convert_hf_to_gguf.py."""
    checkout = tmp_path / "llama.cpp"
    checkout.mkdir()
    (checkout / "convert_hf_to_gguf.py").write_text(
        "import sys, shutil\n"
        "args = sys.argv[1:]\n"
        "out = args[args.index('--outfile') + 1]\n"
        "assert args[args.index('--outtype') + 1] == 'f16'\n"
        f"shutil.copy({str(tmp_path / 'ref.gguf')!r}, out)\n")
    from ftpack.gguf.convert import convert_to_gguf

    convert_to_gguf(tiny_llama, tmp_path / "ref.gguf")
    phi = tmp_path / "phi"
    shutil.copytree(tiny_llama, phi)
    cfg = json.loads((phi / "config.json").read_text())
    cfg["architectures"] = ["PhiForCausalLM"]
    (phi / "config.json").write_text(json.dumps(cfg))
    res = run_cli("convert", phi, "-o", tmp_path / "phi.gguf", "--llama-cpp", checkout)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "phi.gguf").read_bytes() == (tmp_path / "ref.gguf").read_bytes()


def test_stage_functions_convert_and_quantize(tiny_llama, tmp_path):
    """run_convert_stage fuses train/adapter on the fly; run_quantize_stage makes Q4_K_M."""
    from ftpack.core.runner import Stage, StageResult, run_stages
    from ftpack.gguf.convert import run_convert_stage
    from ftpack.gguf.quantize import run_quantize_stage
    from ftpack.settings import build_config

    def fake_train(ctx):
        adapter = make_random_adapter(tiny_llama, ctx.stage_dir / "adapter", seed=5)
        return StageResult(outputs=[adapter], main_output=adapter, metrics={"base_path": str(tiny_llama)})

    cfg = build_config("tiny-stage:v1", {"quant": "q4_k_m", "imatrix": "none"})  # no data stage here to calibrate on
    stages = [Stage("train", "fake train", fake_train), Stage("convert", "gguf", run_convert_stage),
              Stage("quantize", "q", run_quantize_stage)]
    manifest = run_stages(cfg, stages, tmp_path / "build")
    f16 = tmp_path / "build" / "gguf" / "tiny-stage_v1.f16.gguf"
    q4 = tmp_path / "build" / "gguf" / "tiny-stage_v1.Q4_K_M.gguf"
    assert manifest.stages["convert"].main_output == "gguf/tiny-stage_v1.f16.gguf"
    assert manifest.stages["convert"].metrics["merged_tensors"] == 14
    assert gguf_fields(f16)["chat_template"] == (tiny_llama / "chat_template.jinja").read_text()
    assert gguf_fields(q4)["file_type_id"] == 15
    assert not (tmp_path / "build" / "merged").exists()


@pytest.mark.slow
def test_smollm2_f16_matches_transformers(smollm2_base, tmp_path):
    from ftpack.gguf.convert import convert_to_gguf

    out = tmp_path / "smollm2.f16.gguf"
    result = convert_to_gguf(smollm2_base, out, outtype="f16")
    assert result.pre_tokenizer == "smollm"
    s = gguf_fields(out)
    assert "output.weight" not in {t["type"] for t in s["tensor_types"]}  # tied embeddings
    assert s["rope_freq_base"] == 100000.0 and s["context_length"] == 8192
    assert s["license"]  # provenance carried over from the packaged GGUF
    check_fidelity(smollm2_base, out, SMOLLM2_F16_BOUND)


def test_convert_with_adapter_never_imports_torch(tiny_llama, tmp_path):
    """The convert/merge path is numpy only: importing torch alone costs ~0.5 GB of RSS,
    more than streaming a 1B model needs (benchmarks/merge_convert_memory.py)."""
    import subprocess
    import sys

    adapter = make_random_adapter(tiny_llama, tmp_path / "adapter", seed=7, dora=True)
    code = ("import sys\n"
            "from ftpack.cli import cli\n"
            "try:\n"
            f"    cli([{'convert'!r}, {str(tiny_llama)!r}, '--adapter', {str(adapter)!r}, '-o', "
            f"{str(tmp_path / 'x.gguf')!r}, '--outtype', 'q8_0'])\n"
            "except SystemExit as e:\n"
            "    assert e.code in (0, None), e.code\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout
    assert (tmp_path / "x.gguf").stat().st_size > 0


def _bin_copy(st_folder: Path, out: Path, *, legacy: bool = False, wrap=None) -> Path:
    """The folder as a PyTorch-.bin model (what Vicuna-7B-v1.5 publishes): the same shards,
    each torch.save'd as pytorch_model-*.bin, with pytorch_model.bin.index.json."""
    from safetensors.torch import load_file

    out.mkdir(parents=True)
    for f in st_folder.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy2(f, out / f.name)
    index = json.loads((st_folder / "model.safetensors.index.json").read_text())
    shards = list(dict.fromkeys(index["weight_map"].values()))
    names = {s: f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin" for i, s in enumerate(shards)}
    for shard in shards:
        state = load_file(st_folder / shard)
        torch.save(wrap(state) if wrap else state, out / names[shard], _use_new_zipfile_serialization=not legacy)
    (out / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": index["metadata"], "weight_map": {k: names[v] for k, v in index["weight_map"].items()}}))
    return out


@pytest.fixture(scope="module")
def sharded_base(tiny_llama, tmp_path_factory) -> Path:
    """The tiny Llama in several bf16 safetensors shards (as a 7B download comes)."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("st") / "model"
    AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).save_pretrained(folder,
                                                                                          max_shard_size="1MB")
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(tiny_llama / f, folder / f)
    assert len(list(folder.glob("model-*.safetensors"))) > 2
    return folder


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_bin_weights_convert_like_safetensors_bit_for_bit(legacy, sharded_base, tmp_path, run_cli, monkeypatch):
    """Defect 4 / issue 11: `.bin`-only bases are read with torch's safe loader, converted
    once into ftpack's cache, and then give exactly the GGUF (and merged copy) that the
    safetensors original gives. No --allow-pickle needed."""
    monkeypatch.setenv("FTPACK_CACHE", str(tmp_path / "cache"))
    bin_base = _bin_copy(sharded_base, tmp_path / "bin" / "model", legacy=legacy)
    assert not list(bin_base.glob("*.safetensors"))
    reference = tmp_path / "reference.gguf"
    assert run_cli("convert", sharded_base, "-o", reference).exit_code == 0

    res = run_cli("convert", bin_base, "-o", tmp_path / "from-bin.gguf")
    assert res.exit_code == 0, res.output
    assert "Converting the PyTorch weights" in res.output
    assert (tmp_path / "from-bin.gguf").read_bytes() == reference.read_bytes()
    converted = list((tmp_path / "cache" / "safetensors").glob("*/model"))
    assert len(converted) == 1 and len(list(converted[0].glob("model-*.safetensors"))) > 2
    from transformers import AutoModelForCausalLM  # training loads the same copy

    ours = AutoModelForCausalLM.from_pretrained(converted[0], dtype=torch.bfloat16).state_dict()
    theirs = AutoModelForCausalLM.from_pretrained(sharded_base, dtype=torch.bfloat16).state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    res = run_cli("convert", bin_base, "-o", tmp_path / "again.gguf")  # the cached copy is reused
    assert res.exit_code == 0 and "Converting the PyTorch weights" not in res.output
    assert (tmp_path / "again.gguf").read_bytes() == reference.read_bytes()

    adapter = make_random_adapter(sharded_base, tmp_path / "adapter", seed=3)
    for base, out in ((sharded_base, "merged-st"), (bin_base, "merged-bin")):
        assert run_cli("merge", "--base", base, "--adapter", adapter, "-o", tmp_path / out).exit_code == 0
    shards = sorted(p.name for p in (tmp_path / "merged-st").glob("*.safetensors"))
    assert shards == sorted(p.name for p in (tmp_path / "merged-bin").glob("*.safetensors")) and len(shards) > 2
    for name in shards:
        assert (tmp_path / "merged-bin" / name).read_bytes() == (tmp_path / "merged-st" / name).read_bytes()


def test_bin_weights_the_safe_loader_refuses_need_allow_pickle(sharded_base, tmp_path, run_cli, monkeypatch):
    """A .bin that holds more than tensors (here a collections.UserDict) is refused with a
    clear exit-2 error naming --allow-pickle; with the flag it converts."""
    import collections

    monkeypatch.setenv("FTPACK_CACHE", str(tmp_path / "cache"))
    bin_base = _bin_copy(sharded_base, tmp_path / "bin" / "model", wrap=collections.UserDict)
    res = run_cli("convert", bin_base, "-o", tmp_path / "x.gguf")
    assert res.exit_code == 2, res.output
    assert "--allow-pickle" in res.output and "collections.UserDict" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "x.gguf").exists()
    assert not list((tmp_path / "cache" / "safetensors").glob("*/model"))  # nothing half-converted

    res = run_cli("convert", bin_base, "-o", tmp_path / "x.gguf", "--allow-pickle")
    assert res.exit_code == 0, res.output
    assert run_cli("convert", sharded_base, "-o", tmp_path / "ref.gguf").exit_code == 0
    assert (tmp_path / "x.gguf").read_bytes() == (tmp_path / "ref.gguf").read_bytes()
