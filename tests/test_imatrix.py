"""The importance matrix ftpack computes (issue 13): llama.cpp's format, exact values, names
through the converter's tensor map, used by llama.cpp's quantizer, and in the build.

Tiny-model tests check the mechanics; the SmolLM2 test (slow) checks that it pays off:
lower mean KL divergence from F16 on held-out text than quantizing without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_build_e2e import write_hello_data

CONVERSATIONS = [[{"role": "user", "content": f"What is {i} plus {i}? " + "Please explain. " * (i % 5)},
                  {"role": "assistant", "content": f"{i} plus {i} is {2 * i}." + " Indeed." * (i % 3)}]
                 for i in range(30)]


@pytest.fixture(scope="module")
def tiny_f16(tiny_llama, tmp_path_factory) -> Path:
    from ftpack.gguf.convert import convert_to_gguf

    out = tmp_path_factory.mktemp("im") / "tiny.f16.gguf"
    convert_to_gguf(tiny_llama, out, outtype="f16")
    return out


@pytest.fixture(scope="module")
def chatml():
    from ftpack.training.templates import load_template

    return load_template("chatml")


def _fields(path: Path) -> dict:
    from gguf import GGUFReader

    from ftpack.gguf.inspect import field_value

    reader = GGUFReader(path)
    return {k: field_value(reader, k) for k in reader.fields if not k.startswith("GGUF.")}


def _tensors(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader

    return {t.name: np.asarray(t.data, dtype=np.float64) for t in GGUFReader(path).tensors}


def test_in_sum2_and_counts_equal_a_direct_computation(tiny_llama, tiny_f16, chatml, tmp_path):
    """blk.N.attn_q/k/v read input_layernorm(hidden state N): Σx² per column over the very same
    tokens, computed one sequence at a time from output_hidden_states (no hooks, no padding),
    equals the file's in_sum2 (computed in padded batches), and counts equal the tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftpack.gguf.imatrix import calibration_set, compute_imatrix
    from ftpack.training.bases import load_tokenizer

    out = tmp_path / "imatrix.gguf"
    res = compute_imatrix(tiny_llama, None, CONVERSATIONS, chatml, out, dataset="qa.jsonl", reference_gguf=tiny_f16,
                          precision="fp32")
    tokenizer = load_tokenizer(tiny_llama)
    cal = calibration_set(CONVERSATIONS, chatml, tokenizer, dataset="qa.jsonl")
    assert len({len(s) for s in cal.sequences}) > 3  # several lengths: the batches were padded
    assert res.tokens == cal.tokens and res.chunks == len(cal.sequences)

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()
    expected = {layer: torch.zeros(model.config.hidden_size, dtype=torch.float64) for layer in (0, 1)}
    with torch.no_grad():
        for seq in cal.sequences:
            hidden = model(torch.tensor([seq]), output_hidden_states=True).hidden_states
            for layer in expected:
                x = model.model.layers[layer].input_layernorm(hidden[layer])[0].double()
                expected[layer] += (x * x).sum(dim=0)
    tensors = _tensors(out)
    for layer, sums in expected.items():
        for part in ("attn_q", "attn_k", "attn_v"):
            name = f"blk.{layer}.{part}.weight"
            np.testing.assert_allclose(tensors[name + ".in_sum2"].reshape(-1), sums.numpy(), rtol=1e-4)
            assert tensors[name + ".counts"].reshape(-1).tolist() == [float(cal.tokens)]
    # every linear of both blocks, nothing else: 7 per block
    assert sorted(n[: -len(".in_sum2")] for n in tensors if n.endswith(".in_sum2")) == sorted(
        f"blk.{b}.{w}.weight" for b in (0, 1)
        for w in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"))


def test_calibration_of_an_ollama_rendered_format_is_its_training_ids(tmp_path):
    """A build served by an Ollama renderer trains on the renderer's text (gemma4: a thinking
    system turn first), not on the base tokenizer's own Jinja template: the importance matrix
    is computed on exactly the ids training used."""
    from types import SimpleNamespace

    from ftpack.gguf.imatrix import calibration_set
    from ftpack.training.bases import load_tokenizer
    from ftpack.training.ollama_format import encoded_sequences
    from ftpack.training.templates import choose_base_template
    from tiny_archs import gguf_tokenizer_folder

    folder = tmp_path / "gemma4-base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma4", "architectures": ["Gemma4ForCausalLM"]}))
    tpl = choose_base_template(None, SimpleNamespace(path=folder, model_id="google/gemma-4-e2b-it", ollama=None,
                                                     names=("x",)))
    tokenizer = load_tokenizer(gguf_tokenizer_folder("gemma-4"))  # Gemma 4's real vocabulary and Jinja template
    assert tokenizer.chat_template and tpl.renders_ollama
    cal = calibration_set(CONVERSATIONS[:4], tpl, tokenizer, dataset="qa.jsonl", min_tokens=0)
    trained = [encoded_sequences(tpl, tokenizer, conv, masks=False)[-1][2]["input_ids"] for conv in CONVERSATIONS[:4]]
    assert cal.sequences == trained and cal.records == 4
    assert tokenizer.decode(cal.sequences[0]).startswith("<bos><|turn>system\n<|think|>")


