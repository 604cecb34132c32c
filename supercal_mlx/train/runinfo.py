"""What a run folder remembers about its inputs, so ``--resume`` can refuse to continue on other ones.

``config.yaml`` records, beside the settings (:data:`supercal_mlx.train.config.RECORD_KEYS`):

* ``fingerprints``: the sha256 of the forget and retain files (and counts / tokenstein file), and
  the model folder's :func:`supercal_mlx.model.model_fingerprint` (cheap: a MiB of each weight file);
* ``overrides``: one entry per ``--resume`` that changed an allowed setting
  (:data:`~supercal_mlx.train.config.RESUME_MAY_CHANGE`), with the step it resumed from.

A resume that would change anything else, or finds the data changed under the same path,
is refused before anything in the folder is written.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import SupercalError
from ..model import model_fingerprint
from .config import RESUME_MAY_CHANGE, UnlearnConfig, changed_settings, read_yaml_mapping

def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise SupercalError(f"cannot read {path}: {e.strerror}") from None
    return h.hexdigest()


def fingerprints(cfg: UnlearnConfig) -> dict:
    out = {"model": model_fingerprint(cfg.model), "forget": file_sha256(cfg.forget)}
    for key in ("retain", "counts", "tokenstein_file"):
        if getattr(cfg, key, None):
            out[key] = file_sha256(getattr(cfg, key))
    return out


def resume_records(run_dir: Path, cfg: UnlearnConfig, *, step: int) -> dict:
    """The records config.yaml will hold after this resume; refuses changed settings, model or data."""
    saved = read_yaml_mapping(run_dir / "config.yaml")
    settings = {k: v for k, v in saved.items() if k not in ("fingerprints", "overrides")}
    changes = changed_settings(settings, cfg)
    refused = [k for k in changes if k not in RESUME_MAY_CHANGE]
    if refused:
        raise SupercalError(f"--resume cannot change {', '.join(refused)}: that would change what the adapters in "
                            f"{run_dir} are. Start a new run with another --out instead")
    old = saved.get("fingerprints") or {}
    if old:
        now = fingerprints(cfg)
        for key, was in old.items():
            if key in now and now[key] != was:
                what = f"the model folder {cfg.model}" if key == "model" else f"the {key} file {getattr(cfg, key)}"
                raise SupercalError(f"{what} changed since the run started (sha256 {was[:12]}... now "
                                    f"{now[key][:12]}...); resuming would train on other input. Restore it or "
                                    "start a new run with another --out")
    history = list(saved.get("overrides") or [])
    if changes:
        history.append({"at_step": step, **{k: {"from": a, "to": b} for k, (a, b) in changes.items()}})
    return {"fingerprints": old, "overrides": history}
