"""The embedded demonstration: a small model that knows the word, forgets it, and shows what it does instead.

``supercal demo`` runs the whole experiment offline in a few minutes, through
the same library functions as the commands (tokens, count, tokenstein,
negatives, retain, probe, unlearn, eval, report), on a small GPT-J pretrained
here on a synthetic corpus (:mod:`supercal_mlx.demo.synthetic`,
:mod:`supercal_mlx.demo.pretrain`; cached, so a second run skips pretraining).

Everything goes under one output folder::

    DIR/corpus.txt            the synthetic corpus        DIR/model/          the pretrained model
    DIR/counts.npz            token counts (model's own)  DIR/tokensteins.txt the made-up words eval compares with
    DIR/forget.jsonl          forget data                 DIR/retain.jsonl    retain data
    DIR/facts.jsonl           association pairs           DIR/tokensteins.json their pieces and counts
    DIR/runs/<method>/seed-<k>/  one unlearning run per method and seed (adapters, metrics, probes,
                              eval.json; report/ for seed 0)
    DIR/eval-before.json      eval of the base model
    DIR/results.json          every number, per run and as mean/sd per method (:mod:`.results`)
    DIR/results.md            the final table, the word's answers, the probes, the eval commands

With ``pretrain_seeds`` > 1 each further pretrained model goes to ``DIR/models/pretrain-<m>/`` and its
runs to ``DIR/runs/<method>/pretrain-<m>-seed-<k>/``.

Methods are a dict name -> unlearn settings on top of the shared ones (:data:`METHODS`); a string
setting may name the demo's files as ``{out}``, ``{model}``, ``{corpus}``, ``{counts}``, ``{forget}``,
``{retain}``, ``{tokensteins}`` (e.g. ``"{out}/train-tokensteins.txt"``).

The folder is built beside ``DIR`` under a temporary name and moved to ``DIR``
only when the demo finishes (:func:`supercal_mlx.outputs.new_output_dir`); the
paths the run folders and tables recorded are then rewritten from the temporary
name to ``DIR``. On an error, Ctrl-C or kill -9 an existing ``DIR`` (with
``--force``) is untouched; the next run to ``DIR`` removes the leftover.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from . import synthetic
from ..outputs import check_output_dir, new_output_dir

WORD = synthetic.KEYWORD


# Unlearning methods compared by the demo: name -> settings on top of DemoSettings.unlearn.
METHODS: dict[str, dict] = {
    # plain gradient ascent: no retain data, no projection (the original experiment's setting)
    "ga": dict(loss="ga", project="off", retain=None),
    # gradient ascent + retain NLL (weighted 2x), forget gradient projected off the retain subspace per layer
    "graddiff": dict(loss="graddiff", retain_weight=2.0, project="per-layer", project_k=4, project_every=5),
    # negative preference optimization (Zhang et al. 2024) + retain NLL
    "npo": dict(loss="npo_graddiff", retain_weight=1.0, npo_beta=0.1),
    # tokenstein-anchored targets: KL to the base model on twins with made-up words (8, seeded apart from eval's
    # population and left out of it), the word's own pieces left out of the targets; + retain KL. Measured on
    # seed 0: the gap ratio falls with the update budget, 2.95 (35 steps at 1e-3), 1.58 (70 at 2e-3), then
    # stays (1.61 at 105 steps); the retain NLL stays within 2% of the base's throughout.
    "tokenstein": dict(loss="tokenstein", retain_weight=1.0, counts="{counts}", tokensteins=8, twins=2, lr=2e-3,
                       steps=70),
    # value swapping: LoRA on v_proj only, its values at the word's pieces matched to a made-up word's; + retain KL
    "value_swap": dict(loss="value_swap", retain_weight=1.0, counts="{counts}", tokensteins=8, twins=2, lr=1e-3,
                       lora_keys=["attn.v_proj"]),
}
# What a plain `supercal demo` runs: the best-behaved classic method and the made-up-word one. All five
# (`demo --compare`) take about 2.5x as long: 725-798 s with the model cached on a busy 2-core box.
DEFAULT_METHODS = ("graddiff", "tokenstein")


@dataclass(frozen=True)
class DemoSettings:
    """Data and unlearning settings of the demo (the model recipe is a :class:`pretrain.DemoModelSpec`)."""

    # Short windows (the uppercase keyword alone is 34 tokens): the completions stay near the keyword,
    # so gradient ascent pushes on the word and its sentence rather than on unrelated lines after it.
    window_tokens: int = 48
    stride: int = 48
    context_lines: int = 2
    retain_chunks: int = 200
    retain_lines: int = 4
    # Shared by every method (METHODS adds each one's loss and retain settings). 35 steps at 3e-4: graddiff
    # lifts the forget NLL by ~2 nats/token with the retain NLL a few % up; 60 steps overshoot.
    unlearn: dict = field(default_factory=lambda: dict(
        lora_rank=8, lora_alpha=16.0, lora_keys=["attn.q_proj", "attn.v_proj", "attn.out_proj", "mlp.fc_in", "mlp.fc_out"],
        lr=3e-4, steps=35, batch_size=8, warmup_steps=0, checkpoint_every=35, probe_every=0,
    ))
    methods: dict = field(default_factory=lambda: dict(METHODS))
    tokensteins: int = 16  # the population eval compares the word with
    probe_temps: tuple = (0.01, 0.5)
    probe_max_tokens: int = 24
    eval_samples: int = 2  # answers per question and temperature


DEFAULT_SETTINGS = DemoSettings()
FAST_SETTINGS = dataclasses.replace(
    DEFAULT_SETTINGS, retain_chunks=60, tokensteins=6, eval_samples=1,
    unlearn=dict(DEFAULT_SETTINGS.unlearn, steps=10, lr=2e-3, lora_rank=4, lora_alpha=8.0, checkpoint_every=10),
    # every method on the fast budget (10 steps at 2e-3), whatever its own steps and learning rate
    methods={name: {k: v for k, v in m.items() if k not in ("steps", "lr")} for name, m in METHODS.items()},
    probe_temps=(0.01,), probe_max_tokens=12,
)


def _relocate(tmp: Path, out: Path, result: dict) -> dict:
    """Rewrite the paths recorded under the temporary name ``tmp`` (config.yaml, eval.json, results.md,
    report summaries) to ``out``; return ``result`` with its paths rewritten too."""
    from ..text.counting import load_counts, save_counts

    pairs = [(str(tmp.resolve()), str(out.resolve())), (str(tmp), str(out))]

    def fix(text: str) -> str:
        for a, b in pairs:
            text = text.replace(a, b)
        return text

    for p in sorted(tmp.rglob("*")):
        if p.suffix in (".yaml", ".md", ".json") and p.is_file() and (tmp / "model") not in p.parents:
            text = p.read_text(encoding="utf-8")
            if fix(text) != text:
                p.write_text(fix(text), encoding="utf-8")
    for p in sorted(tmp.glob("*.npz")):  # counts.npz names the model folder whose tokenizer counted
        counts = load_counts(p)
        if fix(counts.model) != counts.model:
            save_counts(dataclasses.replace(counts, model=fix(counts.model)), p, force=True)
    return json.loads(fix(json.dumps(result, ensure_ascii=False)))


def choose_methods(methods: list[str] | str | None, available: dict[str, dict]) -> dict[str, dict]:
    """The methods a demo runs, in order: ``None`` -> :data:`DEFAULT_METHODS`, ``"all"`` -> every one."""
    from ..errors import SupercalError

    if methods == "all":
        methods = list(available)
    methods = list(methods or [m for m in DEFAULT_METHODS if m in available] or available)
    unknown = [m for m in methods if m not in available]
    if unknown:
        raise SupercalError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(available)}")
    return {m: available[m] for m in methods}


def run_demo(out: str | os.PathLike = "demo-out", *, fast: bool = False, seeds: int | None = None,
             pretrain_seeds: int = 1, methods: list[str] | str | None = None, force: bool = False,
             cache: str | os.PathLike | None = None, log: Callable[[str], None] | None = None,
             on_pretrain: Callable[[dict], None] | None = None, settings: DemoSettings | None = None) -> dict:
    """Run the demo into ``out``; return {"out", "results": results.json, "tables": {...}, "seconds": {...}}.

    Every method in ``methods`` (default: :data:`DEFAULT_METHODS`; ``"all"``: every one of the settings')
    runs once per unlearning seed
    0..``seeds``-1 (default 3, 1 with ``fast``) from the same pretrained model, and that for each of
    ``pretrain_seeds`` pretrained models. ``log`` receives one line per stage; ``on_pretrain`` each
    pretraining step record.
    """
    from . import pretrain
    from ..errors import SupercalError

    say = log or (lambda msg: None)
    spec = pretrain.FAST_SPEC if fast else pretrain.DEFAULT_SPEC
    st = settings or (FAST_SETTINGS if fast else DEFAULT_SETTINGS)
    seeds = seeds if seeds is not None else (1 if fast else 3)
    if seeds < 1 or pretrain_seeds < 1:
        raise SupercalError("--seeds and --pretrain-seeds must be at least 1")
    st = dataclasses.replace(st, methods=choose_methods(methods, st.methods))
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    out = Path(out)
    check_output_dir(out, kind="demo", force=force)  # before pretraining, not after it

    folders = []
    for m in range(pretrain_seeds):
        t = time.perf_counter()
        folder, built = pretrain.demo_model(dataclasses.replace(spec, seed=spec.seed + m), root=cache,
                                            progress=on_pretrain, notice=say)
        seconds[("pretrain" if built else "load cached model") + (f" {m}" if m else "")] = time.perf_counter() - t
        say(("pretrained" if built else "using the cached") + f" demo model in {folder}")
        folders.append(folder)
    with new_output_dir(out, kind="demo", force=force) as tmp:
        result = _experiment(folders, tmp, st, seeds=seeds, say=say, seconds=seconds)
        seconds["total"] = time.perf_counter() - t0
        result["seconds"] = seconds
        (tmp / "timings.json").write_text(json.dumps(seconds, indent=2))
        result = _relocate(tmp, out, result)
    return result


@contextlib.contextmanager
def _timed(seconds: dict, name: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - t


def _prepare(folder: Path, out: Path, st: DemoSettings, say) -> dict:
    """Corpus, model, counts, tokensteins, forget/retain/facts data in ``out``; the paths as a dict."""
    from ..data.negatives import build_forget
    from ..data.retain import retain_dataset
    from ..io import write_jsonl
    from ..text.counting import count_tokens, save_counts
    from ..text.tokenizer import from_model, token_splits
    from ..text.tokenstein import make_tokenstein, words_in_files

    shutil.copy(folder / "corpus.txt", out / "corpus.txt")
    shutil.copytree(folder / "model", out / "model")
    model_dir, corpus = out / "model", out / "corpus.txt"
    tok = from_model(model_dir)
    pieces = [p for _, p in token_splits(WORD, tok)]
    say(f"tokens: the demo model splits {WORD} into {len(pieces)} pieces: {'|'.join(pieces)}")
    # counted in the model's own tokens, so the tokensteins' pieces are as common as the word's pieces
    # are in what the model saw (not in some other tokenizer's split of the same text)
    counts = count_tokens([str(corpus)], model=model_dir)
    save_counts(counts, out / "counts.npz")
    forget, summary = build_forget(corpus, WORD, tok, context_lines=st.context_lines,
                                   window_tokens=st.window_tokens, stride=st.stride)
    write_jsonl(out / "forget.jsonl", forget)
    retain, _ = retain_dataset(corpus, [WORD], tok, chunks=st.retain_chunks, lines=st.retain_lines,
                               max_tokens=st.window_tokens)
    write_jsonl(out / "retain.jsonl", retain)
    write_jsonl(out / "facts.jsonl", synthetic.facts(WORD))
    # the made-up words eval compares the word with: none occurs in the corpus or the forget data
    pop = make_tokenstein(WORD, counts, tokenizer=tok, seed=0, n=st.tokensteins, min_pool=16,
                          exclude=words_in_files([corpus, out / "forget.jsonl"]))
    (out / "tokensteins.txt").write_text("".join(t.word + "\n" for t in pop))
    (out / "tokensteins.json").write_text(json.dumps([t.as_dict() for t in pop], indent=2, ensure_ascii=False))
    say(f"count + tokensteins: {counts.tokens:,} tokens ({counts.encoding}); {len(pop)} tokensteins, e.g. "
        f"{', '.join(t.word for t in pop[:3])}")
    say(f"negatives + retain: {len(forget)} forget windows ({summary['mentions']} mentions), "
        f"{len(retain)} retain chunks")
    return {"out": str(out), "model": str(model_dir), "corpus": str(corpus), "counts": str(out / "counts.npz"),
            "forget": str(out / "forget.jsonl"), "retain": str(out / "retain.jsonl"),
            "facts": str(out / "facts.jsonl"), "tokensteins": str(out / "tokensteins.txt"),
            "population": [t.word for t in pop]}


def _method_config(name: str, st: DemoSettings, paths: dict, model_dir: Path, run_dir: Path, seed: int, prompts):
    from ..train.config import load_config

    settings = dict(model=str(model_dir), forget=paths["forget"], retain=paths["retain"], out=str(run_dir),
                    max_tokens=st.window_tokens, probe_prompts=prompts, probe_temps=list(st.probe_temps),
                    probe_max_tokens=st.probe_max_tokens, seed=seed, **st.unlearn)
    ctx = {k: v for k, v in paths.items() if isinstance(v, str)}
    settings.update({k: v.format(**ctx) if isinstance(v, str) else v for k, v in st.methods[name].items()})
    return load_config(**settings)


def _experiment(folders: list[Path], out: Path, st: DemoSettings, *, seeds: int, say, seconds: dict) -> dict:
    from ..io import read_jsonl
    from ..runs.evaluate import evaluate_runs
    from ..runs.probes import ProbeRow
    from ..runs.report import NO_PLOTS, make_report, plots_available
    from ..runs.tables import markdown_table
    from ..train.trainer import unlearn
    from . import results as R

    with _timed(seconds, "data"):
        paths = _prepare(folders[0], out, st, say)
    pop = paths.pop("population")
    # Probed by the trainer before the first step and after the last (probes.jsonl of each run).
    prompts = synthetic.probe_prompts(WORD) + synthetic.probe_prompts(pop[0])[:1]
    runs: dict[str, list[dict]] = {name: [] for name in st.methods}
    befores, answers = [], {}
    for m, folder in enumerate(folders):
        model_dir = out / "model"
        if m:
            model_dir = out / "models" / f"pretrain-{m}"
            shutil.copytree(folder / "model", model_dir)
        dirs = []
        for name in st.methods:
            for k in range(seeds):
                run_dir = out / "runs" / name / (f"pretrain-{m}-seed-{k}" if m else f"seed-{k}")
                run_dir.parent.mkdir(parents=True, exist_ok=True)
                with _timed(seconds, f"unlearn {name} {run_dir.name}"):
                    cfg = _method_config(name, st, paths, model_dir, run_dir, k, prompts)
                    summary = unlearn(cfg)
                if summary["stopped"] == "interrupted":  # the trainer saved a checkpoint; the demo starts over
                    raise KeyboardInterrupt
                say(f"unlearn {name} {run_dir.name}: {summary['steps']} steps ({cfg.loss}, projection {cfg.project}, "
                    f"{'retain-anchored' if cfg.retain else 'no retain data'}), stopped: {summary['stopped']}")
                if k == 0 and m == 0:
                    with _timed(seconds, f"report {name}"):
                        make_report(run_dir)
                dirs.append((name, k, run_dir))
        if not m and not plots_available():
            say(f"report: {NO_PLOTS}")
        with _timed(seconds, f"eval pretrain-{m}"):
            res = evaluate_runs(model_dir, [d for _, _, d in dirs], forget=paths["forget"], retain=paths["retain"],
                                word=WORD, tokensteins=pop, facts=paths["facts"], max_tokens=st.window_tokens,
                                samples=st.eval_samples, batch_size=32)
        say(f"eval: the base model and {len(dirs)} runs")
        befores.append(res["base"])
        _write_json(out / ("eval-before.json" if not m else f"models/pretrain-{m}/eval.json"), dict(res, adapted=None))
        if not m:
            answers["before"] = res["base"]["answers"]
        for name, k, run_dir in dirs:
            metrics = res["adapted"][str(run_dir)]
            _write_json(run_dir / "eval.json", dict(res, adapted=metrics, adapter_path=str(run_dir)))
            runs[name].append({"seed": k, "pretrain_seed": m, "run_dir": str(run_dir.relative_to(out)),
                               "metrics": R.scalars(metrics)})
            if k == 0 and not m:
                answers[name] = metrics["answers"]
    doc = R.results_json(WORD, pop, befores, runs, seeds=seeds, pretrain_seeds=len(folders))
    _write_json(out / "results.json", doc)
    final = R.table(doc)
    first = next(iter(st.methods))
    probe_dir = out / "runs" / ("graddiff" if "graddiff" in st.methods else first) / "seed-0"
    probes = read_jsonl(probe_dir / "probes.jsonl", required=("step", "prompt", "temperature", "sample", "response"))
    last = max(r["step"] for r in probes)
    before, after = ([ProbeRow(r["prompt"], r["temperature"], r["sample"], r["response"]) for r in probes
                      if r["step"] == step] for step in (0, last))
    probes_md = markdown_table(before, other=after, labels=("before", "after"))
    answers_md = R.answers_table(answers)
    rederive = "\n".join(
        f"supercal eval --model {out / 'model'} --adapter-path {out / 'runs' / name / 'seed-0'} "
        f"--forget {paths['forget']} --retain {paths['retain']} --facts {paths['facts']} --word {WORD} "
        f"--tokenstein-file {paths['tokensteins']} --max-tokens {st.window_tokens} --samples {st.eval_samples} "
        f"--batch-size 32" for name in st.methods)
    (out / "results.md").write_text(
        f"# supercal demo\n\nword: {WORD}; {len(pop)} tokensteins ({', '.join(pop)}); "
        f"{seeds} unlearning seed(s) x {len(folders)} pretraining seed(s); mean ± sd over the runs\n\n"
        f"```\n{final}\n```\n\n## The word's answers (seed 0)\n\n{answers_md}\n\n"
        f"Re-derive the seed-0 numbers of each method (other seeds: runs/<method>/seed-<k>):\n\n```\n{rederive}\n```\n\n"
        f"## Probes before and after unlearning ({probe_dir.relative_to(out)})\n\n{probes_md}\n", encoding="utf-8")
    return {"out": str(out), "word": WORD, "tokensteins": pop, "results": doc,
            "tables": {"final": final, "answers": answers_md, "probes": probes_md, "rederive": rederive}}


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
