"""Twins of forget examples: the same text with the word replaced by a tokenstein, aligned token by token.

The ``tokenstein`` and ``value_swap`` losses compare the model on a forget example
with the base model on its *twin*, the example with every whole-word mention of the
word replaced by a made-up word of the same token statistics (case kept: Word ->
Tokenstein). Both texts are encoded whole, as the trainer encodes them (the same BOS
convention), and aligned here:

* text between mentions is identical, so its tokens are too, once the tokenizer has
  left the word behind: BPE with a GPT-2 style pre-tokenizer (and tiktoken) splits at
  every letter/non-letter boundary, so ``encode(text[:end of a mention])`` is a prefix
  of ``encode(text)``. That is checked, not assumed: a tokenizer that merges across
  the word's end is refused with the record named;
* a mention's tokens run from the first token where the two encodings part (the word's
  first piece carries the space before it) to the end of the mention;
* aligned positions: every shared token, and the *last* token of each mention (it
  predicts the same next token in both texts). Positions inside a mention are not
  aligned, since the word and the tokenstein need not split into as many tokens in
  context; where they do, :attr:`Twin.pieces` pairs them piece by piece (what value
  swapping needs).

The population rotates: example draw ``d`` (counted over the whole run, so resume is
exact) uses tokensteins ``d * twins + j`` modulo the population, ``j < twins``: each
made-up word is used equally often and no single one is learned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import SupercalError


@dataclass
class Twin:
    ids: list[int]  # the twin's tokens (the same window of text as the example)
    pos: dict[int, int]  # example token position -> twin token position, for aligned positions
    spans: list[tuple[int, int, int, int]]  # mentions: (start, end) in the example, (start, end) in the twin
    pieces: dict[int, int] = field(default_factory=dict)  # example -> twin position inside mentions of equal length


def mention_spans(text: str, word: str) -> list[tuple[int, int]]:
    """Character spans of whole-word, case-insensitive mentions of ``word`` (as supercal negatives finds them)."""
    return [m.span() for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE)]


def _common(a: list[int], b: list[int], i: int, j: int) -> int:
    n = 0
    while i + n < len(a) and j + n < len(b) and a[i + n] == b[j + n]:
        n += 1
    return n


def _mention_ends(tokenizer: Any, text: str, ids: list[int], spans: list[tuple[int, int]], where: str) -> list[int]:
    ends = []
    for _, end in spans:
        head = list(tokenizer.encode(text[:end]))
        if ids[: len(head)] != head:
            raise SupercalError(f"{where}: the tokenizer merges the word with the text after it; the tokenstein "
                                "losses need a tokenizer that splits at the end of a word (GPT-2 style BPE, tiktoken)")
        ends.append(len(head))
    return ends


def align(tokenizer: Any, text: str, twin_text: str, spans: list, twin_spans: list, *, where: str = "record"):
    """(example ids, :class:`Twin`) for ``text`` and ``twin_text`` whose mentions are ``spans`` / ``twin_spans``."""
    ids, tids = list(tokenizer.encode(text)), list(tokenizer.encode(twin_text))
    ends = _mention_ends(tokenizer, text, ids, spans, where)
    tends = _mention_ends(tokenizer, twin_text, tids, twin_spans, f"{where} (twin)")
    pos: dict[int, int] = {}
    out_spans, pieces = [], {}
    i = j = 0
    for e, te in zip(ends, tends):
        c = _common(ids, tids, i, j)
        pos.update({i + m: j + m for m in range(c)})
        s, ts = min(i + c, e - 1), min(j + c, te - 1)  # a mention has at least one token of its own
        out_spans.append((s, e, ts, te))
        pos[e - 1] = te - 1
        if e - s == te - ts:
            pieces.update({s + m: ts + m for m in range(e - s)})
        i, j = e, te
    c = _common(ids, tids, i, j)
    if i + c != len(ids) or j + c != len(tids):
        raise SupercalError(f"{where}: the text after the last mention encodes differently in the twin; "
                            "cannot align it token by token")
    pos.update({i + m: j + m for m in range(c)})
    return ids, Twin(tids, pos, out_spans, pieces)


def swap_case(found: str, other: str) -> str:
    """``other`` in the case of ``found``: Word -> Other, WORD -> OTHER, word -> other."""
    if found.isupper() and len(found) > 1:
        return other.upper()
    if found[:1].isupper():
        return other[:1].upper() + other[1:]
    return other


def make_twin(tokenizer: Any, text: str, word: str, other: str, *, where: str = "record"):
    """(example ids, :class:`Twin`) of ``text`` with every mention of ``word`` replaced by ``other``."""
    spans = mention_spans(text, word)
    if not spans:
        raise SupercalError(f"{where} does not mention {word!r}; the tokenstein losses need the word in every record")
    parts, twin_spans, last, shift = [], [], 0, 0
    for s, e in spans:
        rep = swap_case(text[s:e], other)
        parts += [text[last:s], rep]
        twin_spans.append((s + shift, s + shift + len(rep)))
        shift += len(rep) - (e - s)
        last = e
    twin_text = "".join(parts) + text[last:]
    return align(tokenizer, text, twin_text, spans, twin_spans, where=where)


def window(ids: list[int], twin: Twin, start: int, stop: int) -> Twin:
    """The twin cut to the example's token window ``[start, stop)`` (the trainer's truncation)."""
    if start == 0 and stop == len(ids):
        return twin
    inside = [(p, q) for p, q in twin.pos.items() if start <= p < stop]
    if not inside:
        raise SupercalError("the truncated example shares no token with its twin")
    tstart = min(q - (p - start) for p, q in inside)
    tstart = max(tstart, 0)
    tstop = max(q + (stop - p) for p, q in inside)
    tstop = min(tstop, len(twin.ids))

    def shift(d: dict) -> dict:
        return {p - start: q - tstart for p, q in d.items() if start <= p < stop and tstart <= q < tstop}

    spans = [(s - start, e - start, ts - tstart, te - tstart) for s, e, ts, te in twin.spans
             if start <= s and e <= stop and tstart <= ts and te <= tstop]
    return Twin(twin.ids[tstart:tstop], shift(twin.pos), spans, shift(twin.pieces))


def infer_word(records: list[dict]) -> str:
    """The word the forget completions start with (``supercal negatives`` puts it first), case-folded."""
    firsts = {m.group(0).lower() for r in records if (m := re.match(r"\w+", str(r["completion"]).lstrip()))}
    if len(firsts) != 1:
        raise SupercalError("cannot tell the word from the forget completions (they start with "
                            f"{', '.join(sorted(firsts)[:3]) or 'no word'}); give --word")
    return firsts.pop()


class TwinPool:
    """Twins of every forget record for every population tokenstein, made on first use and kept.

    ``example(i)`` is the trainer's example ``i`` (ids cut to ``max_tokens``); ``twin(i, k)`` its twin with
    tokenstein ``k``, cut to the same window.
    """

    def __init__(self, records: list[dict], tokenizer: Any, word: str, population: list[str], *, max_tokens: int,
                 examples: list):
        if not population:
            raise SupercalError("the tokenstein population is empty; give --tokensteins N with --counts, "
                                "or --tokenstein-file")
        bad = [t for t in population if t.lower() == word.lower()]
        if bad:
            raise SupercalError(f"the tokenstein population contains the word {word!r} itself")
        self.records, self.tok, self.word, self.population = records, tokenizer, word, list(population)
        self.max_tokens, self.examples = max_tokens, examples
        self._cache: dict[tuple[int, int], Twin] = {}

    def twin(self, i: int, k: int) -> Twin:
        key = (i, k % len(self.population))
        if key not in self._cache:
            rec = self.records[i]
            text = str(rec["prompt"]) + str(rec["completion"])
            full, tw = make_twin(self.tok, text, self.word, self.population[key[1]], where=f"forget record {i + 1}")
            cut, _ = self.examples[i]
            start = _find(full, cut)
            self._cache[key] = window(full, tw, start, start + len(cut))
        return self._cache[key]


def _find(full: list[int], cut: list[int]) -> int:
    if len(cut) == len(full):
        return 0
    for s in range(len(full) - len(cut) + 1):
        if full[s:s + len(cut)] == cut:
            return s
    raise SupercalError("a truncated forget example is not a window of its record")  # cannot happen


def rotation(draw: int, twins: int, population: int) -> list[int]:
    """Population indices for example draw ``draw`` (0-based over the run): ``twins`` consecutive ones."""
    return [(draw * twins + j) % population for j in range(twins)]


def _same_count_in_context(tokenizer: Any, word: str, other: str) -> bool:
    return len(tokenizer.encode(". " + word)) == len(tokenizer.encode(". " + other))


def training_population(cfg, word: str, tokenizer: Any) -> list[str]:
    """The run's made-up words: ``cfg.tokenstein_words`` as given, else from ``--tokenstein-file``, else
    ``cfg.tokensteins`` made from ``--counts`` with ``--tokenstein-seed``, none a word of the counted corpora or
    of the forget and retain data (:func:`supercal_mlx.text.tokenstein.population_from_files`, as eval makes
    its own). For value_swap, only words with as many tokens as the word after a space (so values pair piece
    by piece in running text)."""
    from ..text.tokenstein import population_from_files, read_tokenstein_file

    if cfg.tokenstein_words:
        return list(cfg.tokenstein_words)
    if cfg.tokenstein_file:
        words = read_tokenstein_file(cfg.tokenstein_file)
    else:
        n = cfg.tokensteins * (4 if cfg.loss == "value_swap" else 1)
        words, _ = population_from_files(word, cfg.counts, n=n, seed=cfg.tokenstein_seed, model_dir=cfg.model,
                                         data_files=[f for f in (cfg.forget, cfg.retain) if f])
    if cfg.loss == "value_swap":
        words = [w for w in words if _same_count_in_context(tokenizer, word, w)]
        if not words:
            raise SupercalError(f"no tokenstein has as many tokens as {word!r} after a space; value_swap pairs values "
                                "piece by piece: give other words with --tokenstein-file")
    return words if cfg.tokenstein_file else words[: cfg.tokensteins]


def twin_pool(cfg, tokenizer: Any, examples: list):
    """(the :class:`TwinPool` of the run, ``cfg`` with ``word`` and ``tokenstein_words`` filled in, for config.yaml)."""
    import dataclasses

    from ..io import read_jsonl

    records = read_jsonl(cfg.forget, text=("prompt", "completion"))
    word = cfg.word or infer_word(records)
    words = training_population(cfg, word, tokenizer)
    pool = TwinPool(records, tokenizer, word, words, max_tokens=cfg.max_tokens, examples=examples)
    return pool, dataclasses.replace(cfg, word=word, tokenstein_words=words)
