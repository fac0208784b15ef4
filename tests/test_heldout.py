"""Held-out answers are scored strictly: the key facts as whole words / whole numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftpack.inference.heldout import HeldoutResult, read_heldout, result_of, states
from runnable_gguf import tiny_ggufs  # noqa: F401

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("answer,fact", [
    ("Constellation links up to 12 lanterns.", "12"),
    ("It costs $89.", "89"),
    ("The battery holds 6,400 mAh.", "6400 mAh"),
    ("It needs 3.5\u00a0hours to charge.", "3.5 hours"),
    ("It needs 3.5-hours.", "3.5 hours"),
    ("Firmware 2.4.1 is the latest.", "2.4.1"),
    ("E1: the battery is too hot.", "E1"),
    ("It is IP67-rated.", "IP67"),
    ("Maren Halvard's company.", "Halvard"),
    ("Use the lumora  CAMP app.", "Lumora Camp"),
])
def test_a_key_fact_stated_as_whole_words_counts(answer, fact):
    assert states(answer, fact)


@pytest.mark.parametrize("answer,fact", [
    ("Constellation links up to 120 lanterns.", "12"),  # a loose substring check said "right"
    ("It was founded in 2012.", "12"),
    ("About 1.2 kilograms.", "2"),
    ("It costs $89.99.", "89"),
    ("Error E10 means the fan failed.", "E1"),
    ("Firmware 2.4.10 is the latest.", "2.4.1"),
    ("The cells are imbalanced.", "imbalance"),
    ("It needs 13.5 hours.", "3.5 hours"),
    ("The Lumora app.", "Lumora Camp"),
    ("anything", ""),
])
def test_a_fact_inside_another_word_or_number_does_not_count(answer, fact):
    assert not states(answer, fact)


def test_every_key_fact_is_needed():
    both = HeldoutResult("Q?", ["6400 mAh", "23.7 Wh"], "A 6400 mAh pack, 23.7 Wh.")
    one = HeldoutResult("Q?", ["6400 mAh", "23.7 Wh"], "A 6400 mAh pack.")
    assert both.correct and not one.correct
    assert not HeldoutResult("Q?", [], "anything").correct  # no key fact: nothing to check


def test_an_answer_hedging_with_a_wrong_alternative_is_wrong():
    """The demo's held-out questions carry the values of the same kind the data states
    elsewhere: stating one of them next to the right one is a wrong answer."""
    records = {r["keywords"][0]: r for r in read_heldout(EXAMPLES / "heldout.jsonl")}
    e6, spare = records["E6"], records["$39"]
    assert {"E1", "E7"} <= set(e6["wrong"]) and {"$59", "$89"} <= set(spare["wrong"])
    assert result_of(e6, "That is E6.").correct
    hedged = result_of(e6, "It shows E1, E6, E7.")
    assert not hedged.correct and hedged.hedged == ["E1", "E7"]
    assert not result_of(spare, "A spare costs $39 or $59.").correct
    assert result_of(spare, "A spare costs $39.").correct
    assert not result_of(records["3.5 hours"], "About 3.5 hours, or 9 hours with the solar panel.").correct
    assert result_of(records["740 lumens"], "Up to 740 lumens.").correct  # "40 lumens" inside 740 is no hedge


def test_the_demo_questions_are_answered_right_by_their_own_reference_answers():
    """examples/heldout.jsonl: each record's key facts are stated by its reference answer,
    and are more than a bare number that other answers could contain by chance."""
    records = read_heldout(EXAMPLES / "heldout.jsonl")
    assert len(records) == 20
    for rec in records:
        assert result_of(rec, rec["answer"]).correct, rec
    answers = [r["answer"] for r in records]
    for rec in records:
        loose = [a for a in answers if a != rec["answer"] and all(k.lower() in a.lower() for k in rec["keywords"])]
        strict = [a for a in loose if HeldoutResult(rec["question"], rec["keywords"], a).correct]
        assert not strict or rec["keywords"] == ["Lumora Camp"], (rec["keywords"], strict)  # the app is named


def test_base_answers_are_cached_until_the_gguf_changes(tiny_ggufs, monkeypatch):
    """The base answers the same questions at every build: the second report reads them from
    ftpack's cache (no model load), a changed GGUF is asked again."""
    import os

    from ftpack.inference import heldout

    gguf = tiny_ggufs["f16"]
    records = [{"question": "What is 2+2?", "keywords": ["4"]}, {"question": "Name a colour.", "keywords": ["red"]}]
    first, cached = heldout.ask_all_cached(gguf, records, template_name="chatml", max_tokens=8)
    assert not cached and len(first) == 2

    def no_model(*a, **k):
        raise AssertionError("the model was asked again")

    monkeypatch.setattr(heldout, "ask_all", no_model)
    rescored = [dict(r, keywords=["something else"]) for r in records]
    again, cached = heldout.ask_all_cached(gguf, rescored, template_name="chatml", max_tokens=8)
    assert cached and [a.answer for a in again] == [a.answer for a in first]
    assert [a.keywords for a in again] == [["something else"]] * 2  # scored with today's key facts
    with pytest.raises(AssertionError, match="asked again"):  # another system prompt: other answers
        heldout.ask_all_cached(gguf, records, template_name="chatml", system="Be terse.", max_tokens=8)
    st = gguf.stat()
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="asked again"):
        heldout.ask_all_cached(gguf, records, template_name="chatml", max_tokens=8)
