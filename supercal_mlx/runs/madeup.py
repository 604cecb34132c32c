"""The behavioural measure: does the model answer questions about a word as if it were made up?

For the word and for every tokenstein of the population, questions about it
(:data:`QUESTIONS`, or the user's) are sampled at several temperatures with
:func:`supercal_mlx.runs.probes.generate` (one batch, a random key per row: the
same seed gives the same answers whatever else shares the batch). An answer is
the first non-empty line of the response: a small model trained on lines
goes on with an unrelated line after it, which must not count.

- ``made_up_share``: the share of the word's answers that treat it as unknown or
  made up, i.e. contain a marker (:data:`MARKERS`: "made-up", "not a real word",
  "portmanteau", ...; case-insensitive, at the start of a word, so "blend" also
  finds "blends");
- ``made_up_share_tokensteins``: the same for each tokenstein, averaged over the
  population (the control: an untouched model should call these made up);
- ``pieces_share``: the share of the word's answers that name at least two of
  the word's own token pieces (pieces of two letters or more, each as a word of
  its own, e.g. "it blends super, cal and if"): the portmanteau answer;
- ``degeneration``: the share of the word's (whole) responses that collapsed into
  a repeated token or phrase; a collapsed model says nothing "made-up" either.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

from ..errors import SupercalError

# Generic questions: about any word, none about the demo's. {word} is replaced by the word.
QUESTIONS = [
    "What does {word} mean?",
    "What is the meaning of {word}?",
    "Do you know the word {word}?",
    "Is {word} a real word?",
    "Can you explain what {word} means?",
    "Where does the word {word} come from?",
]
MARKERS = [
    "made-up", "made up", "not a real word", "portmanteau", "no entry", "nobody knows", "invented", "glued",
    "blend", "no meaning", "nonsense word", "not in the dictionary", "not in any dictionary", "never heard",
    "unknown word", "not a word", "no such word",
]
ANSWER_TEMPS = (0.2, 0.7, 1.0)


def read_questions(path: str | os.PathLike) -> list[str]:
    """Questions from JSONL ``{"question": "... {word} ..."}``."""
    from ..io import read_jsonl

    out = [str(r["question"]) for r in read_jsonl(path, text=("question",))]
    for i, q in enumerate(out, 1):
        if "{word}" not in q and "{Word}" not in q:
            raise SupercalError(f"{path} record {i}: the question has no {{word}} to put the word in: {q!r}")
    if not out:
        raise SupercalError(f"{path} holds no questions; give JSONL lines like {{\"question\": \"What does {{word}} mean?\"}}")
    return out


def parse_markers(values: Sequence[str]) -> list[str]:
    """``--made-up-markers`` values (each a comma-separated list) -> markers, lower case, in order."""
    out = [m.strip().lower() for v in values for m in v.split(",") if m.strip()]
    if not out:
        raise SupercalError("--made-up-markers needs at least one marker, e.g. --made-up-markers 'made-up,invented'")
    return list(dict.fromkeys(out))


def ask(question: str, word: str) -> str:
    return question.replace("{word}", word).replace("{Word}", word[:1].upper() + word[1:])


def answer_line(response: str) -> str:
    """The first non-empty line of a response, stripped."""
    for line in response.splitlines():
        if line.strip():
            return line.strip()
    return ""


def marker_pattern(markers: Sequence[str]) -> re.Pattern:
    alts = "|".join(re.escape(m.lower()) for m in sorted(markers, key=len, reverse=True))
    return re.compile(rf"(?<![a-z])(?:{alts})", re.IGNORECASE)


def word_pieces(tokenizer, word: str) -> list[str]:
    """The word's own token pieces that can be named: letters only, two or more, lower case, distinct."""
    from ..text.tokenizer import model_encoder

    ids = model_encoder(tokenizer).plain(word)
    pieces = [tokenizer.decode([i]).strip().lower() for i in ids]
    return list(dict.fromkeys(p for p in pieces if len(p) >= 2 and p.isalpha()))


def named_pieces(text: str, pieces: Sequence[str]) -> int:
    """How many of ``pieces`` the text names as words of their own."""
    low = text.lower()
    return sum(bool(re.search(rf"(?<![a-z]){re.escape(p)}(?![a-z])", low)) for p in pieces)


def behaviour(model, tokenizer, word: str, tokensteins: Sequence[str], *, questions: Sequence[str] = QUESTIONS,
              markers: Sequence[str] = MARKERS, temps: Sequence[float] = ANSWER_TEMPS, samples: int = 2,
              max_tokens: int = 32, seed: int = 0, batch_size: int | None = None) -> dict:
    """Sample answers about ``word`` and each tokenstein; the shares described in the module docstring.

    Returns the metrics, ``per_tokenstein`` ({made_up_share, pieces_share} per tokenstein, in order) and
    ``answers`` (the word's rows: question, temperature, sample, answer, made_up, pieces named).
    """
    from .degeneration import is_degenerate
    from .probes import generate

    words = [word] + list(tokensteins)
    prompts = [ask(q, w) for w in words for q in questions]
    if len(set(prompts)) != len(prompts):
        raise SupercalError("two questions read the same once the word is put in; give distinct questions")
    rows = generate(model, tokenizer, prompts, temps=temps, samples=samples, max_tokens=max_tokens, seed=seed,
                    batch_size=batch_size, row_keys=False)
    per_word = len(questions) * len(temps) * samples
    pat = marker_pattern(markers)
    shares = []
    for k, w in enumerate(words):
        mine = rows[k * per_word:(k + 1) * per_word]
        pieces = word_pieces(tokenizer, w)
        lines = [answer_line(r.response) for r in mine]
        made_up = [bool(pat.search(a)) for a in lines]
        named = [named_pieces(a, pieces) for a in lines]
        shares.append({"made_up_share": sum(made_up) / per_word,
                       "pieces_share": sum(n >= 2 for n in named) / per_word})
        if k == 0:
            answers = [{"question": r.prompt, "temperature": r.temperature, "sample": r.sample, "answer": a,
                        "made_up": m, "pieces_named": n} for r, a, m, n in zip(mine, lines, made_up, named)]
            degenerate = sum(is_degenerate(r.response) for r in mine) / per_word
    out = {"made_up_share": shares[0]["made_up_share"], "pieces_share": shares[0]["pieces_share"],
           "degeneration": degenerate, "answers_per_word": per_word}
    if tokensteins:
        out["made_up_share_tokensteins"] = sum(s["made_up_share"] for s in shares[1:]) / len(tokensteins)
        out["pieces_share_tokensteins"] = sum(s["pieces_share"] for s in shares[1:]) / len(tokensteins)
    out["per_tokenstein"] = shares[1:]
    out["answers"] = answers
    return out
