"""What the benchmarks report of a list of durations: percentiles, in milliseconds."""

import statistics


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of ``values``: the nearest of them, no interpolation."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def milliseconds(name: str, seconds: list[float]) -> dict:
    """``{name}_ms_p50`` and ``{name}_ms_p99`` of durations given in seconds."""
    return {f"{name}_ms_p50": 1e3 * statistics.median(seconds), f"{name}_ms_p99": 1e3 * percentile(seconds, 99)}


def spread(values: list[float]) -> dict:
    """Median, min and max: the median to quote (one slow or one lucky run does not move it), min and
    max to show how noisy the machine was."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}
