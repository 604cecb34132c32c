"""Numbers for an unlearning run: what was forgotten, what was damaged, and how the word is now treated.

Every metric is computed on the base model and, with an adapter folder, on the
adapted one (the base is loaded once; the adapters are then applied to it):

- ``forget_nll``: mean negative log-likelihood per completion token of the
  forget set (prompt = context, completion = the keyword onward); higher
  after unlearning means forgotten.
- ``retain_nll`` / ``retain_ppl``: the same over every token of the retain
  set, and exp of it; should barely move.
- ``association``: mean over fact pairs of log p(answer | prompt), summed over
  the answer's tokens (e.g. "Supercalifragilisticexpialidocious is a song from
  the film" -> " Mary Poppins"); lower after unlearning means the word's
  associations are gone.
- ``tokenstein_gap``: how differently the model treats the word and its
  tokenstein (a made-up word with matching token statistics) in the same
  sentences. For each template ``prefix + W + suffix`` we feed both versions
  and compare the next-token distributions at the positions the two share:
  the last token of W and every suffix token (each predicts the next suffix
  token, the last one predicts the continuation). Positions inside W are
  skipped, because the two words have different token counts. The gap is the
  symmetric KL divergence ``(KL(p||q) + KL(q||p)) / 2`` in nats, averaged over
  those positions and then over the templates. Zero means the model treats the
  word exactly like a made-up word (or that it collapsed: read it beside
  ``degeneration``).
- ``degeneration``: the share of sampled probe answers (several
  temperatures) that collapsed into a repeated token or phrase
  (:func:`supercal_mlx.runs.degeneration.is_degenerate`).

mlx-lm has no evaluation of these (its ``mlx_lm.evaluate`` runs lm-eval
harness tasks), so the scoring here is ours; batching and the masked NLL are
the trainer's own (:mod:`supercal_mlx.batches`, :mod:`supercal_mlx.losses`), so
``forget_nll`` here and in ``metrics.jsonl`` mean the same thing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..demo import synthetic
from ..errors import SupercalError
from ..io import read_jsonl

# (prefix, suffix) around W: a question, and a few neutral continuations.
GAP_TEMPLATES = [
    ("What does ", " mean? It"),
    ("The word ", " is a"),
    ("I heard someone say ", " at the party, and"),
    ("The children said ", " and then"),
]
METRICS = ("forget_nll", "retain_nll", "retain_ppl", "association", "tokenstein_gap", "degeneration")
DEGENERATION_TEMPS = (0.2, 0.5, 1.0)


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

    out: list[float] = []
    for chunk in _batched(examples, batch_size):
        inputs, targets, mask = make_batch(chunk)
        out += [float(v) for v in losses.sequence_logprobs(losses.token_logprobs(model(inputs), targets), mask)]
    return out


def _log_softmax(logits):
    import mlx.core as mx
    import mlx.nn as nn

    return nn.log_softmax(logits.astype(mx.float32), axis=-1)


def tokenstein_gap(model, tokenizer, word: str, other: str, *, templates=GAP_TEMPLATES) -> float:
    """Mean symmetric KL (nats) between next-token distributions after ``word`` and after ``other``."""
    import mlx.core as mx

    from ..text.tokenizer import model_encoder

    encode = model_encoder(tokenizer)  # BOS (if the tokenizer adds one) + text, as in training and the other scores
    gaps = []
    for prefix, suffix in templates:
        head_w, head_o, tail = encode(prefix + word), encode(prefix + other), encode.plain(suffix)
        # Distributions at the last token of each word and at every suffix token (aligned: same suffix).
        lp_w = _log_softmax(model(mx.array([head_w + tail]))[0, len(head_w) - 1:])  # (S+1, V)
        lp_o = _log_softmax(model(mx.array([head_o + tail]))[0, len(head_o) - 1:])  # (S+1, V)
        p_w, p_o = mx.exp(lp_w), mx.exp(lp_o)
        kl_wo = (p_w * (lp_w - lp_o)).sum(axis=-1)  # (S+1,)
        kl_ow = (p_o * (lp_o - lp_w)).sum(axis=-1)
        gaps.append(((kl_wo + kl_ow) / 2).mean())
    return float(mx.stack(gaps).mean())


def degeneration(model, tokenizer, prompts: list[str], *, samples: int = 2, max_tokens: int = 40,
                 seed: int = 0) -> tuple[float, list]:
    """Share of sampled answers to ``prompts`` that are degenerate, and the probe rows."""
    from .degeneration import is_degenerate
    from .probes import generate

    rows = generate(model, tokenizer, prompts, temps=DEGENERATION_TEMPS, samples=samples, max_tokens=max_tokens,
                    seed=seed)
    return sum(is_degenerate(r.response) for r in rows) / len(rows), rows


def _measure(model, tokenizer, data: dict, *, word, tokenstein, degeneration_prompts, batch_size, seed) -> dict:
    import mlx.core as mx

    model.eval()
    m: dict = {}
    m["forget_nll"], m["forget_tokens"] = masked_nll(model, data["forget"], batch_size=batch_size)
    if data.get("retain"):
        m["retain_nll"], m["retain_tokens"] = masked_nll(model, data["retain"], batch_size=batch_size)
        m["retain_ppl"] = math.exp(min(m["retain_nll"], 700.0))
    lps = sequence_logprobs(model, data["facts"], batch_size=batch_size)
    m["association"] = sum(lps) / len(lps)
    m["association_pairs"] = lps
    if word and tokenstein:
        m["tokenstein_gap"] = tokenstein_gap(model, tokenizer, word, tokenstein)
    m["degeneration"], rows = degeneration(model, tokenizer, degeneration_prompts, seed=seed)
    m["degeneration_samples"] = len(rows)
    mx.clear_cache()
    return m


def evaluate(model_dir: str | os.PathLike, *, adapter_path: str | os.PathLike | None = None, forget: str,
             retain: str | None = None, word: str | None = None, tokenstein: str | None = None,
             facts: str | None = None, max_tokens: int = 512, batch_size: int = 8, seed: int = 0) -> dict:
    """Measure the model in ``model_dir``, and with ``adapter_path`` also the adapted model.

    Returns ``{"model", "adapter_path", "word", "tokenstein", "facts", "base": {...}, "adapted": {...} | None}``
    where each side holds the metrics in :data:`METRICS` (retain and gap ones only when their inputs are given).
    """
    res = evaluate_runs(model_dir, [adapter_path] if adapter_path is not None else [], forget=forget, retain=retain,
                        word=word, tokenstein=tokenstein, facts=facts, max_tokens=max_tokens, batch_size=batch_size,
                        seed=seed)
    adapted = res.pop("adapted")
    res["adapter_path"] = str(adapter_path) if adapter_path is not None else None
    res["adapted"] = next(iter(adapted.values()), None)
    return res


def evaluate_runs(model_dir: str | os.PathLike, adapter_paths: list, *, forget: str, retain: str | None = None,
                  word: str | None = None, tokenstein: str | None = None, facts: str | None = None,
                  max_tokens: int = 512, batch_size: int = 8, seed: int = 0) -> dict:
    """:func:`evaluate` for several run folders on one base: ``"adapted"`` maps each path to its metrics.

    The base model is loaded and measured once; the first run's adapters go on top of it, each further
    run gets a fresh copy of the base (adapters cannot be taken off again).
    """
    from ..train.batches import encode_completions, encode_texts
    from ..model import load

    if (word is None) != (tokenstein is None):
        raise SupercalError("give --word and --tokenstein together (the gap compares the two)")
    for path in adapter_paths:
        if not (Path(path) / "adapter_config.json").exists():
            raise SupercalError(f"{path} has no adapter_config.json; give a run folder written by supercal unlearn")
    forget_recs = read_jsonl(forget, required=("prompt", "completion"))
    retain_recs = read_jsonl(retain, required=("text",)) if retain else None
    if facts:
        fact_recs = read_jsonl(facts, required=("prompt", "answer"))
    else:
        fact_recs = synthetic.facts(word or synthetic.KEYWORD)
    model, tok = load(model_dir)
    data = {
        "forget": encode_completions(forget_recs, tok, max_tokens=max_tokens),
        "retain": encode_texts(retain_recs, tok, max_tokens=max_tokens) if retain_recs else None,
        "facts": encode_completions([{"prompt": f["prompt"], "completion": f["answer"]} for f in fact_recs], tok,
                                    max_tokens=max_tokens),
    }
    opts = dict(word=word, tokenstein=tokenstein, degeneration_prompts=synthetic.probe_prompts(word or synthetic.KEYWORD),
                batch_size=batch_size, seed=seed)
    result = {"model": str(model_dir), "word": word, "tokenstein": tokenstein, "facts": [dict(f) for f in fact_recs],
              "base": _measure(model, tok, data, **opts), "adapted": {}}
    from mlx_lm.utils import load_adapters

    for i, path in enumerate(adapter_paths):
        if i > 0:
            model, tok = load(model_dir)
        load_adapters(model, str(path))  # LoRA layers on top of the unchanged base weights
        result["adapted"][str(path)] = _measure(model, tok, data, **opts)
    return result


def table(result: dict) -> str:
    """The result as a plain-text table: one row per metric, base and adapted side by side."""
    cols = [("base", result["base"])] + ([("adapted", result["adapted"])] if result.get("adapted") else [])
    return format_table(cols)


def format_table(columns: list[tuple[str, dict]]) -> str:
    """Rows = metrics, columns = named measurements (e.g. before / after / plain GA)."""
    labels = {"forget_nll": "forget NLL (nats/token)", "retain_nll": "retain NLL (nats/token)",
              "retain_ppl": "retain perplexity", "association": "association log-prob (nats)",
              "tokenstein_gap": "tokenstein gap (sym. KL, nats)", "degeneration": "degeneration (share)"}
    width = max(len(v) for v in labels.values())
    head = f"{'metric':<{width}}" + "".join(f"  {name:>12}" for name, _ in columns)
    lines = [head, "-" * len(head)]
    for key in METRICS:
        if not any(key in c for _, c in columns):
            continue
        cells = "".join(f"  {c[key]:>12.3f}" if key in c else f"  {'-':>12}" for _, c in columns)
        lines.append(f"{labels[key]:<{width}}{cells}")
    return "\n".join(lines)
