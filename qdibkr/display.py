"""Plain-text tables of API results, for the command line and the demo."""

import dataclasses
import datetime as dt
import math


def records(result) -> list[dict]:
    """Rows of any API result: a DataFrame, a dataclass, or a list of dataclasses or dicts."""
    if hasattr(result, "to_dict"):
        return result.to_dict("records")
    if dataclasses.is_dataclass(result):
        return [dataclasses.asdict(result)]
    return [r if isinstance(r, dict) else dataclasses.asdict(r) for r in result]


def cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if value.is_integer():
            return f"{int(value):,}"
        return f"{value:,.4f}".rstrip("0") if abs(value) < 1e6 else f"{value:,.2f}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    if isinstance(value, dict):
        return ", ".join(f"{k} {cell(v)}" for k, v in value.items())
    return str(value)


def table(rows: list[dict]) -> str:
    if not rows:
        return "(none)"
    columns = list(rows[0])
    cells = [[cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)).rstrip()
              for r in cells]
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("-", "").isdigit()
