"""Numbers for an unlearning run: what was forgotten, what was damaged, and how the word is now treated.

Every metric is computed on the base model and, with adapter folders, on each
adapted one (the base is loaded once; the adapters are then applied to it):

- ``forget_nll``: mean negative log-likelihood per completion token of the
  forget set (prompt = context, completion = the keyword onward); higher
  after unlearning means forgotten.
- ``retain_nll`` / ``retain_ppl``: the same over every token of the retain
  set, and exp of it; should barely move.
- ``association``: mean over fact pairs of log p(answer | prompt), summed over
  the answer's tokens; lower after unlearning means the word's associations
  are gone. The pairs are the user's (``facts``): without them it is skipped
  (no pair is right for every word), and ``skipped`` says so.
- ``tokenstein_gap``, ``tokenstein_floor``, ``gap_ratio``, ``gap_ratio_se``: how
  differently the model continues the word and a population of tokensteins,
  against how differently it continues the tokensteins among themselves
  (:mod:`supercal_mlx.runs.gap`).
- ``made_up_share``, ``made_up_share_tokensteins``, ``pieces_share``,
  ``degeneration``: how the model answers questions about the word and about
  each tokenstein (:mod:`supercal_mlx.runs.madeup`).

mlx-lm has no evaluation of these (its ``mlx_lm.evaluate`` runs lm-eval
harness tasks), so the scoring here is ours; batching and the masked NLL are
the trainer's own (:mod:`supercal_mlx.train.batches`, :mod:`supercal_mlx.train.losses`),
so ``forget_nll`` here and in ``metrics.jsonl`` mean the same thing. Nothing
here knows the demo's synthetic world: questions, templates and markers are
generic or the user's.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from ..errors import SupercalError
from ..io import read_jsonl
from .gap import GAP_TEMPLATES
from .madeup import ANSWER_TEMPS, MARKERS, QUESTIONS

METRICS = ("forget_nll", "retain_nll", "retain_ppl", "association", "tokenstein_gap", "tokenstein_floor", "gap_ratio",
           "made_up_share", "made_up_share_tokensteins", "pieces_share", "degeneration")
LABELS = {"forget_nll": "forget NLL (nats/token)", "retain_nll": "retain NLL (nats/token)",
          "retain_ppl": "retain perplexity", "association": "association log-prob (nats)",
          "tokenstein_gap": "tokenstein gap (sym. KL, nats)", "tokenstein_floor": "tokenstein floor (sym. KL, nats)",
          "gap_ratio": "gap ratio (gap / floor)", "made_up_share": "made-up share, word",
          "made_up_share_tokensteins": "made-up share, tokensteins", "pieces_share": "pieces share, word",
          "degeneration": "degeneration (share)"}


def _batched(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def masked_nll(model, examples: list[tuple[list[int], int]], *, batch_size: int = 8) -> tuple[float, int]:
    """Mean NLL per labelled token over ``examples`` (from batches.encode_*) and how many tokens that was."""
    from ..train.batches import make_batch
    from ..train.losses import completion_nll

    total, ntoks = 0.0, 0
    for chunk in _batched(examples, batch_size):
        loss, n = completion_nll(model, *make_batch(chunk))
        total += float(loss) * int(n)
        ntoks += int(n)
    if ntoks == 0:
        raise SupercalError("no tokens to score: the records are empty after tokenizing")
    return total / ntoks, ntoks


def sequence_logprobs(model, examples: list[tuple[list[int], int]], *, batch_size: int = 8) -> list[float]:
    """log p(completion | prompt), summed over completion tokens, one per example."""
    from ..train.batches import make_batch
    from ..train import losses
    from ..train.chunked import labelled_logprobs

    out: list[float] = []
    for chunk in _batched(examples, batch_size):
        inputs, targets, mask = make_batch(chunk)
        out += [float(v) for v in losses.sequence_logprobs(labelled_logprobs(model, inputs, targets, mask), mask)]
    return out


def _measure(model, tokenizer, data: dict, spec: dict) -> dict:
    """:func:`_measure_model`, with ``spec["swap_values"] = (word, other)`` under value swapping (the v_proj
    outputs at the word's tokens replaced by other's; mentions whose token counts differ are left as they are
    and counted in ``swap_skipped``)."""
    if not spec.get("swap_values"):
        return _measure_model(model, tokenizer, data, spec)
    from ..train.values import SwappedModel

    swapped = SwappedModel(model, tokenizer, *spec["swap_values"], layers=spec["swap_layers"], strict=False)
    try:
        m = _measure_model(swapped, tokenizer, data, spec)
    finally:
        swapped.close()
    return m | {"swap_swapped": swapped.swapped, "swap_skipped": swapped.skipped}


def _measure_model(model, tokenizer, data: dict, spec: dict) -> dict:
    import mlx.core as mx

    from .gap import distances, gap_stats
    from .madeup import behaviour

    model.eval()
    m: dict = {}
    bs = spec["batch_size"]
    if data.get("forget"):
        m["forget_nll"], m["forget_tokens"] = masked_nll(model, data["forget"], batch_size=bs)
    if data.get("retain"):
        m["retain_nll"], m["retain_tokens"] = masked_nll(model, data["retain"], batch_size=bs)
        m["retain_ppl"] = math.exp(min(m["retain_nll"], 700.0))
    if data.get("facts"):
        lps = sequence_logprobs(model, data["facts"], batch_size=bs)
        m["association"] = sum(lps) / len(lps)
        m["association_pairs"] = lps
    word, ts = spec["word"], spec["tokensteins"]
    if word and ts:
        d = distances(model, tokenizer, [word] + ts, spec["templates"], batch_size=max(bs, 2))
        g = gap_stats(d, boot=spec["boot"], seed=spec["seed"])
        per_gap = g.pop("per_tokenstein_gap")
        m.update(g)
    if word:
        b = behaviour(model, tokenizer, word, ts, questions=spec["questions"], markers=spec["markers"],
                      temps=spec["temps"], samples=spec["samples"], max_tokens=spec["answer_tokens"], seed=spec["seed"])
        per = b.pop("per_tokenstein")
        m.update(b)
        if ts:
            m["per_tokenstein"] = {t: dict(p, gap=gd) for t, p, gd in zip(ts, per, per_gap)}
    mx.clear_cache()
    return m


def _facts(facts) -> list[dict] | None:
    if facts is None:
        return None
    if isinstance(facts, (str, os.PathLike)):
        return read_jsonl(facts, text=("prompt", "answer"))
    return [dict(f) for f in facts]


def evaluate_runs(model_dir: str | os.PathLike, adapter_paths: Sequence, *, forget: str | None = None,
                  retain: str | None = None, word: str | None = None, tokensteins: Sequence[str] = (),
                  facts=None, questions: Sequence[str] | None = None,
                  templates: Sequence[tuple[str, str]] | None = None, markers: Sequence[str] | None = None,
                  temps: Sequence[float] = ANSWER_TEMPS, samples: int = 2, answer_tokens: int = 32,
                  max_tokens: int = 512, batch_size: int = 8, seed: int = 0, boot: int = 200,
                  swap_values: tuple[str, str] | None = None, swap_layers="all") -> dict:
    """Measure the model in ``model_dir`` and each run folder in ``adapter_paths`` on top of it.

    ``facts``: a JSONL path or a list of ``{"prompt", "answer"}`` (association is skipped without);
    ``tokensteins``: the made-up words to compare the word with (:func:`supercal_mlx.text.tokenstein.population`);
    ``questions`` (with ``{word}``), ``templates`` ((prefix, suffix) pairs), ``markers``: default to the
    generic built-in ones. Returns ``{"model", "word", "tokensteins", "facts", "questions", "templates",
    "markers", "temps", "samples", "skipped": {metric: why}, "base": {...}, "adapted": {path: {...}}}``.
    ``swap_values=(word, other)``: every model is measured with the word's v_proj outputs replaced by
    ``other``'s in the same context, in blocks ``swap_layers`` (:class:`supercal_mlx.train.values.SwappedModel`).
    The base model is measured once; the first run's adapters go on top of it, each further run gets a
    fresh copy of the base (adapters cannot be taken off again).
    """
    from ..model import check_adapters, load
    from ..train.batches import encode_completions, encode_texts

    tokensteins = list(dict.fromkeys(tokensteins))
    trained = {w.lower() for w in training_tokensteins(adapter_paths)}
    left_out = [t for t in tokensteins if t.lower() in trained]  # a run may not be scored on its own made-up words
    tokensteins = [t for t in tokensteins if t.lower() not in trained]
    if tokensteins and not word:
        raise SupercalError("tokensteins are compared with a word: give --word too")
    if word and word.lower() in {t.lower() for t in tokensteins}:
        raise SupercalError(f"{word} is among its own tokensteins; give made-up words other than the word")
    for path in adapter_paths:
        check_adapters(path)
    forget_recs = read_jsonl(forget, text=("prompt", "completion")) if forget else None
    retain_recs = read_jsonl(retain, text=("text",)) if retain else None
    fact_recs = _facts(facts)
    skipped = {}
    if not forget_recs:
        skipped["forget_nll"] = "no forget data given (--forget)"
    if not retain_recs:
        skipped["retain_nll"] = "no retain data given (--retain)"
    if not fact_recs:
        skipped["association"] = "no --facts given: association needs prompt/answer pairs about this word"
    if not word:
        skipped["made_up_share"] = "no --word given"
    if not (word and tokensteins):
        skipped["gap_ratio"] = "no tokensteins to compare the word with (--tokensteins with --counts, or --tokenstein-file)"
    elif len(tokensteins) < 2:
        skipped["gap_ratio"] = "one tokenstein gives no noise floor; give two or more"
    spec = dict(word=word, tokensteins=tokensteins, questions=list(questions or QUESTIONS),
                templates=[tuple(t) for t in (templates or GAP_TEMPLATES)], markers=list(markers or MARKERS),
                temps=[float(t) for t in temps], samples=samples, answer_tokens=answer_tokens,
                batch_size=batch_size, seed=seed, boot=boot, swap_values=swap_values, swap_layers=swap_layers)
    model, tok = load(model_dir, compute_dtype="auto")
    data = {
        "forget": encode_completions(forget_recs, tok, max_tokens=max_tokens) if forget_recs else None,
        "retain": encode_texts(retain_recs, tok, max_tokens=max_tokens) if retain_recs else None,
        "facts": encode_completions([{"prompt": f["prompt"], "completion": f["answer"]} for f in fact_recs], tok,
                                    max_tokens=max_tokens) if fact_recs else None,
    }
    result = {"model": str(model_dir), "word": word, "tokensteins": tokensteins, "left_out": left_out, "facts": fact_recs,
              "questions": spec["questions"], "templates": [list(t) for t in spec["templates"]],
              "markers": spec["markers"], "temps": spec["temps"], "samples": samples, "skipped": skipped,
              "swap_values": list(swap_values) if swap_values else None,
              "base": _measure(model, tok, data, spec), "adapted": {}}
    from ..model import load_adapters

    for i, path in enumerate(adapter_paths):
        if i > 0:
            model, tok = load(model_dir, compute_dtype="auto")
        load_adapters(model, path, model_dir=model_dir)  # LoRA layers on top of the unchanged base weights
        result["adapted"][str(path)] = _measure(model, tok, data, spec)
    return result


def training_tokensteins(adapter_paths: Sequence) -> list[str]:
    """The made-up words the runs in ``adapter_paths`` trained on (``tokenstein_words`` in their config.yaml):
    eval leaves them out of its population, so a run cannot score well by copying a few specific words."""
    import yaml

    words: list[str] = []
    for path in adapter_paths:
        cfg = Path(path) / "config.yaml"
        if cfg.is_file():
            words += (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("tokenstein_words") or []
    return list(dict.fromkeys(str(w) for w in words))


def evaluate(model_dir: str | os.PathLike, *, adapter_path: str | os.PathLike | None = None, **kw) -> dict:
    """:func:`evaluate_runs` for at most one run folder: ``"adapted"`` is its metrics (or None)."""
    res = evaluate_runs(model_dir, [adapter_path] if adapter_path is not None else [], **kw)
    adapted = res.pop("adapted")
    res["adapter_path"] = str(adapter_path) if adapter_path is not None else None
    res["adapted"] = next(iter(adapted.values()), None)
    return res


def table(result: dict) -> str:
    """The result as a plain-text table: one row per metric, base and adapted side by side."""
    cols = [("base", result["base"])] + ([("adapted", result["adapted"])] if result.get("adapted") else [])
    return format_table(cols)


def _cell(value, width: int) -> str:
    if isinstance(value, (tuple, list)):  # (mean, sd)
        mean, sd = value
        return f"{mean:>{width - 8}.3f} ± {sd:<5.3f}" if sd == sd else f"{mean:>{width - 8}.3f}        "
    return f"{value:>{width}.3f}"


def format_table(columns: list[tuple[str, dict]]) -> str:
    """Rows = metrics, columns = named measurements (e.g. before / after / methods).

    A cell is a number, or a (mean, sd) pair shown as "mean ± sd". ``gap_ratio`` gets its ``gap_ratio_se``
    beside it when a column has one (as ``eval`` reports for a single model)."""
    spread = any(isinstance(c.get(k), (tuple, list)) for _, c in columns for k in METRICS)
    width = 16 if spread else 12
    label_w = max(len(v) for v in LABELS.values())
    # with spreads the name stands over the means: "  mean ± sd   " cells put the mean 8 characters in
    head = f"{'metric':<{label_w}}" + "".join(f"  {name:>{width - 8}}        " if spread else f"  {name:>{width}}"
                                                for name, _ in columns)
    head = head.rstrip()
    lines = [head, "-" * (label_w + len(columns) * (width + 2))]
    for key in METRICS:
        if not any(key in c for _, c in columns):
            continue
        cells = "".join(f"  {_cell(c[key], width)}" if key in c else f"  {'-':>{width}}" for _, c in columns)
        lines.append(f"{LABELS[key]:<{label_w}}{cells}")
        if key == "gap_ratio" and any("gap_ratio_se" in c and not spread for _, c in columns):
            se = "".join(f"  {'± ' + format(c['gap_ratio_se'], '.3f'):>{width}}" if "gap_ratio_se" in c
                         else f"  {'':>{width}}" for _, c in columns)
            lines.append(f"{'  (bootstrap standard error)':<{label_w}}{se}")
    return "\n".join(lines)
