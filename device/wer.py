"""Word error rate with the text normalisation speech tests need.

Why normalise: a recogniser writes "mr" and "10" where a reference says "mister" and "ten";
counting those as errors measures spelling conventions, not recognition. Both sides are
lower-cased, stripped of punctuation (apostrophes join: "don't" -> "dont"), common titles are
spelt out, and numbers up to 999,999 become words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint", "ok": "okay"}


def number_words(n: int) -> str:
    """Spell out 0..999,999 the way a transcript would ("one hundred twenty three")."""
    if n < 0 or n > 999_999:
        raise ValueError("only 0..999999 is spelt out")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")
    thousands, rest = divmod(n, 1000)
    return f"{number_words(thousands)} thousand" + (f" {number_words(rest)}" if rest else "")


def normalize(text: str) -> list[str]:
    """Text as a list of comparable words."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # 1,000 -> 1000
    text = re.sub(r"\d+", lambda m: f" {_spell(m.group())} ", text)
    words = re.sub(r"[^a-z0-9\s]", " ", text).split()
    return [_ABBREVIATIONS.get(w, w) for w in words]


def _spell(digits: str) -> str:
    n = int(digits)
    return number_words(n) if n <= 999_999 else " ".join(_ONES[int(d)] for d in digits)


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions, insertions, deletions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


@dataclass(frozen=True)
class WerResult:
    errors: int
    ref_words: int

    @property
    def wer(self) -> float:
        return self.errors / self.ref_words if self.ref_words else 0.0


def wer(ref: str, hyp: str) -> WerResult:
    r, h = normalize(ref), normalize(hyp)
    return WerResult(edit_distance(r, h), len(r))


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> WerResult:
    """Total errors over total reference words (not a mean of per-clip rates)."""
    errors = words = 0
    for ref, hyp in pairs:
        res = wer(ref, hyp)
        errors += res.errors
        words += res.ref_words
    return WerResult(errors, words)
