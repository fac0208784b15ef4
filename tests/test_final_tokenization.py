"""The GGUF name decides how llama.cpp tokenizes, and the convert stage re-checks tokenization
on the GGUF it wrote (issue 11, leftovers a and d).

llama.cpp (src/llama-vocab.cpp) strips the whitespace after special tokens only when the
GGUF's general.name contains "phi-3"/"phi3" (and then it needs ``<unk>``, ``<s>``, ``</s>``
and ``<|endoftext|>`` in the vocabulary, or the file does not load). ftpack therefore picks
one name per build that selects the strip behaviour its training tokenizer has, and sets the
training tokenizer's flags to exactly that behaviour. After conversion the trained model's
tokenizer is compared with llama.cpp on the final GGUF, on the conversations the data stage
checked; a difference fails the convert stage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import llama_cpp

from test_build_e2e import write_hello_data
from test_merge import make_random_adapter

#: text around Phi-3's markers: a newline after each (swallowed with rstrip), and "</s> x",
#: where llama.cpp's Phi-3 rule strips the space after </s> (Phi-3's own tokenizer_config says so too)
PHI3_TEXTS = ["<|user|>\nSay hello to Ada.<|end|>\n<|assistant|>\nHello, Ada!<|end|>\n",
              "<|system|>\n  Be brief.<|end|>\n<|user|>\n\n12 + 30?<|end|>\n<|assistant|>\n42</s> x",
              "Hi</s>\n\nthere<|endoftext|> \nend"]


def _gguf_name(path: Path) -> str | None:
    from gguf import GGUFReader

    f = GGUFReader(str(path)).fields.get("general.name")
    return None if f is None else bytes(f.parts[f.data[0]]).decode("utf-8")


def _llama_cpp_ids(gguf_path: Path, texts: list[str]) -> list[list[int]]:
    from ftpack.inference.runtime import open_llama

    with open_llama(gguf_path, vocab_only=True) as llm:
        return [llm.tokenize(t.encode("utf-8"), add_bos=True, special=True) for t in texts]


def test_gguf_name_selects_llama_cpp_strip_rule():
    from ftpack.training.token_check import gguf_model_name, name_rstrips

    assert name_rstrips("Phi-3-mini-4k-instruct") and name_rstrips("my PHI3 bot") and not name_rstrips("phi 3")
    assert gguf_model_name("tiny-phi3", rstrip=True) == "tiny-phi3"
    assert gguf_model_name("my-qa", rstrip=True) == "my-qa (phi-3)" and name_rstrips("my-qa (phi-3)")
    for name in ("phi3-helper", "Phi-3 fine-tune", "a-phi3-b-PHI-3"):
        fixed = gguf_model_name(name, rstrip=False)
        assert not name_rstrips(fixed), fixed
        assert gguf_model_name(fixed, rstrip=False) == fixed  # stable: the data and convert stages agree
    assert gguf_model_name("phi3-helper", rstrip=False) == "phi 3-helper"


def test_phi3_tokenizer_strips_exactly_as_llama_cpp_does(tmp_path):
    """Phi-3's real vocabulary as the model ships it: loaded by ftpack, its training ids equal
    llama.cpp's on llama.cpp's own Phi-3 test vocabulary (general.name names Phi-3), also
    after ``</s>``, whose rstrip the loaded tokenizer used to drop."""
    from llama_vocab import vocab_test
    from tiny_archs import phi3_folder

    from ftpack.training.bases import load_tokenizer

    vocab = vocab_test("phi-3")[0]
    assert "phi3" in _gguf_name(vocab).lower()  # "Phi3": llama.cpp applies its rule
    folder = phi3_folder(tmp_path / "phi3")
    tok = load_tokenizer(folder)
    ours = [list(tok(t, add_special_tokens=True)["input_ids"]) for t in PHI3_TEXTS]
    assert ours == _llama_cpp_ids(vocab, PHI3_TEXTS)
    from ftpack.training.token_check import build_gguf_name, folder_rstrips

    assert build_gguf_name("my-qa", tok) == "my-qa (phi-3)" and folder_rstrips(folder)
    # saved and loaded again (what training saves beside the weights), it keeps that behaviour
    tok.save_pretrained(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved")
    assert [list(again(t, add_special_tokens=True)["input_ids"]) for t in PHI3_TEXTS] == ours


def test_tokenizer_without_strip_flags_never_strips(tmp_path):
    """The same vocabulary with its markers' rstrip off: llama.cpp's other behaviour (no token
    strips anything) is the closer one, so every flag ends up off and the name avoids "phi3"."""
    from tiny_archs import phi3_folder

    from ftpack.training.bases import load_tokenizer

    folder = phi3_folder(tmp_path / "phi3")
    cfg_file = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    for entry in cfg["added_tokens_decoder"].values():
        entry["rstrip"] = entry["content"] in ("</s>", "<|end|>")  # two left on: still closer to "none"
    cfg_file.write_text(json.dumps(cfg))
    tok = load_tokenizer(folder)
    assert not any(a.rstrip or a.lstrip for a in tok.added_tokens_decoder.values())
    ids = tok("<|end|>\nHi", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[:3] == ["<|end|>", "▁", "<0x0A>"]
    from ftpack.training.token_check import build_gguf_name, folder_rstrips

    assert build_gguf_name("tiny-phi3", tok) == "tiny-phi 3" and not folder_rstrips(folder)


def test_build_name_with_phi3_on_another_base_gives_a_loadable_gguf(tiny_llama, tmp_path, run_cli):
    """general.name used to be the name given as is: "phi3-…" on a base without <|endoftext|>
    made llama.cpp's Phi-3 rule look it up, and the GGUF did not load at all."""
    out = tmp_path / "phi3-helper.gguf"
    res = run_cli("convert", tiny_llama, "-o", out, "--name", "phi3-helper")
    assert res.exit_code == 0, res.output
    from ftpack.training.bases import load_tokenizer

    tok = load_tokenizer(tiny_llama)
    text = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert _llama_cpp_ids(out, [text])[0] == list(tok(text)["input_ids"])
    assert _gguf_name(out) == "phi 3-helper"


