"""Table cells and markdown tables shared by the run table and the sweep report."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def fmt(v) -> str:
    """A table cell: floats to 3 decimals, missing values as a dash."""
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def p_value(p) -> str:
    """A p-value for a table cell: three decimals, ``< 0.001`` below that, a dash when missing."""
    if p is None or p != p:
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_clause(p) -> str:
    """A p-value in a sentence: ``p < 0.001`` or ``p = 0.012``."""
    text = p_value(p)
    return "p " + text if text.startswith("<") else "p = " + text


def markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        out.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(out)