def test_bf16_autocast_sums_stay_close_to_fp32(tiny_llama, tiny_f16, chatml, tmp_path, monkeypatch):
    """On a CPU with native bf16, ``auto`` runs the forward under bf16 autocast: each
    column's Σx² within 5% of the fp32 computation and within 0.5% on average per weight
    (measured on the tiny random Llama: at most 2%), counts equal. On a CPU without it, auto
    stays fp32, and the bf16 path is still checked (torch emulates bf16 there)."""
    from ftpack.gguf import imatrix
    from ftpack.gguf.imatrix import compute_imatrix
    from ftpack.training.speed import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        plain = compute_imatrix(tiny_llama, None, CONVERSATIONS, chatml, tmp_path / "plain.gguf", dataset="qa.jsonl",
                                reference_gguf=tiny_f16, precision="auto")
        assert "autocast" not in plain.dtype
        monkeypatch.setattr(imatrix, "_native_bf16", lambda: True)
    files = {}
    for precision in ("fp32", "auto"):
        files[precision] = tmp_path / f"{precision}.gguf"
        res = compute_imatrix(tiny_llama, None, CONVERSATIONS, chatml, files[precision], dataset="qa.jsonl",
                              reference_gguf=tiny_f16, precision=precision)
        assert ("autocast" in res.dtype) == (precision == "auto")
    exact, fast = _tensors(files["fp32"]), _tensors(files["auto"])
    assert exact.keys() == fast.keys()
    for name, values in exact.items():
        if name.endswith(".counts"):
            assert fast[name].tolist() == values.tolist()
        else:
            rel = np.abs(fast[name] - values) / values
            assert rel.max() <= 0.05 and rel.mean() <= 0.005, (name, rel.max(), rel.mean())


def test_file_is_llama_cpps_gguf_imatrix_format(tiny_llama, tiny_f16, chatml, tmp_path):
    from gguf import GGUFReader

    from ftpack.gguf.calibration_text import GENERIC_TEXT_NAME
    from ftpack.gguf.imatrix import compute_imatrix

    out = tmp_path / "imatrix.gguf"
    res = compute_imatrix(tiny_llama, None, CONVERSATIONS[:3], chatml, out, dataset="few.jsonl",
                          reference_gguf=tiny_f16, chunk_size=64)
    fields = _fields(out)
    # as llama-imatrix writes it: no architecture, general.type and the three imatrix.* keys
    assert fields == {"general.type": "imatrix", "imatrix.datasets": ["few.jsonl", GENERIC_TEXT_NAME],
                      "imatrix.chunk_count": res.chunks, "imatrix.chunk_size": 64}
    # three short conversations are far below MIN_TOKENS: topped up with the generic text, and said so
    assert res.data_tokens < 200 and res.topup_tokens > 0 and res.tokens >= 2048
    widths = {t.name: int(t.shape[0]) for t in GGUFReader(tiny_f16).tensors}
    for t in GGUFReader(out).tensors:
        weight = t.name.rsplit(".", 1)[0]
        assert t.tensor_type.name == "F32"
        assert [int(d) for d in t.shape] == ([widths[weight], 1] if t.name.endswith(".in_sum2") else [1, 1])


