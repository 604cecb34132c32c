"""UnlearnConfig's field metadata: the one place a setting's type and path kind are declared, read by
load_config (YAML and overrides) and by the generated `unlearn` options."""

from __future__ import annotations

import click
import pytest

from supercal_mlx.cli import cli
from supercal_mlx.errors import SupercalError
from supercal_mlx.train import config as C


def test_every_field_declares_its_type():
    assert {name: f.metadata["type"] for name, f in C.FIELDS.items() if f.metadata["type"] not in ("int", "float",
            "str", "bool")} == {"lora_keys": "list", "lora_layers": "layers", "probe_prompts": "list",
                                "probe_temps": "floats", "tokenstein_words": "list", "swap_layers": "layers"}
    assert {name: f.metadata["path"] for name, f in C.FIELDS.items() if "path" in f.metadata} == {
        "model": "dir", "forget": "file", "retain": "file", "out": "any", "resume": "dir", "config": "file",
        "tokenstein_file": "file", "counts": "file"}
    assert C.FIELDS["collapse_retain_nll"].metadata["type"] == "float"  # default None: declared, not guessed
    with pytest.raises(TypeError, match="give type="):
        C._f(None, "a setting whose type cannot be told from its default")
    with pytest.raises(TypeError):
        C._f("x", "a path of an unknown kind", path="socket")


def test_unlearn_options_follow_the_metadata():
    params = {p.name: p for p in cli.commands["unlearn"].params}
    assert isinstance(params["model"].type, click.Path) and not params["model"].type.file_okay
    assert isinstance(params["forget"].type, click.Path) and not params["forget"].type.dir_okay
    out = params["out"].type
    assert isinstance(out, click.Path) and out.file_okay and out.dir_okay
    assert params["lr"].type is click.FLOAT and params["steps"].type is click.INT
    assert params["collapse_retain_nll"].type is click.FLOAT
    assert params["lora_layers"].type is click.STRING  # text that config.py parses (all, last:N, 0,3,5)
    assert isinstance(params["loss"].type, click.Choice) and list(params["loss"].type.choices) == list(C.LOSSES)
    assert params["force"].opts == ["--force"] and params["force"].secondary_opts == []
    assert params["stop_on_collapse"].secondary_opts == ["--no-stop-on-collapse"]
    assert params["probe_prompts"].opts == ["--probe-prompt"] and params["probe_prompts"].multiple


@pytest.mark.parametrize("key, value, message", [
    ("lr", "fast", "lr: expected float, got 'fast'"),
    ("steps", 2.5, "steps: expected int, got 2.5"),
    ("grad_checkpoint", "maybe", "grad_checkpoint: expected bool, got 'maybe'"),
    ("collapse_retain_nll", True, "collapse_retain_nll: expected float, got True"),
])
def test_values_are_read_by_the_declared_type(key, value, message):
    with pytest.raises(SupercalError) as e:
        C.load_config(model="m", forget="f.jsonl", out="o", **{key: value})
    assert str(e.value) == message


def test_declared_types_convert():
    cfg = C.load_config(model="m", forget="f.jsonl", out="o", steps="3", lr="1e-3", grad_checkpoint="yes",
                        collapse_retain_nll="4", lora_keys="attn.q_proj, attn.v_proj", probe_temps="0,0.5",
                        lora_layers="last:1")
    assert (cfg.steps, cfg.lr, cfg.grad_checkpoint, cfg.collapse_retain_nll) == (3, 1e-3, True, 4.0)
    assert cfg.lora_keys == ["attn.q_proj", "attn.v_proj"] and cfg.probe_temps == [0.0, 0.5]
    assert cfg.lora_layers == "last:1"
