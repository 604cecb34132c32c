"""Degeneration: whether a generated text collapsed into a repeated token or phrase.

Used by ``supercal probe`` (a count on stderr), the trainer's ``--stop-on-collapse`` guard, ``eval``'s
degeneration share and ``report``'s probe tables. Hand-written: mlx-lm has no such measure.
"""

from __future__ import annotations


def repetition_share(text: str, *, min_repeats: int = 3) -> float:
    """Share of ``text`` (in characters) that lies inside back-to-back repeats of some unit.

    A stretch counts when it is periodic -- one unit of any length, from one character ("!!!!") to a
    third of the text (a looping sentence), repeated at least ``min_repeats`` times in a row, the last
    copy allowed to lack a one-character separator ("the the the"). This is what a generation that
    collapsed looks like ("PlayingPlayingPlaying", "the the the", "!!!!!!"); ordinary prose has almost
    no such stretches, and a list ("1, 2, 3, 4") repeats its separator but not back to back.
    """
    import numpy as np

    a = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # one code point per element
    n = len(a)
    cover = np.zeros(n + 1, dtype=np.int32)  # +1 where a periodic stretch starts, -1 after it ends
    for p in range(1, (n + 1) // min_repeats + 1):  # the longest unit that can fit min_repeats times
        same = np.concatenate(([0], (a[p:] == a[:-p]).astype(np.int8), [0]))  # same[j + 1]: a[j + p] == a[j]
        edges = np.diff(same)
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        # a run of matches j in [start, end) means a[start : end + p] has period p
        long_enough = ends - starts + p >= max(min_repeats * p - 1, min_repeats)
        for s0, e0 in zip(starts[long_enough], ends[long_enough]):
            cover[s0] += 1
            cover[e0 + p] -= 1
    return float((np.cumsum(cover[:n]) > 0).mean()) if n else 0.0


def is_degenerate(text: str, *, threshold: float = 0.5, min_chars: int = 8) -> bool:
    """True when the text collapsed into a repeated token or phrase: more than ``threshold`` of it lies in
    back-to-back repeats (see :func:`repetition_share`), spanning at least ``min_chars`` characters
    (so a short "Hi!!!" is not called degenerate)."""
    share = repetition_share(text)
    return share > threshold and share * len(text) >= min_chars
