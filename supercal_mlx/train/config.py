"""Run settings for ``supercal unlearn``: one dataclass, one merge point.

:class:`UnlearnConfig` is the single source of truth: every field is a YAML key
and a command-line option (``lora_rank`` <-> ``--lora-rank``; the CLI builds its
options from these fields and their metadata: ``help``, ``type``, ``path``, ``choices``). :func:`load_config`
merges, in order, the dataclass defaults, a YAML file, and the overrides the
user actually typed; it checks names, types and choices and raises a one-line
:class:`SupercalError` for anything wrong. The resolved settings are written to
``RUN_DIR/config.yaml`` by the trainer (:func:`dump_config`).
"""

from __future__ import annotations

import builtins
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import SupercalError

LOSSES = ("ga", "ga_kl", "graddiff", "npo", "npo_kl", "npo_graddiff", "tokenstein", "value_swap")
RETAIN_TERMS = ("kl", "nll")
SCHEDULES = ("constant", "linear", "cosine")
PROJECT_MODES = ("off", "global", "per-layer")
RANDOM_SOURCES = ("shuffle", "retain")
COMPUTE_DTYPES = ("auto", "float32", "native")  # widening only: MLX promotes mixed ops to the wider dtype
# Run control, not settings: never written to config.yaml.
RUN_CONTROL = ("resume", "force", "config")
# What a run's config.yaml records beside the settings (ignored when it is read as --config).
RECORD_KEYS = ("fingerprints", "overrides")
# Settings --resume may change: they do not change what the adapters are or how they were trained so far.
RESUME_MAY_CHANGE = ("steps", "checkpoint_every", "lr_end", "probe_prompts", "probe_temps", "probe_every",
                     "probe_samples", "probe_max_tokens", "stop_on_collapse", "collapse_retain_nll",
                     "collapse_retain_factor", "grad_checkpoint", "compute_dtype", "micro_batches")
PATH_SETTINGS = ("model", "forget", "retain", "counts", "tokenstein_file")
# Sane ranges: beyond them a value is a typo (steps: 1e400), not a setting.
MAX_INT = 2**31 - 1
MAX_FLOAT = 1e6


# How a setting's value is read (from YAML, from the command line): the ``type`` metadata of every field.
TYPES = ("str", "int", "float", "bool", "list", "floats", "layers")
# ``path`` metadata: the command-line option is a path to a folder, a file, or either (a new run folder).
PATH_KINDS = ("dir", "file", "any")


