"""Evaluation and calibration text: English sentences from Python's own documentation.

``pydoc_data.topics.topics`` (installed with every CPython) holds the language reference
topics that ``help()`` shows: ~80 topics, ~460k characters of prose and code. We keep the
prose: text is split into paragraphs on blank lines; a paragraph is prose when every line
has the same indent (code and grammar are ragged), none starts with ``>>>``, ``...`` or
``|`` and none is a heading underline. Each prose paragraph is joined into one line and
split into sentences at ``. `` / ``? `` / ``! `` before a capital letter. Sentences of 6
to 60 words and at most 400 characters that start with a capital, end with ``.``/``?``/
``!`` and are at least 80% letters and spaces are kept; duplicates are dropped (the
first one wins).

The order is fixed (topics sorted by name, text order within a topic), so the lists are
the same on every run of the same Python version. Every 4th sentence (index 3, 7, 11...)
goes to the calibration split, the rest to the evaluation split: the splits are disjoint
and drawn from the same topics. Python 3.11 gives 1,312 evaluation and 437
calibration sentences.
"""

from __future__ import annotations

import functools
import re

__all__ = ["SPLITS", "sentences"]

SPLITS = ("eval", "calib")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_HEADING = re.compile(r"^[*=\-~^]{3,}$")


def _is_prose(paragraph: str) -> bool:
    lines = [line for line in paragraph.splitlines() if line.strip()]
    if not lines or any(_HEADING.match(line.strip()) for line in lines):
        return False
    if any(line.lstrip().startswith((">>>", "...", "|")) for line in lines):
        return False        # interactive sessions, tables
    indents = {len(line) - len(line.lstrip()) for line in lines}
    return len(indents) == 1        # code and grammar are ragged; prose is flush


def _keep(sentence: str) -> bool:
    words = sentence.split()
    if not 6 <= len(words) <= 60 or len(sentence) > 400:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in sentence)
    return (letters >= 0.8 * len(sentence) and sentence[-1] in ".!?"
            and sentence[0].isupper())


@functools.lru_cache(maxsize=1)
def _all_sentences() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    seen: dict[str, None] = {}
    for name in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[name]):
            if not _is_prose(paragraph):
                continue
            text = " ".join(paragraph.split())
            for s in _SENTENCE_END.split(text):
                s = s.strip()
                if _keep(s) and s not in seen:
                    seen[s] = None
    return tuple(seen)


def sentences(split: str = "eval", n: int | None = None) -> list[str]:
    """Sentences of one split, in a fixed order.

    Args:
        split: ``"eval"`` (3 of every 4 sentences) or ``"calib"`` (the 4th).
        n: the first ``n`` sentences of the split (all when None).

    Returns:
        A new list of strings; ``sentences("eval")`` and ``sentences("calib")`` share none.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    everything = _all_sentences()
    chosen = [s for i, s in enumerate(everything) if (i % 4 == 3) == (split == "calib")]
    if n is None:
        return chosen
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int or None; got {n!r}")
    if n > len(chosen):
        raise ValueError(f"n={n} but the {split!r} split has only {len(chosen)} sentences")
    return chosen[:n]