def test_the_quantizer_takes_it_and_records_it(tiny_llama, tiny_f16, tmp_path, run_cli):
    """`ftpack imatrix` then `ftpack quantize --imatrix`: llama.cpp receives every entry (its log),
    finds weights for every blk.* tensor, rounds differently, and the output names the matrix
    in the quantize.imatrix.* keys llama-quantize writes. IQ2_XS (which needs one) works."""
    from ftpack.gguf.quantize import quantize_gguf

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS), encoding="utf-8")
    im = tmp_path / "im.gguf"
    res = run_cli("imatrix", tiny_llama, "--data", data, "-o", im, "--gguf", tiny_f16, "--template", "chatml",
                  "--chunks", "20")
    assert res.exit_code == 0, res.output
    chunks = _fields(im)["imatrix.chunk_count"]
    assert chunks > 20  # 20 conversations, then chunks of the generic text (the data is small)

    plain = quantize_gguf(tiny_f16, tmp_path / "plain.gguf", "Q4_K_M")
    weighted = quantize_gguf(tiny_f16, tmp_path / "weighted.gguf", "Q4_K_M", imatrix=im)
    assert weighted.imatrix_entries == 14 and weighted.imatrix_missing == []
    assert plain.path.read_bytes() != weighted.path.read_bytes()
    kv = _fields(weighted.path)
    assert kv["quantize.imatrix.file"] == str(im)
    assert kv["quantize.imatrix.dataset"] == str(data)
    assert kv["quantize.imatrix.entries_count"] == 14
    assert kv["quantize.imatrix.chunks_count"] == chunks
    assert "quantize.imatrix.file" not in _fields(plain.path)
    iq2 = quantize_gguf(tiny_f16, tmp_path / "iq2.gguf", "IQ2_XS", imatrix=im)
    assert iq2.imatrix_missing == [] and iq2.bytes < plain.bytes


def test_names_follow_the_gguf_fused_weights_and_widths(tiny_llama):
    """q/k/v feed a fused attn_qkv from one of them (same input, counted once); a weight the
    GGUF lacks is dropped; a width that differs is an error, not a silently useless file."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftpack.core.errors import FtpackError
    from ftpack.gguf.imatrix import imatrix_targets

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    h, ff = model.config.hidden_size, model.config.intermediate_size
    plain = {f"blk.{b}.{w}.weight": (ff if w == "ffn_down" else h) for b in (0, 1)
             for w in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    targets, dropped = imatrix_targets(model, "llama", 2, plain)
    assert targets["model.layers.1.self_attn.q_proj"] == "blk.1.attn_q.weight" and dropped == []
    assert len(targets) == 14
    fused = {k.replace("attn_q.", "attn_qkv."): v for k, v in plain.items()
             if ".attn_k." not in k and ".attn_v." not in k}
    del fused["blk.0.ffn_down.weight"]
    targets, dropped = imatrix_targets(model, "llama", 2, fused)
    assert targets["model.layers.0.self_attn.q_proj"] == "blk.0.attn_qkv.weight"
    assert "model.layers.0.self_attn.k_proj" not in targets and "model.layers.0.self_attn.v_proj" not in targets
    assert dropped == ["blk.0.ffn_down.weight"]
    with pytest.raises(FtpackError, match="do not belong together"):
        imatrix_targets(model, "llama", 2, {**plain, "blk.0.attn_q.weight": h + 1})


def test_padding_is_excluded(tiny_llama):
    """One padded batch gives the sums of one sequence at a time (pads would add their x²)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftpack.gguf.imatrix import collect, imatrix_targets

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()
    targets, _ = imatrix_targets(model, "llama", 2)
    seqs = [[1, 5, 9, 11, 40, 41, 42, 43, 44, 45, 46], [1, 7, 8], [1, 20, 21, 22, 23, 24]]
    together = collect(model, targets, seqs, pad_id=2, batch_tokens=10_000)
    alone = collect(model, targets, seqs, pad_id=2, batch_tokens=1)
    for name in together.sums:
        assert together.counts[name] == alone.counts[name] == sum(map(len, seqs))
        torch.testing.assert_close(together.sums[name], alone.sums[name], rtol=1e-5, atol=1e-8)


def test_imatrix_setting_is_auto_none_or_a_file(tmp_path):
    from ftpack.core.config import load_config_file
    from ftpack.core.errors import FtpackError
    from ftpack.settings import build_config

    assert build_config("m", {}).imatrix == "auto"
    assert build_config("m", {"imatrix": "NONE"}).imatrix == "none"
    f = tmp_path / "im.gguf"
    f.write_bytes(b"x")
    cfg_file = tmp_path / "sub" / "ftpack.toml"
    cfg_file.parent.mkdir()
    cfg_file.write_text('imatrix = "auto"\n')
    assert load_config_file(cfg_file)["imatrix"] == "auto"  # a mode, not a file next to the config
    cfg_file.write_text('imatrix = "../im.gguf"\n')
    assert Path(build_config("m", load_config_file(cfg_file)).imatrix).resolve() == f.resolve()
    with pytest.raises(FtpackError) as exc:
        build_config("m", {"imatrix": str(tmp_path / "nope.gguf")})
    assert exc.value.code == 2 and "not found" in exc.value.message