def _f(default, help: str, *, type: str | None = None, path: str | None = None, **kw):
    """A setting. ``type`` (one of :data:`TYPES`) defaults to the type of a bool/int/float/str ``default``;
    ``path`` (one of :data:`PATH_KINDS`) implies ``type="str"``. More metadata: ``choices``, ``null`` (what
    an empty YAML value means), ``cli`` (the option's name), ``multiple``, ``negatable`` (bool flags:
    whether there is a --no- form, default yes)."""
    if type is None:
        type = "str" if path else {bool: "bool", int: "int", float: "float", str: "str"}.get(builtins.type(default))
    if type not in TYPES or (path is not None and path not in PATH_KINDS):
        raise TypeError(f"setting with default {default!r}: give type= (one of {TYPES}) and path= one of {PATH_KINDS}")
    meta = {"help": help, "type": type, **({"path": path} if path else {}), **kw}
    if isinstance(default, list):  # a fresh list per instance
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class UnlearnConfig:
    # data and model
    model: str | None = _f(None, "MLX model folder (from supercal convert).", path="dir")
    forget: str | None = _f(None, "Forget data: JSONL with prompt and completion (supercal negatives).", path="file")
    retain: str | None = _f(None, "Retain data: JSONL with text (supercal retain).", path="file")
    out: str | None = _f(None, "Run folder to create.", path="any")
    max_tokens: int = _f(1024, "Longest example in tokens (prompt end + completion start are kept).")
    # loss
    loss: str = _f("ga", "Objective: ga, ga_kl, graddiff, npo (npo_kl, npo_graddiff add a retain term to NPO); "
                   "tokenstein (match the base model on tokenstein twins), value_swap (v_proj values of a tokenstein).",
                   choices=LOSSES)
    retain_weight: float = _f(1.0, "Weight of the retain term (KL for *_kl, NLL for graddiff, --retain-term for "
                                   "tokenstein and value_swap; 0: none).")
    retain_term: str = _f("kl", "Retain term of tokenstein and value_swap: KL to the base model, or NLL.",
                          choices=RETAIN_TERMS)
    npo_beta: float = _f(0.1, "NPO inverse temperature beta.")
    random_weight: float = _f(0.0, "Weight of Yao et al.'s random-completion NLL term (0: off).")
    random_source: str = _f("shuffle", "Random completions: another forget record's (shuffle) or retain text (retain).",
                            choices=RANDOM_SOURCES)
    # tokenstein and value_swap: the word and the made-up words its twins use
    word: str | None = _f(None, "The word to forget (default: the word every forget completion starts with).",
                          type="str")
    tokensteins: int = _f(8, "Made-up words in the training population (made from --counts, seeded by --tokenstein-seed).")
    tokenstein_file: str | None = _f(None, "Training tokensteins from a file, one per line (instead of --counts).",
                                     path="file")
    counts: str | None = _f(None, "counts.npz (supercal count, in the model's tokenizer) to make the tokensteins from.",
                            path="file")
    tokenstein_seed: int = _f(1, "Seed of the training population (eval's uses another; the run's words are excluded there).")
    tokenstein_words: list = _f([], "The training population itself (written to config.yaml; given, it is used as is).",
                                type="list")
    suppress_word: bool = _f(True, "tokenstein: also before each piece of the completion's first mention, toward the "
                             "base model's distribution without that piece (renormalized).")
    twins: int = _f(2, "Twins per forget example; their base-model targets are averaged (rotating through the population).")
    swap_layers: Any = _f("all", "value_swap: blocks whose v_proj values are matched: all, last:N, or 0,3,5.",
                          type="layers")
    # LoRA
    lora_rank: int = _f(16, "LoRA rank.")
    lora_alpha: float = _f(32.0, "LoRA alpha; scale = alpha / rank.")
    lora_dropout: float = _f(0.0, "LoRA dropout.")
    lora_keys: list = _f(["auto"], "Linear layers inside each block to adapt (comma list); auto: the attention "
                         "query and value projections by the model's own names (q_proj/v_proj, else the fused QKV "
                         "layer, else every linear layer). config.yaml records the keys used.", type="list")
    lora_layers: Any = _f("all", "Blocks to adapt: all, last:N, or a list of indices like 0,3,5.", type="layers")
    # optimisation
    lr: float = _f(2e-4, "Peak learning rate (AdamW).")
    steps: int = _f(20, "Optimizer steps in total (a resumed run continues up to this).")
    batch_size: int = _f(2, "Forget examples per step (and retain examples per retain batch).")
    micro_batches: int = _f(1, "Compute each batch in this many pieces, one after another, adding up their "
                            "gradients: the memory of a smaller batch, the same update to float32 rounding "
                            "(under mlx.launch: pieces per process).")
    schedule: str = _f("constant", "Learning-rate schedule after warmup.", choices=SCHEDULES)
    warmup_steps: int = _f(0, "Linear warmup steps from 0 to lr.")
    lr_end: float = _f(0.0, "Final learning rate of the linear and cosine schedules.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Clip the gradient to this global norm (0: no clipping).")
    seed: int = _f(0, "Random seed (LoRA init, data order, dropout, probes).")
    # projection
    project: str = _f("off", "Project the forget gradient away from the retain subspace: off, global, per-layer.",
                      choices=PROJECT_MODES)
    project_k: int = _f(4, "Retain gradients (batches) spanning the retain subspace.")
    project_every: int = _f(3, "Recompute the retain subspace every N steps.")
    project_conflict_only: bool = _f(False, "Project only where the forget gradient opposes the mean retain gradient.")
    # precision and memory
    grad_checkpoint: bool = _f(False, "Recompute each block's activations in the backward pass (less memory).")
    compute_dtype: str = _f("auto", "Compute in this dtype whatever the stored weights. auto: float32 for a bfloat16, "
                            "float16 or quantized base on the CPU, native on a GPU (supercal info says which applies); "
                            "native: the stored dtype.", choices=COMPUTE_DTYPES, null="native")
    # probes
    probe_prompts: list = _f([], "Prompt to sample during training (repeatable).", type="list", cli="--probe-prompt",
                             multiple=True)
    probe_temps: list = _f([0.01, 0.07, 0.2, 0.5], "Sampling temperatures for probes (comma list; 0 = greedy).",
                           type="floats")
    probe_every: int = _f(10, "Probe every N steps (and before the first; 0: only before and after).")
    probe_samples: int = _f(1, "Samples per probe prompt and temperature.")
    probe_max_tokens: int = _f(40, "Tokens per probe response.")
    # guards and checkpoints
    stop_on_collapse: bool = _f(False, "Stop when the retain NLL rises past the threshold or probes degenerate.")
    collapse_retain_nll: float | None = _f(None, "Collapse threshold: absolute retain NLL.", type="float")
    collapse_retain_factor: float = _f(1.5, "Collapse threshold: retain NLL above this factor times its first value.")
    checkpoint_every: int = _f(10, "Save a checkpoint every N steps (and at the end).")
    # run control (CLI and Python only; not saved)
    resume: str | None = _f(None, "Continue the run in this folder from its last checkpoint.", path="dir")
    force: bool = _f(False, "Replace an existing run folder.", negatable=False)
    config: str | None = _f(None, "YAML file with any of these settings; command-line values override it.", path="file")