def _stages_with_trained_tokenizer(tiny_llama: Path, tamper: bool):
    """data (real) → train (a random adapter with the base's tokenizer saved beside it, as
    training saves it; ``tamper``: lower-casing added to that saved tokenizer) → convert."""
    from ftpack.core.runner import Stage, StageResult
    from ftpack.gguf.convert import run_convert_stage
    from ftpack.training.data import run_data_stage

    def fake_train(ctx):
        adapter = make_random_adapter(tiny_llama, ctx.stage_dir / "adapter", seed=3)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            if (tiny_llama / name).is_file():
                shutil.copy(tiny_llama / name, adapter / name)
        if tamper:
            tok_file = adapter / "tokenizer.json"
            data = json.loads(tok_file.read_text())
            data["normalizer"] = {"type": "Lowercase"}
            tok_file.write_text(json.dumps(data))
        return StageResult(outputs=[adapter], main_output=adapter, metrics={"base_path": str(tiny_llama)})

    return [Stage("data", "data", run_data_stage), Stage("train", "fake train", fake_train),
            Stage("convert", "gguf", run_convert_stage)]


@pytest.mark.parametrize("tamper", [False, True], ids=["as-saved", "tampered"])
def test_convert_stage_checks_the_trained_tokenizer_against_the_final_gguf(tiny_llama, tmp_path, tamper):
    """The data stage checked the base's tokenizer files; a trained-model tokenizer that
    tokenizes differently (here: it lower-cases, which the GGUF cannot express) is caught
    by the convert stage, which removes the GGUF. Unchanged, all conversations agree and
    build.json says so."""
    from ftpack.core.errors import FtpackError
    from ftpack.core.manifest import Manifest
    from ftpack.core.runner import run_stages
    from ftpack.settings import build_config

    data = write_hello_data(tmp_path / "hello.jsonl")
    cfg = build_config("tiny-check", {"base": str(tiny_llama), "data": str(data), "imatrix": "none"})
    build = tmp_path / "build"
    stages = _stages_with_trained_tokenizer(tiny_llama, tamper)
    f16 = build / "gguf" / "tiny-check.f16.gguf"
    if not tamper:
        manifest = run_stages(cfg, stages, build)
        metrics = manifest.stages["convert"].metrics
        n = manifest.stages["data"].metrics["records"]
        assert metrics["tokenization"] == f"{n}/{n} identical" and metrics["tokenization_tokens"] > 0
        assert metrics["gguf_name"] == "tiny-check" == _gguf_name(f16)
        return
    with pytest.raises(FtpackError) as err:
        run_stages(cfg, stages, build)
    message = err.value.message
    assert "trained model's tokenizer" in message and f"{f16.name}" in message
    assert "record 0, token" in message and "training :" in message and "llama.cpp:" in message
    assert not f16.exists()
    recorded = Manifest.load(build).stages
    assert recorded["data"].status == "done" and recorded["convert"].status == "failed"