# -- in the build -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def auto_build(tiny_llama, tmp_path_factory):
    """A tiny build with --quant auto (imatrix auto): its manifest."""
    import io

    from ftpack.core.report import Reporter
    from ftpack.pipeline import run_build
    from ftpack.settings import build_config

    data = write_hello_data(tmp_path_factory.mktemp("data") / "hello.jsonl")
    out = tmp_path_factory.mktemp("auto") / "build"
    settings = {"base": str(tiny_llama), "data": str(data), "out": str(out), "method": "lora", "max_steps": 30,
                "learning_rate": 5e-3, "max_seq_length": 64, "per_device_train_batch_size": 4, "register": "none",
                "quant": "auto", "max_kld": 0.02, "eval_ratio": 0.25}
    err = io.StringIO()
    manifest = run_build(build_config("tiny-auto", None, settings), reporter=Reporter("quiet", out=io.StringIO(),
                                                                                      err=err))
    return manifest


def test_build_computes_the_imatrix_from_the_train_split_and_records_it(auto_build):
    q = auto_build.stages["quantize"]
    im = q.metrics["imatrix"]
    root = auto_build.build_dir
    train_records = sum(1 for _ in open(root / "data" / "train.jsonl", encoding="utf-8"))
    assert im["source"] == "computed" and im["path"] == "quantize/imatrix.gguf"
    assert im["records"] == train_records and im["datasets"][0] == str(root / "data" / "train.jsonl")
    assert im["topup_tokens"] > 0 and im["entries"] == 14 and im["missing"] == []
    assert "quantize/imatrix.gguf" in [o.path for o in q.outputs]
    assert im["used"] == (q.metrics["quant"] not in ("Q6_K", "Q8_0"))
    assert _fields(root / q.main_output).get("quantize.imatrix.entries_count") == (14 if im["used"] else None)


def test_quant_auto_keeps_the_smallest_type_within_budget(auto_build):
    """Consistent with its own table: tried smallest first, stopped at the first within
    --max-kld (or kept the lowest KLD when none was), only the kept file is left."""
    from ftpack.gguf.quantize import AUTO_CANDIDATES

    q = auto_build.stages["quantize"]
    auto = q.metrics["auto"]
    table = auto["candidates"]
    assert [row["quant"] for row in table] == list(AUTO_CANDIDATES[:len(table)])
    within = [row for row in table if row["mean_kld"] <= auto["max_kld"]]
    chosen = next(row for row in table if row["quant"] == auto["chosen"])
    if within:
        assert within == [table[-1]] and chosen is table[-1]  # the first within the budget ends the search
    else:
        assert len(table) == len(AUTO_CANDIDATES) and chosen["mean_kld"] == min(r["mean_kld"] for r in table)
    assert q.metrics["quant"] == auto["chosen"] and q.metrics["bytes"] == chosen["bytes"]
    assert [row["imatrix"] for row in table] == [row["quant"] not in ("Q6_K", "Q8_0") for row in table]
    assert "eval split" in auto["texts"]
    ggufs = sorted(p.name for p in (auto_build.build_dir / "gguf").glob("*.gguf"))
    assert ggufs == sorted(["tiny-auto.f16.gguf", f"tiny-auto.{auto['chosen']}.gguf"])


def test_card_and_verify_show_the_kld_figures(auto_build):
    v = auto_build.stages["verify"].metrics
    # quantizing changed the model (a zero divergence would mean verify compared a file with itself),
    # and the figures are ordered as a distribution's are
    assert v["mean_kld"] > 0 and v["highest_kld"] >= v["p99_kld"] >= v["median_kld"] >= 0
    assert v["mean_kld"] <= v["highest_kld"]
    assert v["fidelity_texts"].startswith("the eval split")
    card = (auto_build.build_dir / "report.md").read_text(encoding="utf-8")
    assert "mean KL divergence" in card and "Chosen by `--quant auto`" in card
    for row in auto_build.stages["quantize"].metrics["auto"]["candidates"]:
        assert f"| {row['quant']} |" in card
    assert "computed by ftpack from" in card and "topped up" in card


