"""The demo's results over seeds: results.json, the mean ± sd table, and the answers side by side.

``results.json``::

    {"word", "tokensteins", "seeds", "pretrain_seeds",
     "before": {metric: value},                    # the base model (mean over pretraining seeds)
     "before_sd": {metric: sd},                    # only with several pretraining seeds
     "methods": {name: {"runs": [{"seed", "pretrain_seed", "run_dir", "metrics"}],
                        "mean": {metric: value}, "sd": {metric: value or null}}}}

``metrics`` hold every number eval reports for the run (the answers stay in the run folder's
``eval.json``). ``sd`` is the sample standard deviation over the runs (n - 1), null for one run.
"""

from __future__ import annotations

import math

from ..runs.evaluate import METRICS

# Scalar metrics averaged over seeds (those in METRICS, and the few eval reports beside them).
SCALARS = METRICS + ("gap_ratio_se", "pieces_share_tokensteins")


def scalars(metrics: dict) -> dict:
    """The scalar metrics and the per-tokenstein values of one eval result (no answers)."""
    out = {k: metrics[k] for k in SCALARS if k in metrics}
    if "per_tokenstein" in metrics:
        out["per_tokenstein"] = metrics["per_tokenstein"]
    return out


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def aggregate(runs: list[dict]) -> tuple[dict, dict]:
    """(mean, sd) per scalar metric over run records ``{"metrics": {...}}``."""
    mean, sd = {}, {}
    for k in SCALARS:
        vals = [r["metrics"][k] for r in runs if k in r["metrics"]]
        if vals:
            mean[k], sd[k] = mean_sd(vals)
    return mean, sd


def results_json(word: str, tokensteins: list[str], befores: list[dict], runs: dict[str, list[dict]], *,
                 seeds: int, pretrain_seeds: int) -> dict:
    """The results.json document (see the module docstring) from the base models' and the runs' metrics."""
    before_runs = [{"metrics": scalars(b)} for b in befores]
    before, before_sd = aggregate(before_runs)
    doc = {"word": word, "tokensteins": list(tokensteins), "seeds": seeds, "pretrain_seeds": pretrain_seeds,
           "before": before}
    if len(befores) > 1:
        doc["before_sd"] = before_sd
    doc["methods"] = {}
    for name, recs in runs.items():
        mean, sd = aggregate(recs)
        doc["methods"][name] = {"runs": recs, "mean": mean, "sd": sd}
    return doc


def table(doc: dict) -> str:
    """The final table: before, then each method as mean ± sd over its runs."""
    from ..runs.evaluate import format_table

    def cells(mean: dict, sd: dict | None) -> dict:
        return {k: (v, sd[k] if sd and sd.get(k) is not None else float("nan")) for k, v in mean.items()}

    cols = [("before", cells(doc["before"], doc.get("before_sd")))]
    cols += [(name, cells(m["mean"], m["sd"])) for name, m in doc["methods"].items()]
    return format_table(cols)


def answers_table(rows: dict[str, list[dict]], *, per_method: int = 4) -> str:
    """Markdown: the word's first answers (question, temperature, answer, made up?) for each column."""
    lines = ["| model | question | temperature | answer | made up |", "|---|---|---|---|---|"]
    for name, answers in rows.items():
        for a in answers[:per_method]:
            text = a["answer"].replace("|", "\\|") or " "
            lines.append(f"| {name} | {a['question']} | {a['temperature']:g} | {text} | {'yes' if a['made_up'] else ''} |")
    return "\n".join(lines)
