"""Markdown tables of probe rows: prompt | temperature | sample | response (| another run's response).

Shared by ``supercal probe``, ``supercal report`` and the demo. Every cell stays on one line: pipes are
escaped, line breaks shown as ``<br>``, other control characters as ``\\xNN``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import SupercalError

if TYPE_CHECKING:
    from .probes import ProbeRow


def markdown_table(rows: list[ProbeRow], *, other: list[ProbeRow] | None = None,
                   labels: tuple[str, str] = ("response", "swapped response")) -> str:
    """A markdown table: prompt | temperature | sample | response (| the other run's response, side by side)."""
    if other is not None and len(other) != len(rows):
        raise SupercalError(f"cannot put {len(rows)} rows beside {len(other)}: probe both with the same settings")
    header = ["prompt", "temperature", "sample", labels[0]] + ([labels[1]] if other is not None else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for i, r in enumerate(rows):
        cells = [r.prompt, f"{r.temperature:g}", str(r.sample), r.response]
        if other is not None:
            cells.append(other[i].response)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    """One table cell: pipes escaped, line breaks shown as <br>, other control characters as \\xNN,
    so every row stays on one line."""
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    text = re.sub(r"\r\n|\r|\n", "<br>", text)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text).strip() or " "


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]")
