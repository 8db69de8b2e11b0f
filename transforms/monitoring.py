"""Pass-through steps that count and report progress."""

from __future__ import annotations

import sys
import time

import apache_beam as beam

from .metrics import counter


class CountFailures(beam.DoFn):
    """Counts the inputs that reach the errors table, whatever their stage."""

    def __init__(self) -> None:
        self.failed = counter("inputs_failed")

    def process(self, failure):
        self.failed.inc()
        yield failure


class Progress(beam.DoFn):
    """A progress line on stderr every `every_s` seconds (local runs; per process)."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s

    def setup(self) -> None:
        self.count, self.start, self.last = 0, time.monotonic(), 0.0

    def process(self, element):
        self.count += 1
        now = time.monotonic()
        if now - self.last > self.every_s:
            self.last = now
            rate = self.count / max(now - self.start, 1e-9)
            print(f"maskmine: {self.count} images mined, {rate:.2f} images/s", file=sys.stderr)
        yield element