FIELDS = {f.name: f for f in dataclasses.fields(UnlearnConfig)}


def _as_list(name: str, value) -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise SupercalError(f"{name}: expected a list or a comma-separated string, got {value!r}")


def parse_layers(value, name: str = "lora_layers") -> str | list[int]:
    """'all' | 'last:N' | sorted list of block indices."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, str):
        v = value.strip().lower()
        if v == "all":
            return "all"
        if v.startswith("last:") and v[5:].strip().isdigit() and int(v[5:]) > 0:
            return f"last:{int(v[5:])}"
        value = _as_list(name, v)
    if isinstance(value, (list, tuple)) and value:
        try:
            idx = sorted({int(i) for i in value})
        except (TypeError, ValueError):
            idx = None
        if idx is not None:
            return idx
    raise SupercalError(f"{name}: expected all, last:N or a list of block indices like 0,3,5, got {value!r}")


def _coerce(name: str, value):
    """Check and convert one setting; SupercalError names the key and what it accepts."""
    f = FIELDS[name]
    kind = f.metadata["type"]
    if value is None:
        if f.default is None:
            return None
        if "null" in f.metadata:  # what an empty value meant in config.yaml files of earlier versions
            return f.metadata["null"]
        raise SupercalError(f"{name}: a value is required")
    if kind == "list":
        return [str(v) for v in _as_list(name, value)]
    if kind == "floats":
        try:
            floats = [float(v) for v in _as_list(name, value)]
        except (TypeError, ValueError):
            raise SupercalError(f"{name}: expected numbers like 0.01,0.5, got {value!r}") from None
        for v in floats:
            _check_range(name, v)
        return floats
    if kind == "layers":
        return parse_layers(value, name)
    try:
        if kind == "bool":
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                value = value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise ValueError
        elif kind == "int":
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            _check_range(name, number, limit=MAX_INT)
            if number != int(number):
                raise ValueError
            value = int(number)
        elif kind == "float":
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
            _check_range(name, value)
        else:
            value = str(value)
    except (TypeError, ValueError):
        raise SupercalError(f"{name}: expected {kind}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise SupercalError(f"{name}: {value!r} is not one of {', '.join(choices)}")
    return value


def _check_range(name: str, value: float, *, limit: float = MAX_FLOAT) -> None:
    """nan, inf and absurd magnitudes are refused: they pass every comparison or overflow later."""
    import math

    if not math.isfinite(value):
        raise SupercalError(f"{name}: {value} is not a finite number")
    if abs(value) > limit:
        raise SupercalError(f"{name}: {value:g} is out of range (at most {limit:g})")


def read_yaml_mapping(path: str | os.PathLike) -> dict:
    """The raw YAML mapping in ``path`` (keys with - turned into _); one-line errors for unreadable files."""
    import yaml

    from ..io import read_text

    text = read_text(path, what="YAML file of settings")
    if "\x00" in text:
        raise SupercalError(f"{path} is not a YAML text file (it holds NUL bytes)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SupercalError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SupercalError(f"{path}: expected a mapping of settings (key: value), got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def read_yaml(path: str | os.PathLike) -> dict:
    """Settings from a YAML mapping; unknown keys are an error that lists the valid ones.

    A run's own records (:data:`RECORD_KEYS`) are dropped, so a run's config.yaml can seed a new run.
    """
    data = {k: v for k, v in read_yaml_mapping(path).items() if k not in RECORD_KEYS}
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        valid = ", ".join(k for k in FIELDS if k not in RUN_CONTROL)
        raise SupercalError(f"{path}: unknown setting(s) {', '.join(unknown)}; valid keys: {valid}")
    return data


def load_config(path: str | os.PathLike | None = None, **overrides) -> UnlearnConfig:
    """Defaults < YAML file at ``path`` < ``overrides`` (only the values the user gave).

    With ``resume=RUN_DIR`` (and no ``path``) the YAML file is ``RUN_DIR/config.yaml``, so a
    resumed run keeps its settings unless an override changes them (e.g. more ``steps``).
    """
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise SupercalError(f"unknown setting(s) {', '.join(unknown)}")
    path = path or overrides.get("config")
    resume = overrides.get("resume")
    if resume and path:
        raise SupercalError("--resume uses the run folder's own config.yaml; give changed settings as options, not --config")
    if resume:
        path = os.path.join(resume, "config.yaml")
        if not os.path.isdir(resume):
            from ..outputs import restore_cut_short

            restore_cut_short(resume)  # a --force swap killed between its two renames: the old run comes back
        if not os.path.isfile(path):
            raise SupercalError(f"{resume} has no config.yaml; is it a run folder written by supercal unlearn?")
    saved: dict[str, Any] = read_yaml(path) if path else {}
    merged = saved | overrides
    values = {}
    for name in merged:
        try:
            values[name] = _coerce(name, merged[name])
        except SupercalError as e:
            raise SupercalError(f"{path}: {e}" if name not in overrides else str(e)) from None
    if resume:
        values["out"] = str(resume)
    cfg = UnlearnConfig(**values)
    if resume:
        refused = {k: v for k, v in changed_settings(saved, cfg).items() if k not in RESUME_MAY_CHANGE}
        if refused:
            what = "; ".join(f"{k} {_show(old)} -> {_show(new)}" for k, (old, new) in refused.items())
            raise SupercalError(f"--resume cannot change {', '.join(refused)} ({what}): that would change what the "
                                f"adapters in {resume} are. Start a new run with another --out instead")
    _check(cfg)
    return cfg


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _same_path(a, b) -> bool:
    if not a or not b:
        return a == b
    return os.path.realpath(a) == os.path.realpath(b)


def changed_settings(saved: dict, cfg: UnlearnConfig) -> dict[str, tuple]:
    """{name: (saved value, value in cfg)} for every setting that differs from a run's saved config."""
    out = {}
    for name, f in FIELDS.items():
        if name in RUN_CONTROL or name == "out":
            continue
        if name in saved:
            old = _coerce(name, saved[name])
        else:
            old = f.default_factory() if callable(f.default_factory) else f.default
        new = getattr(cfg, name)
        same = _same_path(old, new) if name in PATH_SETTINGS else old == new
        if not same:
            out[name] = (old, new)
    return out


