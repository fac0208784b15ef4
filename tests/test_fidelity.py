"""Quantization fidelity as the build reports it, measured by llama.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftpack.inference.fidelity import FIXED_TEXT, heldout_texts, measure_fidelity
from runnable_gguf import tiny_ggufs  # noqa: F401


def test_same_model_is_perfectly_faithful(tiny_ggufs):
    f16 = tiny_ggufs["f16"]
    fid = measure_fidelity(f16, f16, [FIXED_TEXT])
    assert fid["tokens"] > 50
    assert fid["perplexity_ratio"] == 1.0 and fid["top1_agreement"] == 1.0


def test_quantized_model_differs_measurably(tiny_ggufs):
    f16, q4 = tiny_ggufs["f16"], tiny_ggufs["Q4_K_M"]
    fid = measure_fidelity(f16, q4, [FIXED_TEXT, FIXED_TEXT.upper()], n_ctx=64)
    # A random-weight model loses top-1 agreement under 4-bit quantization (FACTS.md: ~61%).
    assert 0.2 < fid["top1_agreement"] < 1.0
    assert fid["perplexity_quantized"] != fid["perplexity_reference"]
    assert fid["tokens"] > 64  # several context windows were scored


def test_kld_top1_and_perplexity_equal_a_direct_computation(tiny_ggufs):
    """The figures llama-perplexity --kl-divergence reports, recomputed here from the two
    models' raw llama.cpp logits over the same tokens."""
    import math

    import numpy as np

    from ftpack.inference.fidelity import FidelityReference
    from ftpack.inference.runtime import open_llama

    f16, q4 = tiny_ggufs["f16"], tiny_ggufs["Q4_K_M"]
    with FidelityReference(f16, [FIXED_TEXT], n_ctx=64) as ref:
        fid = ref.compare(q4)
        windows = ref.windows
    assert len(windows) > 1

    def logprobs(path):
        rows = []
        with open_llama(path, n_ctx=64, logits_all=True) as llm:
            for w in windows:
                llm.reset()
                llm.eval(w)
                x = np.asarray(llm.scores[:len(w) - 1], dtype=np.float64)
                m = x.max(1, keepdims=True)
                rows.append(x - m - np.log(np.exp(x - m).sum(1, keepdims=True)))
        return np.concatenate(rows)

    lr, lq = logprobs(f16), logprobs(q4)
    targets = np.concatenate([w[1:] for w in windows])
    kld = (np.exp(lr) * (lr - lq)).sum(1)
    assert fid["tokens"] == len(targets)
    assert fid["mean_kld"] == pytest.approx(kld.mean(), abs=2e-6) and fid["mean_kld"] > 0.001
    assert fid["p99_kld"] == pytest.approx(np.percentile(kld, 99), abs=2e-6)
    assert fid["top1_agreement"] == pytest.approx((lr.argmax(1) == lq.argmax(1)).mean(), abs=1e-4)
    nll_r, nll_q = (-lp[np.arange(len(targets)), targets].mean() for lp in (lr, lq))
    assert fid["perplexity_ratio"] == pytest.approx(math.exp(nll_q) / math.exp(nll_r), abs=1e-4)


def test_kld_orders_quantizations_and_one_reference_serves_several(tiny_ggufs):
    from ftpack.inference.fidelity import FidelityReference

    with FidelityReference(tiny_ggufs["f16"], [FIXED_TEXT, FIXED_TEXT.upper()], n_ctx=64) as ref:
        same, q4, q2 = (ref.compare(tiny_ggufs[k]) for k in ("f16", "Q4_K_M", "Q2_K"))
        path = Path(ref._file.name)
        assert path.is_file()
    assert not path.exists()  # the reference's log-probabilities are not left behind
    assert same["mean_kld"] == 0 and same["p99_kld"] == 0 and same["top1_agreement"] == 1.0
    assert 0 < q4["mean_kld"] < q2["mean_kld"]
    assert q4["median_kld"] <= q4["p99_kld"] <= q4["highest_kld"]


def test_a_build_measures_on_its_eval_split_never_the_train_split(tmp_path):
    import json

    from ftpack.core.layout import BuildLayout
    from ftpack.training.templates import load_template

    layout = BuildLayout(tmp_path)
    layout.data_dir.mkdir()

    def write(path, word):
        path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{word} {i}?"},
                                                         {"role": "assistant", "content": "ok"}]}) + "\n"
                                for i in range(3)), encoding="utf-8")

    write(layout.train_file, "trainq")
    tpl = load_template("chatml")
    texts, source = heldout_texts(layout, tpl)
    assert texts == [FIXED_TEXT] and "no eval split" in source
    write(layout.eval_file, "evalq")
    texts, source = heldout_texts(layout, tpl)
    assert len(texts) == 3 and all("evalq" in t and "trainq" not in t for t in texts)
    assert texts[0] == tpl.training_text([{"role": "user", "content": "evalq 0?"},
                                          {"role": "assistant", "content": "ok"}])
    assert source.startswith("the eval split (3 conversations")
