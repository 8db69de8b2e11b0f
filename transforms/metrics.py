"""The Beam metrics namespace of this project's counters and distributions (one owner).

Transforms count with `counter(name)` / `distribution(name)`; the run summary queries
`NAMESPACE`.
"""

from __future__ import annotations

from apache_beam.metrics import Metrics

NAMESPACE = "maskmine"


def counter(name: str):
    """A Beam counter of this project, e.g. counter("images_mined")."""
    return Metrics.counter(NAMESPACE, name)


def distribution(name: str):
    """A Beam distribution of this project, e.g. distribution("inference_ms_per_image")."""
    return Metrics.distribution(NAMESPACE, name)