# -- SmolLM2-135M: it pays off -------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_setup(smollm2_base, tmp_path_factory):
    """SmolLM2's F16 GGUF, an imatrix from the first 150 example records, held-out texts
    from the last 40 (never seen by the imatrix)."""
    from ftpack.gguf.convert import convert_to_gguf
    from ftpack.gguf.imatrix import compute_imatrix
    from ftpack.training.data import read_messages_jsonl
    from ftpack.training.templates import load_template

    folder = tmp_path_factory.mktemp("smollm2-im")
    f16 = folder / "smollm2.f16.gguf"
    convert_to_gguf(smollm2_base, f16, outtype="f16")
    records = read_messages_jsonl(Path(__file__).resolve().parents[1] / "examples" / "qa.messages.jsonl")
    tpl = load_template("chatml")
    calibration, heldout = records[:150], records[-40:]
    im = compute_imatrix(smollm2_base, None, calibration, tpl, folder / "imatrix.gguf", dataset="qa[:150]",
                         reference_gguf=f16, chunks=150)
    return f16, im, [tpl.training_text(c) for c in heldout], folder


@pytest.mark.slow
def test_smollm2_imatrix_lowers_kld_on_heldout_text(smollm2_setup):
    """FACTS.md measured (150 records, 40 held out): Q3_K_M 0.1345 -> 0.0932, Q4_K_M 0.0602 -> 0.0370.
    Here (all positions of 2116 held-out tokens scored; measured on the 190-record example data):
    Q3_K_M 0.1045 -> 0.0744, Q4_K_M 0.0476 -> 0.0279."""
    from ftpack.gguf.quantize import quantize_gguf
    from ftpack.inference.fidelity import FidelityReference

    f16, im, heldout, folder = smollm2_setup
    assert im.entries == 210 and im.topup_tokens == 0 and im.records == 150 and im.dropped == []
    figures = {}
    with FidelityReference(f16, heldout, max_tokens=4096) as ref:
        for quant in ("Q3_K_M", "Q4_K_M"):
            for with_im in (False, True):
                res = quantize_gguf(f16, folder / f"{quant}.{with_im}.gguf", quant,
                                    imatrix=im.path if with_im else None)
                assert res.imatrix_missing == []
                figures[quant, with_im] = {**ref.compare(res.path), "bytes": res.bytes}
        tokens = ref.n_tokens
    for (quant, with_im), f in figures.items():
        print(f"SmolLM2-135M {quant} imatrix={'yes' if with_im else 'no '}: mean KLD {f['mean_kld']:.4f} "
              f"(± {f['mean_kld_stderr']:.4f}), p99 {f['p99_kld']:.3f}, top-1 {f['top1_agreement']:.1%}, "
              f"ppl ratio {f['perplexity_ratio']:.4f}, {f['bytes'] / 1e6:.1f} MB  [{tokens} held-out tokens]")
    for quant in ("Q3_K_M", "Q4_K_M"):
        plain, weighted = figures[quant, False], figures[quant, True]
        assert weighted["mean_kld"] < plain["mean_kld"]
        # same tensor types, better rounding: only the quantize.imatrix.* metadata adds bytes
        assert 0 < weighted["bytes"] - plain["bytes"] < 1024


@pytest.mark.slow
def test_smollm2_quant_auto_is_consistent_with_its_table(smollm2_setup):
    from ftpack.core.config import DEFAULT_MAX_KLD
    from ftpack.gguf.quantize import AUTO_CANDIDATES, choose_quant

    f16, im, heldout, folder = smollm2_setup
    result, table = choose_quant(f16, lambda t: folder / f"auto.{t}.gguf", heldout, max_kld=DEFAULT_MAX_KLD,
                                 imatrix=im.path, texts_source="40 held-out example records")
    for row in table:
        print(f"--quant auto on SmolLM2-135M: {row}")
    assert [r["quant"] for r in table] == list(AUTO_CANDIDATES[:len(table)])
    kept = next(r for r in table if r["quant"] == result.quant_type)
    assert kept["mean_kld"] <= DEFAULT_MAX_KLD
    # nothing smaller that was tried is within the budget, and the search stopped at the kept type
    assert all(r["mean_kld"] > DEFAULT_MAX_KLD for r in table if r["bytes"] < kept["bytes"])
    assert table[-1] is kept
    assert sorted(p.name for p in folder.glob("auto.*.gguf")) == [f"auto.{result.quant_type}.gguf"]