def _check(cfg: UnlearnConfig) -> None:
    for name in ("model", "forget", "out"):
        if not getattr(cfg, name):
            raise SupercalError(f"missing setting {name}: give --{name} or put {name}: in the config file")
    positive = ("max_tokens", "lora_rank", "steps", "batch_size", "project_k", "project_every", "checkpoint_every",
                "probe_samples", "probe_max_tokens", "tokensteins", "twins", "micro_batches")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise SupercalError(f"{name} must be at least 1 (got {getattr(cfg, name)})")
    for name in ("lr", "lora_alpha", "npo_beta"):
        if getattr(cfg, name) <= 0:
            raise SupercalError(f"{name} must be positive (got {getattr(cfg, name)})")
    for name in ("retain_weight", "random_weight", "weight_decay", "max_grad_norm", "warmup_steps", "lr_end",
                 "probe_every"):
        if getattr(cfg, name) < 0:
            raise SupercalError(f"{name} must not be negative (got {getattr(cfg, name)})")
    if not 0 <= cfg.lora_dropout < 1:
        raise SupercalError(f"lora_dropout must be in [0, 1) (got {cfg.lora_dropout})")
    if not cfg.lora_keys:
        raise SupercalError("lora_keys is empty; name the linear layers to adapt, e.g. attn.q_proj,attn.v_proj")
    if cfg.loss in ("tokenstein", "value_swap"):
        if not (cfg.tokenstein_words or cfg.tokenstein_file or cfg.counts):
            raise SupercalError(f"loss {cfg.loss} needs made-up words: give --counts counts.npz (with --tokensteins N) "
                                "or --tokenstein-file FILE")
        if cfg.random_weight > 0:
            raise SupercalError(f"loss {cfg.loss} has no random-completion term; leave random_weight at 0")
        if cfg.loss == "value_swap" and not any(k.split(".")[-1] in ("v_proj", "auto") for k in cfg.lora_keys):
            raise SupercalError("loss value_swap trains v_proj: put it in --lora-keys (e.g. attn.v_proj)")
    if not cfg.retain:
        needs = [f"loss {cfg.loss}"] if cfg.loss.endswith(("_kl", "graddiff")) else []
        needs += [f"project {cfg.project}"] if cfg.project != "off" else []
        needs += ["random_source retain"] if cfg.random_weight > 0 and cfg.random_source == "retain" else []
        if needs:
            raise SupercalError(f"{' and '.join(needs)} needs retain data: give --retain retain.jsonl")
    if any(t < 0 for t in cfg.probe_temps):
        raise SupercalError("probe_temps must not be negative")


def dump_config(cfg: UnlearnConfig, records: dict | None = None) -> str:
    """The resolved settings as YAML (run-control fields left out), in field order, then ``records``
    (:data:`RECORD_KEYS`: data fingerprints, the history of --resume overrides)."""
    import yaml

    data = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_CONTROL}
    data.update({k: v for k, v in (records or {}).items() if k in RECORD_KEYS and v})
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
