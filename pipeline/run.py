"""Running a built pipeline: the runner that can run it, Ctrl-C / SIGTERM, and its counters.

`mine_once` builds and runs one pipeline (the CLI, and each part of `--commit_every`).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Sequence

import apache_beam as beam

from transforms.metrics import NAMESPACE
from transforms.records import Failure
from transforms.watch import resume_watching, stop_watching

from .config import ConfigError, is_local, is_streaming
from .graph import build_pipeline
from .options import MaskMineOptions, StreamingOptions


def say(message: str) -> None:
    """A line for the person running maskmine, on stderr."""
    print(f"maskmine: {message}", file=sys.stderr)


def mine_once(
    options: MaskMineOptions, listing_errors: Sequence[Failure] = ()
) -> tuple[int, dict[str, int] | None]:
    """Build and run one pipeline: (exit status, counters if it ran locally, else None).

    listing_errors: Failures of a listing done before (see build_pipeline)."""
    start = time.monotonic()
    pipeline = new_pipeline(options)
    try:
        build_pipeline(pipeline, options, listing_errors)
    except ConfigError as e:  # found while building, e.g. an unreadable earlier output
        print(f"maskmine: error: {e}", file=sys.stderr)
        return 2, None
    try:
        result = run_until_done(pipeline, options)
    except KeyboardInterrupt:
        say("interrupted")
        return 130, None
    if not is_local(options):
        return 0, None
    say(f"done in {time.monotonic() - start:.1f} s, outputs under {options.output}")
    print(summarize(result), file=sys.stderr)
    return 0, counters(result)


def new_pipeline(options: MaskMineOptions) -> beam.Pipeline:
    """The pipeline for `options`, on the runner that can run its graph.

    A local (DirectRunner) streaming run that watches --input folders runs on Beam's
    in-process FnApiRunner: Beam 2.77's streaming DirectRunner rejects every splittable
    DoFn, the watcher included (see transforms.streaming.WatchImageURIs). The FnApiRunner
    runs each stage to completion, so such a run writes its windows' files once watching
    stops (--stop_after_s, or the first Ctrl-C: see `run_until_done`), each window's rows
    in its own files as on Dataflow. Pub/Sub sources stay on the streaming DirectRunner,
    which reads them live (one Pub/Sub source and watched folders together need Dataflow).
    """
    stream = options.view_as(StreamingOptions)
    pubsub = stream.input_subscription or stream.input_topic
    if not (is_streaming(options) and options.input and is_local(options)) or pubsub:
        return beam.Pipeline(options=options)  # (both: refused by resolve_defaults)
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return beam.Pipeline(runner=FnApiRunner(), options=options)


def run_until_done(pipeline: beam.Pipeline, options: MaskMineOptions):
    """Run `pipeline` and wait for it; Ctrl-C stops it cleanly. Returns the result.

    - A local run that watches --input folders (FnApiRunner, blocking in run()): the
      first Ctrl-C stops the polling (`stop_watching`), so the run finishes the files
      already found and writes their windows, as a drained Dataflow job does; a second
      Ctrl-C aborts (KeyboardInterrupt).
    - A local run whose runner returned while running (streaming DirectRunner): Ctrl-C
      cancels it, then KeyboardInterrupt is raised for the caller to exit with.
    - A remote job (Dataflow): Ctrl-C stops waiting and leaves the job running (cancel or
      drain it with gcloud), then KeyboardInterrupt is raised.
    Anything else: KeyboardInterrupt as usual.
    """
    watching = is_streaming(options) and bool(options.input) and is_local(options)
    interrupts = 0

    def on_interrupt(signum, frame):
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1 and watching:
            print(
                "maskmine: Ctrl-C: no longer watching the inputs; finishing the images "
                "found so far and writing their files (Ctrl-C again to abort)",
                file=sys.stderr,
            )
            stop_watching()
            return
        raise KeyboardInterrupt

    if watching:
        resume_watching()  # a run stopped earlier in this process must not stop this one
    in_main = threading.current_thread() is threading.main_thread()
    # SIGTERM (a scheduler stopping the run, `kill`) is handled like Ctrl-C.
    previous = (
        {sig: signal.signal(sig, on_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        if in_main
        else {}
    )
    try:
        result = pipeline.run()
        try:
            result.wait_until_finish()
        except KeyboardInterrupt:
            if is_local(options):
                print("maskmine: cancelling the pipeline", file=sys.stderr)
                result.cancel()
            else:
                print(
                    "maskmine: stopped waiting; the job keeps running (cancel or drain it "
                    "with `gcloud dataflow jobs cancel|drain`)",
                    file=sys.stderr,
                )
            raise
        return result
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def counters(result) -> dict[str, int]:
    """This project's counters of a finished run, by name (committed values)."""
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    return {c.key.metric.name: c.committed for c in query["counters"]}


def summarize(result) -> str:
    """Counters and distributions of a finished run, one line each."""
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    lines = [f"  {name}: {value}" for name, value in sorted(counters(result).items())]
    for dist in query["distributions"]:
        d = dist.committed
        if d and d.count:
            # RunInference's own distributions (model load time, size) count loads.
            unit = "images" if dist.key.metric.name.endswith("per_image") else "samples"
            lines.append(
                f"  {dist.key.metric.name}: mean {d.mean:.0f}, min {d.min}, max {d.max} "
                f"({d.count} {unit})"
            )
    return "\n".join(lines)
