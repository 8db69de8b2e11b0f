"""The output windowing of streaming runs: each window gets its own set of files."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.transforms import trigger, window


def output_windowing(window_s: int, allowed_lateness_s: int) -> beam.WindowInto:
    """Fixed windows of `window_s` seconds, fired when the watermark passes their end and
    again for each late element up to `allowed_lateness_s` (each late firing writes its own
    files); later elements are dropped by the runner."""
    if window_s <= 0 or allowed_lateness_s < 0:
        raise ValueError(
            f"need window_s > 0 and allowed_lateness_s >= 0, got {window_s}, {allowed_lateness_s}"
        )
    return beam.WindowInto(
        window.FixedWindows(window_s),
        trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
        allowed_lateness=allowed_lateness_s,
        accumulation_mode=trigger.AccumulationMode.DISCARDING,
    )
