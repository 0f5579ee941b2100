"""Text for a terminal: untrusted strings made harmless, messages kept to one line."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with every control character (escape sequences, newlines, carriage returns,
    C1 controls, line separators) written as a visible escape: nothing that came from a
    CSR or a file can move the cursor, colour the terminal or forge another report line."""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


def one_line(text: str) -> str:
    """A multi-line library message (click's choice lists) as one line."""
    joined = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return escape_controls(joined.replace(",  ", ", "))
