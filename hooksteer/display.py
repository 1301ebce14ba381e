"""Plain-text display of generations: one prompt, several answers side by side in columns.

Used by the CLI (``hooksteer demo``, ``hooksteer generate``) and the HyperSteer demo.
"""

from __future__ import annotations

import shutil
import textwrap

__all__ = ["side_by_side"]


def side_by_side(prompt: str, columns: dict[str, str], width: int | None = None) -> str:
    """Format one prompt and several generations as text columns.

    Example:
        >>> print(side_by_side("Hi", {"a": "x", "b": "y"}, width=30))  # doctest: +NORMALIZE_WHITESPACE
        PROMPT: Hi
        a              | b
        -------------- + --------------
        x              | y
    """
    width = width or min(shutil.get_terminal_size((120, 20)).columns, 160)
    col_width = max(12, (width - 3 * (len(columns) - 1)) // len(columns))
    wrapped = [textwrap.wrap(text or "(empty)", col_width) for text in columns.values()]
    height = max(len(lines) for lines in wrapped)
    rows = [f"PROMPT: {prompt}", " | ".join(name.ljust(col_width) for name in columns).rstrip(),
            " + ".join("-" * col_width for _ in columns)]
    for i in range(height):
        cells = [(lines[i] if i < len(lines) else "").ljust(col_width) for lines in wrapped]
        rows.append(" | ".join(cells).rstrip())
    return "\n".join(rows)
