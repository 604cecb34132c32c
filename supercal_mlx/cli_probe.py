"""supercal commands: probe."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
