"""The one exception type for user-facing errors.

Library code raises :class:`SupercalError` with a one-line message that says
what to do; the CLI turns it into a clean ``Error: ...`` and a non-zero exit.
"""

from __future__ import annotations


class SupercalError(Exception):
    """A problem with the user's input or environment, with a fix in the message."""
