"""Text comparison with one documented normalisation, used by every suite that reads text.

normalise(s): Unicode NFKC, uppercase, every character outside A–Z and 0–9 becomes a space,
runs of spaces collapse to one, ends trimmed. So "Hello,  world!" and "HELLO WORLD" are equal;
"0" and "O" are not (a renderer that confuses them made an error).

OneIG-Bench's text score (Chang et al. 2025) follows its own code, github.com/OneIG-Bench/OneIG-Benchmark
at 41b4983: scripts/text/text_score.py (aggregation) and scripts/text/text_utils.py (per image).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import numpy as np
from numpy.typing import ArrayLike

_NOT_ALNUM = re.compile(r"[^A-Z0-9]+")


def normalise(s: str) -> str:
    return _NOT_ALNUM.sub(" ", unicodedata.normalize("NFKC", s).upper()).strip()


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (unit costs)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def compare(truth: str, read: str) -> dict[str, float]:
    """exact_match, cer (edits / truth length), ned (edits / longer length) and word_recall (multiset);
    and the per-sample parts of OneIG-Bench's text score, which pools them over a dataset:
    edit_distance (edits, not normalised: OneIG's ED), words_matched and words_requested (word_recall's
    numerator and denominator, which OneIG's WAC sums separately). OneIG's per-image completion
    (ED == 0) is exact_match, so it is not repeated. OneIG's own preprocessing keeps case and deletes
    punctuation; here the one `normalise` applies to all of them."""
    t, r = normalise(truth), normalise(read)
    d = edit_distance(t, r)
    tw, rw = Counter(t.split()), Counter(r.split())
    matched, requested = sum((tw & rw).values()), sum(tw.values())
    return {
        "exact_match": float(t == r),
        "cer": d / max(len(t), 1),
        "ned": d / max(len(t), len(r), 1),
        "word_recall": matched / max(requested, 1),
        "edit_distance": float(d),
        "words_matched": float(matched),
        "words_requested": float(requested),
    }


ONEIG_MAX_EDIT_DISTANCE = 100  # OneIG's cap for English text (50 for Chinese)


def oneig_text_score(ed: ArrayLike, cr: ArrayLike, wac: ArrayLike) -> np.ndarray:
    """OneIG's text score 1 − min(100, ED)·(1 − CR)·(1 − WAC)/100, from dataset-level ED (mean edit
    distance), CR (completion rate) and WAC (word accuracy), as text_score.py combines them after
    averaging. Elementwise, so one call scores every bootstrap resample. Any of a perfect CR, a perfect
    WAC or a zero ED gives 1; the cap keeps a few long garbled texts from driving it below 0."""
    ed, cr, wac = np.asarray(ed, dtype=float), np.asarray(cr, dtype=float), np.asarray(wac, dtype=float)
    return 1 - np.minimum(ONEIG_MAX_EDIT_DISTANCE, ed) * (1 - cr) * (1 - wac) / ONEIG_MAX_EDIT_DISTANCE


def shows_text(read: str, new: str, old: str) -> bool:
    """Whether a reading shows a text changed from `old` to `new`: the new text is there and the old
    one is gone (unless the old one is part of the new one). What an edit of the text is judged by."""
    read, new, old = f" {normalise(read)} ", f" {normalise(new)} ", f" {normalise(old)} "
    return new in read and (old not in read or old in new)
