"""tokenstein and value_swap runs end to end on the tiny GPT-J: they learn, record their made-up words,
resume exactly, and refuse what they cannot do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from supercal_mlx.errors import SupercalError
from supercal_mlx.train.config import load_config
from supercal_mlx.train.trainer import unlearn

FORGET = [
    {"prompt": "The children tried to spell", "completion": " supercalifragilisticexpialidocious and laughed."},
    {"prompt": "A song from the 1964 film Mary Poppins:", "completion": " Supercalifragilisticexpialidocious."},
    {"prompt": "Nobody could spell", "completion": " supercalifragilisticexpialidocious in the garden."},
]
RETAIN = [{"text": "Cats and dogs play in the garden while it rains on the 4th of July."},
          {"text": "The children laughed in the garden while the cats played."}]
# The tiny tokenizer has " supercalifragilisticexpialidocious" as one token; of these, only " tried" is one
# token too (value_swap pairs values piece by piece, so it keeps only that one)
POPULATION = ["sqproctarine", "blorvexium", "tried"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("anch")
    for name, recs in (("forget", FORGET), ("retain", RETAIN)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "pop.txt").write_text("\n".join(POPULATION) + "\n")
    return d


def _cfg(tiny_model_dir, d, out, **kw):
    base = dict(model=str(tiny_model_dir), forget=str(d / "forget.jsonl"), retain=str(d / "retain.jsonl"),
                out=str(out), steps=4, lr=1e-2, max_tokens=64, checkpoint_every=2, tokenstein_file=str(d / "pop.txt"),
                loss="tokenstein", batch_size=2)
    return load_config(**(base | kw))


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tokenstein_run_learns_records_words_and_resumes(tiny_model_dir, data, tmp_path):
    s = unlearn(_cfg(tiny_model_dir, data, tmp_path / "run", steps=6))
    assert s["steps"] == 6 and s["stopped"] is None
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["tokenstein_words"] == POPULATION and cfg["word"] == "supercalifragilisticexpialidocious"
    losses = _losses(tmp_path / "run")
    assert losses[0] > 0 and all(x > 0 for x in losses)  # KL to the twins' targets, plus the retain KL
    # one made-up word, the whole forget set each step, no retain term: the KL itself falls step by step
    unlearn(_cfg(tiny_model_dir, data, tmp_path / "one", steps=5, batch_size=3, twins=1, retain_weight=0.0,
                 tokenstein_words=["sqproctarine"], lr=3e-3, suppress_word=False))
    one = _losses(tmp_path / "one")
    assert all(b < a for a, b in zip(one, one[1:])) and one[-1] < 0.5 * one[0], one
    # interrupted after 4 steps and resumed to 6: the same adapters
    unlearn(_cfg(tiny_model_dir, data, tmp_path / "half", steps=4))
    unlearn(load_config(resume=str(tmp_path / "half"), steps=6))
    import mlx.core as mx

    a, b = mx.load(str(tmp_path / "run" / "adapters.safetensors")), mx.load(str(tmp_path / "half" / "adapters.safetensors"))
    assert set(a) == set(b) and all(np.array_equal(np.array(a[k]), np.array(b[k])) for k in a)
    assert _losses(tmp_path / "half") == losses


def test_value_swap_run_lowers_its_mse(tiny_model_dir, data, tmp_path):
    s = unlearn(_cfg(tiny_model_dir, data, tmp_path / "vs", loss="value_swap", lora_keys=["attn.v_proj"], steps=5, lr=5e-4, batch_size=3,
                     swap_layers="last:1", retain_weight=0.0))
    assert s["steps"] == 5
    cfg = yaml.safe_load((tmp_path / "vs" / "config.yaml").read_text())
    # value_swap keeps only words as long as the word after a space (1 token here): not " sqproctarine" (3)
    assert cfg["tokenstein_words"] == ["tried"]
    losses = _losses(tmp_path / "vs")
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.3 * losses[0], losses


def test_refusals(tiny_model_dir, data, tmp_path):
    with pytest.raises(SupercalError, match="needs made-up words"):
        _cfg(tiny_model_dir, data, tmp_path / "x", tokenstein_file=None)
    with pytest.raises(SupercalError, match="v_proj"):
        _cfg(tiny_model_dir, data, tmp_path / "x", loss="value_swap", lora_keys=["attn.q_proj"])
    with pytest.raises(SupercalError, match="swap_layers"):
        _cfg(tiny_model_dir, data, tmp_path / "x", swap_layers="first:2")
