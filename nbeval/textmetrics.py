"""Text comparison with one documented normalisation, used by every suite that reads text.

normalise(s): Unicode NFKC, uppercase, every character outside A–Z and 0–9 becomes a space,
runs of spaces collapse to one, ends trimmed. So "Hello,  world!" and "HELLO WORLD" are equal;
"0" and "O" are not (a renderer that confuses them made an error).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

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
    """exact_match, cer (edits / truth length), ned (edits / longer length) and word_recall (multiset)."""
    t, r = normalise(truth), normalise(read)
    d = edit_distance(t, r)
    tw, rw = Counter(t.split()), Counter(r.split())
    return {
        "exact_match": float(t == r),
        "cer": d / max(len(t), 1),
        "ned": d / max(len(t), len(r), 1),
        "word_recall": sum((tw & rw).values()) / max(sum(tw.values()), 1),
    }


def shows_text(read: str, new: str, old: str) -> bool:
    """Whether a reading shows a text changed from `old` to `new`: the new text is there and the old
    one is gone (unless the old one is part of the new one). What an edit of the text is judged by."""
    read, new, old = f" {normalise(read)} ", f" {normalise(new)} ", f" {normalise(old)} "
    return new in read and (old not in read or old in new)
