"""Text normalisation and word error rate."""

from __future__ import annotations

import pytest

from earmark.device.wer import corpus_wer, edit_distance, normalize, number_words, wer


def test_normalisation_of_case_punctuation_numbers_and_titles() -> None:
    assert normalize("Mr. Dashwood, it's 10 o'clock!") == "mister dashwood its ten oclock".split()
    assert normalize("I have 1,250 cards") == "i have one thousand two hundred fifty cards".split()
    assert normalize("  ") == []


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (99, "ninety nine"),
        (101, "one hundred one"),
        (2026, "two thousand twenty six"),
    ],  # fmt: skip
)
def test_number_words(n: int, words: str) -> None:
    assert number_words(n) == words


def test_edit_distance_counts_each_kind_of_error() -> None:
    ref = "go forward ten meters".split()
    assert edit_distance(ref, ref) == 0
    assert edit_distance(ref, "go forward two meters".split()) == 1  # substitution
    assert edit_distance(ref, "go ten meters".split()) == 1  # deletion
    assert edit_distance(ref, "go go forward ten meters now".split()) == 2  # insertions
    assert edit_distance([], "a b".split()) == 2


def test_wer_and_corpus_wer() -> None:
    assert wer("Go forward 10 meters.", "go forward ten meters").wer == 0.0
    assert wer("seven of clubs", "seven of hearts").wer == pytest.approx(1 / 3)
    total = corpus_wer([("a b c d", "a b c d"), ("e f", "x f")])
    assert (total.errors, total.ref_words) == (1, 6)
