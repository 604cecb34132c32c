"""SOURCE -> local folder: a folder as is, or a hub id downloaded with only the files convert needs."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import SupercalError
from .gptj import TOKENIZER_FILES

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SAFETENSORS = ["model*.safetensors", "model.safetensors.index.json"]
_BIN = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]


def resolve_source(source: str, *, revision: str | None = None) -> Path:
    """The local folder for ``source``: an existing folder, or a hub snapshot (downloaded if needed)."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SupercalError(f"{source} is a file; give the folder that holds config.json and the weights")
        if revision is not None:
            raise SupercalError("--revision applies to hub ids only; for a local folder, check out the revision there")
        return path
    if not _HUB_ID.fullmatch(source):
        raise SupercalError(f"{source} is neither a folder nor a hub id like EleutherAI/gpt-j-6b")
    return download(source, revision=revision)


def download(repo_id: str, *, revision: str | None = None) -> Path:
    """Download config, tokenizer and one weight format (safetensors preferred) of a hub model; tqdm shows progress.

    Offline (or with HF_HUB_OFFLINE=1), a snapshot already in the Hugging Face cache is used.
    """
    from huggingface_hub import HfApi, snapshot_download

    wanted = ["config.json", *TOKENIZER_FILES]
    try:
        files = HfApi().list_repo_files(repo_id, revision=revision)
    except Exception as e:  # network, auth, unknown repo or revision
        try:
            return Path(snapshot_download(repo_id, revision=revision, local_files_only=True,
                                          allow_patterns=[*wanted, *_SAFETENSORS, *_BIN]))
        except Exception:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SupercalError(f"cannot download {repo_id} (revision {revision or 'main'}): {msg}; "
                                "check the id, the revision and the network, or pass a local folder") from None
    if any(f.endswith(".safetensors") for f in files):
        wanted += _SAFETENSORS
    elif any(f.endswith(".bin") for f in files):
        wanted += _BIN
    else:
        raise SupercalError(f"{repo_id} (revision {revision or 'main'}) has no safetensors or .bin weights")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=wanted))
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SupercalError(f"download of {repo_id} failed: {msg}; run the command again to resume it") from None
