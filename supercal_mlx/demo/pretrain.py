"""Pretraining the demo's small GPT-J from scratch on the synthetic corpus, with a cache.

mlx-lm's trainer (``mlx_lm.tuner.trainer``) is built for fine-tuning: it
expects a dataset of records, LoRA-style frozen models and checkpoints of
adapters. Pretraining a ~1M-parameter model on one token stream needs none of
that, so this module has a compact full-parameter loop: random windows of the
tokenised corpus, ``nn.value_and_grad`` of the next-token loss, AdamW with a
linear warmup and cosine decay (``mlx.optimizers`` schedules), gradient
clipping. Everything else (the model, the tokenizer files, the folder layout)
comes from :mod:`supercal_mlx.model`, so the result is an ordinary MLX model
folder that every command accepts.

The pretrained model is cached under ``~/.cache/supercal-mlx/`` (or
``$SUPERCAL_CACHE``), keyed by a hash of the whole recipe (corpus generator
version and sizes, tokenizer, model config, training settings), so a second
demo run skips pretraining. The folder is built under a temporary name and
renamed at the end, so Ctrl-C never leaves a folder that looks complete; a
folder whose files do not check out is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import synthetic
from ..errors import SupercalError
from ..io import atomic_dir

CACHE_ENV = "SUPERCAL_CACHE"
_MARKER = "demo-model.json"


@dataclass(frozen=True)
class DemoModelSpec:
    """The whole recipe of a demo model: corpus, tokenizer, architecture, training."""

    corpus: synthetic.CorpusSpec = synthetic.CorpusSpec()
    vocab_size: int = 1024
    n_embd: int = 128
    n_head: int = 4
    n_layer: int = 3
    rotary_dim: int = 16
    n_positions: int = 256
    steps: int = 1500
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.01
    seed: int = 0
    generator_version: int = field(default=synthetic.GENERATOR_VERSION)

    def model_config(self) -> dict:
        return dict(n_embd=self.n_embd, n_head=self.n_head, n_layer=self.n_layer,
                    rotary_dim=self.rotary_dim, n_positions=self.n_positions)

    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# The demo's default model and the tiny one for --fast (CI): same recipe, smaller everything.
DEFAULT_SPEC = DemoModelSpec()
FAST_SPEC = DemoModelSpec(
    corpus=synthetic.CorpusSpec(keyword_lines=200, ordinary_lines=800, realword_lines=300, madeup_words=100),
    vocab_size=512, n_embd=64, n_head=4, n_layer=2, rotary_dim=8, n_positions=128,
    steps=80, batch_size=16, seq_len=64, lr=5e-3, warmup=10,
)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "supercal-mlx")


def pretrain(model_dir: str | os.PathLike, text: str, *, steps: int, batch_size: int, seq_len: int, lr: float,
             warmup: int = 0, weight_decay: float = 0.0, seed: int = 0,
             progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Train every weight of the model in ``model_dir`` on ``text`` and save them in place; return step records."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np

    from ..model import load

    model, tok = load(model_dir)
    # Line by line: the same ids as the whole text (byte-level BPE never merges across a newline),
    # without the tokenizer's warning about sequences longer than the model.
    ids = np.asarray([i for line in text.splitlines(keepends=True) for i in tok.encode(line, add_special_tokens=False)],
                     dtype=np.int32)
    if len(ids) <= seq_len + 1:
        raise SupercalError(f"the corpus has only {len(ids)} tokens; it needs more than {seq_len + 1}")
    model.train()
    schedule = optim.join_schedules(
        [optim.linear_schedule(lr / 10, lr, max(warmup, 1)), optim.cosine_decay(lr, max(steps - warmup, 1), lr / 10)],
        [max(warmup, 1)],
    )
    opt = optim.AdamW(learning_rate=schedule, weight_decay=weight_decay)

    def loss_fn(model, x, y):
        logits = model(x)  # (B, L, V)
        return nn.losses.cross_entropy(logits.astype(mx.float32), y, reduction="mean")

    loss_and_grad = nn.value_and_grad(model, loss_fn)

    state = [model.state, opt.state]

    # Compiled: on the CPU this halves the step time of such a small model (fewer, fused kernels).
    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y):
        loss, grads = loss_and_grad(model, x, y)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        opt.update(model, grads)
        return loss

    rng = np.random.default_rng(seed)
    records = []
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        starts = rng.integers(0, len(ids) - seq_len - 1, size=batch_size)
        window = np.stack([ids[s:s + seq_len + 1] for s in starts])  # (B, L+1)
        x, y = mx.array(window[:, :-1]), mx.array(window[:, 1:])
        loss = step(x, y)
        mx.eval(loss, model.parameters(), opt.state)
        rec = {"step": i, "loss": float(loss), "seconds": time.perf_counter() - t0}
        records.append(rec)
        if progress:
            progress(rec)
    from mlx.utils import tree_flatten

    mx.save_safetensors(str(Path(model_dir) / "model.safetensors"), dict(tree_flatten(model.parameters())),
                        metadata={"format": "mlx"})
    return records


def build_demo_model(spec: DemoModelSpec, out_dir: str | os.PathLike, *,
                     progress: Callable[[dict], None] | None = None) -> Path:
    """Generate the corpus, train the tokenizer, create and pretrain the model, all in ``out_dir``."""
    from .factories import create_gptj, train_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The tokenizer never sees the keyword, like GPT-2's BPE barely saw it: the word splits into many pieces.
    # It is trained before the made-up words exist, which are then glued from its own a-z tokens, as
    # tokensteins are (random letters would fill its vocabulary with letter pairs and split every word to letters).
    plain = [ln for ln in synthetic.base_lines(spec.corpus) if synthetic.KEYWORD not in ln.lower()]
    tok_dir = train_tokenizer(plain, out / "tokenizer-src", vocab_size=spec.vocab_size)
    lines = synthetic.generate(spec.corpus, pieces=letter_tokens(tok_dir, plain))
    text = "\n".join(lines) + "\n"
    (out / "corpus.txt").write_text(text, encoding="utf-8")
    create_gptj(out / "model", tok_dir, seed=spec.seed, **spec.model_config())
    shutil.rmtree(tok_dir)
    records = pretrain(out / "model", text, steps=spec.steps, batch_size=spec.batch_size, seq_len=spec.seq_len,
                       lr=spec.lr, warmup=spec.warmup, weight_decay=spec.weight_decay, seed=spec.seed,
                       progress=progress)
    with open(out / "pretrain.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    marker = {"spec": dataclasses.asdict(spec), "key": spec.key(), "final_loss": records[-1]["loss"],
              "seconds": records[-1]["seconds"],
              "weights_sha256": _sha256(out / "model" / "model.safetensors")}
    (out / _MARKER).write_text(json.dumps(marker, indent=2))
    return out


def letter_tokens(tok_dir: Path, lines: list[str]) -> dict[str, int]:
    """The tokens of the tokenizer in ``tok_dir`` that are lowercase letters a-z only (word-inner pieces),
    each with how often it occurs in ``lines``."""
    import re

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json"))
    letters = {i: t for t, i in tok.get_vocab().items() if re.fullmatch("[a-z]+", t)}
    counts = dict.fromkeys(letters.values(), 0)
    for enc in tok.encode_batch(lines):
        for i in enc.ids:
            if i in letters:
                counts[letters[i]] += 1
    return counts


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_cached(folder: Path, spec: DemoModelSpec) -> str | None:
    """None if ``folder`` holds a complete demo model for ``spec``; otherwise why not."""
    marker = folder / _MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return f"{marker.name} is missing or unreadable"
    if info.get("key") != spec.key():
        return "it was made with another recipe"
    for name in ("corpus.txt", "model/config.json", "model/tokenizer.json", "model/model.safetensors"):
        if not (folder / name).is_file():
            return f"{name} is missing"
    if _sha256(folder / "model" / "model.safetensors") != info.get("weights_sha256"):
        return "the weights do not match their checksum"
    return None


def demo_model(spec: DemoModelSpec = DEFAULT_SPEC, *, root: str | os.PathLike | None = None,
               progress: Callable[[dict], None] | None = None,
               notice: Callable[[str], None] | None = None) -> tuple[Path, bool]:
    """The cached demo model folder for ``spec`` (built if needed): (folder, built_now).

    The folder holds ``corpus.txt``, ``model/`` (an MLX model folder) and ``pretrain.jsonl``.
    """
    base = Path(root) if root is not None else cache_root()
    base.mkdir(parents=True, exist_ok=True)
    folder = base / f"demo-model-{spec.key()}"
    if folder.exists():
        problem = check_cached(folder, spec)
        if problem is None:
            return folder, False
        if notice:
            notice(f"the cached demo model in {folder} is corrupt ({problem}); rebuilding it")
    if notice:
        notice(f"pretraining the demo model into {folder} (first run only)")
    with atomic_dir(folder, force=True) as tmp:
        build_demo_model(spec, tmp, progress=progress)
    return folder, True
