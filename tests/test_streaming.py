"""Streaming mode: Pub/Sub message parsing, windowed Parquet files, late data, dedup by content.

Pipelines run on the BundleBasedDirectRunner (the local runner that executes TestStream and
streaming triggers), fed by TestStream with explicit event times.
"""

import os
import re
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.transforms.window import TimestampedValue
from PIL import Image

from pipeline.config import ConfigError, resolve_defaults
from pipeline.graph import build_pipeline, mine_stream
from pipeline.options import MaskMineOptions
from pipeline.run import new_pipeline, run_until_done
from transforms.pubsub import MessageError, ParsePubSubMessages, parse_message
from transforms.records import Failure
from transforms.sinks import WriteWindowedTable
from transforms.uris import watch_pattern
from transforms.windowing import output_windowing

from .conftest import FIXTURES
from .helpers import FAST, scene

# --- Pub/Sub messages ---------------------------------------------------------------------

NOTIFICATION = b'{"kind": "storage#object", "bucket": "imgs", "name": "in/a b.jpg", "size": "9"}'


@pytest.mark.parametrize(
    "data, attributes, expected",
    [
        (b"gs://imgs/x/a.png\n", None, "gs://imgs/x/a.png"),
        (b"/data/x/../a.jpg", None, "/data/a.jpg"),
        (b"file:///data/a.jpg", None, "/data/a.jpg"),
        (b"gs://imgs/notes.txt", None, "gs://imgs/notes.txt"),  # named: kept, decode judges
        (NOTIFICATION, {"eventType": "OBJECT_FINALIZE"}, "gs://imgs/in/a b.jpg"),
        (NOTIFICATION, None, "gs://imgs/in/a b.jpg"),
        (
            b"",
            {"eventType": "OBJECT_FINALIZE", "bucketId": "b", "objectId": "c.PNG"},
            "gs://b/c.PNG",
        ),
        # Skipped: other events, objects that are not images, "folders".
        (NOTIFICATION, {"eventType": "OBJECT_DELETE"}, None),
        (b'{"bucket": "imgs", "name": "in/readme.txt"}', None, None),
        (b'{"bucket": "imgs", "name": "in/"}', None, None),
    ],
)
def test_messages_name_an_image(data, attributes, expected):
    assert parse_message(data, attributes) == expected


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty message"),
        (b"   \n", "empty message"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"bucket": "imgs"', "not valid JSON"),
        (b'{"bucket": "imgs", "id": 3}', "without string fields 'bucket' and 'name'"),
        (b'{"bucket": "", "name": "a.jpg"}', "without string fields"),
        (b"relative/a.jpg", "not a URI"),
        (b"gs://a/1.jpg\ngs://a/2.jpg", "several lines"),
    ],
)
def test_bad_messages_raise_with_the_reason(data, message):
    with pytest.raises(MessageError, match=message):
        parse_message(data)


def run_streaming(build) -> None:
    options = PipelineOptions(["--streaming", "--allow_unsafe_triggers"])
    with beam.Pipeline(runner=BundleBasedDirectRunner(), options=options) as p:
        build(p)


def test_bad_messages_become_error_rows_not_crashes(tmp_path):
    stream = (
        EventStream()
        .add_elements(
            [
                PubsubMessage(b"gs://imgs/a.jpg", {}),
                PubsubMessage(b"not a uri", {}),
                PubsubMessage(NOTIFICATION, {"eventType": "OBJECT_FINALIZE"}),
                PubsubMessage(b"\xff", {}),
                PubsubMessage(NOTIFICATION, {"eventType": "OBJECT_ARCHIVE"}),
            ]
        )
        .advance_watermark_to_infinity()
    )
    found = tmp_path / "found"
    found.mkdir()

    def build(p):
        out = p | stream | ParsePubSubMessages()
        merged = (
            out.uris | "U" >> beam.Map(lambda u: f"uri {u}"),
            out.errors | "E" >> beam.Map(lambda f: f"error {f.uri} | {f.stage} | {f.error}"),
        ) | beam.Flatten()
        # One file per line: a combiner would need a trigger on this unbounded input.
        _ = merged | beam.Map(lambda line: (found / uuid.uuid4().hex).write_text(line))

    run_streaming(build)
    assert sorted(f.read_text() for f in found.iterdir()) == [
        "error not a uri | message | not a URI (expected gs://bucket/object or an absolute path)",
        "error \ufffd | message | message is not UTF-8 text ('utf-8' codec can't decode byte "
        "0xff in position 0: invalid start byte)",
        "uri gs://imgs/a.jpg",
        "uri gs://imgs/in/a b.jpg",
    ]


def test_watch_pattern_recurses_into_folders(tmp_path):
    assert watch_pattern(str(tmp_path)) == f"{tmp_path}/**"
    assert watch_pattern("gs://b/in/") == "gs://b/in/**"
    assert watch_pattern("gs://b/in/*.jpg") == "gs://b/in/*.jpg"


# --- windowed Parquet files ---------------------------------------------------------------

FILE_NAME = re.compile(r"part-(\w+)-(\d{8}T\d{6}Z)-(\d{8}T\d{6}Z)-([0-9a-f]{8})-(\d{5})-of-(\d{5})")


def windows_of(folder: Path) -> dict[tuple[str, str], dict[str, list[dict]]]:
    """{(start, end): {firing: rows}} of the Parquet files in `folder`."""
    out: dict = {}
    for path in sorted(folder.glob("*.parquet")):
        m = FILE_NAME.fullmatch(path.stem)
        assert m, path.name
        rows = pq.read_table(path).to_pylist()
        out.setdefault((m[2], m[3]), {}).setdefault(m[4], []).extend(rows)
    return out


def error_row(uri: str) -> dict:
    import datetime as dt

    return Failure(uri, "read", "x").to_row("w", dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))


def test_each_window_and_each_late_firing_gets_its_own_files(tmp_path):
    stream = (
        EventStream()
        .add_elements([TimestampedValue(error_row(u), t) for u, t in [("a", 1), ("b", 9)]])
        .add_elements([TimestampedValue(error_row("c"), 12)])
        .advance_watermark_to(25)  # closes [0, 10) and [10, 20)
        .add_elements([TimestampedValue(error_row("late"), 5)])  # within the lateness
        .advance_watermark_to(100)
        .add_elements([TimestampedValue(error_row("too late"), 6)])  # 100 > 10 + 60: dropped
        .advance_watermark_to_infinity()
    )

    def build(p):
        _ = (
            p
            | stream
            | output_windowing(window_s=10, allowed_lateness_s=60)
            | WriteWindowedTable(str(tmp_path), "errors", "w")
        )

    run_streaming(build)
    windows = windows_of(tmp_path / "errors")
    first, second = (
        ("19700101T000000Z", "19700101T000010Z"),
        ("19700101T000010Z", "19700101T000020Z"),
    )
    assert set(windows) == {first, second}
    firings = sorted(sorted(r["image_uri"] for r in rows) for rows in windows[first].values())
    assert firings == [["a", "b"], ["late"]]  # the late firing did not overwrite the first
    assert [sorted(r["image_uri"] for r in rows) for rows in windows[second].values()] == [["c"]]
    assert not list((tmp_path / "errors").glob("*too late*"))


# --- the streaming graph with the tiny model ------------------------------------------------


def test_streaming_graph_mines_each_content_once_per_run_into_windows(tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    paths = {}
    for name, seed in [("a", 0), ("b", 1), ("c", 2), ("late", 3)]:
        paths[name] = str(images / f"{name}.png")
        Image.fromarray(scene(seed)).save(paths[name])
    paths["a_again"] = str(images / "a_copy.png")  # same bytes, another name
    shutil.copy(paths["a"], paths["a_again"])
    paths["broken"] = str(images / "broken.png")
    Path(paths["broken"]).write_bytes(b"not a png")
    output = tmp_path / "out"
    options = MaskMineOptions(
        [
            "--streaming",
            f"--output={output}",
            f"--checkpoint={FIXTURES / 'sam_tiny.pth'}",
            "--window_s=10",
            "--allowed_lateness_s=60",
            "--run_id=s1",
            *FAST,
        ]
    )
    stream = (
        EventStream()
        .add_elements([TimestampedValue(paths[n], t) for n, t in [("a", 1), ("broken", 2)]])
        .add_elements([TimestampedValue(paths["b"], 3)])
        .advance_watermark_to(12)
        .add_elements([TimestampedValue(paths[n], t) for n, t in [("c", 13), ("a_again", 14)]])
        .add_elements([TimestampedValue(paths["a"], 15)])  # the same URI notified again
        .advance_watermark_to(25)
        .add_elements([TimestampedValue(paths["late"], 4)])  # late for [0, 10)
        .advance_watermark_to_infinity()
    )
    run_streaming(lambda p: mine_stream(p | stream, [], options))

    first, second = (
        ("19700101T000000Z", "19700101T000010Z"),
        ("19700101T000010Z", "19700101T000020Z"),
    )
    mined = windows_of(output / "images")
    assert set(mined) == {first, second}
    on_time_and_late = sorted(
        sorted(r["image_uri"] for r in rows) for rows in mined[first].values()
    )
    assert on_time_and_late == [[paths["a"], paths["b"]], [paths["late"]]]
    # a_copy.png and the second notice of a.png have a.png's bytes: mined once, in the run.
    assert [sorted(r["image_uri"] for r in rows) for rows in mined[second].values()] == [
        [paths["c"]]
    ]
    masks = windows_of(output / "masks")
    rows = [r for firings in masks.values() for rs in firings.values() for r in rs]
    assert {r["image_uri"] for r in rows} == {paths[n] for n in ("a", "b", "c", "late")}
    assert all(r["run_id"] == "s1" and r["model_type"] == "custom" for r in rows)
    errors = windows_of(output / "errors")
    assert list(errors) == [first]
    [error] = [r for rs in errors[first].values() for r in rs]
    assert (error["image_uri"], error["stage"]) == (paths["broken"], "decode")


# --- live: the streaming pipeline on a watched folder ---------------------------------------


def drop_png(path: Path, seed: int) -> None:
    """Write an image atomically (a poll never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(scene(seed)).save(tmp, format="PNG")
    tmp.rename(path)


def test_watched_folder_live_images_dropped_over_time_land_in_their_windows(tmp_path):
    """maskmine --streaming --input FOLDER on this machine: the pipeline polls the folder,
    mines what is dropped in while it runs, writes each window's files, stops by itself.

    Locally the watcher runs on the FnApiRunner (see pipeline.graph.new_pipeline), which
    writes the windows' files when watching stops; their windows follow the drop times.
    """
    folder, output = tmp_path / "in", tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    window_s = 2
    options = MaskMineOptions(
        [
            "--streaming",
            f"--input={folder}",
            f"--output={output}",
            f"--checkpoint={FIXTURES / 'sam_tiny.pth'}",
            f"--window_s={window_s}",
            "--poll_interval_s=0.3",
            "--stop_after_s=15",
            "--run_id=live",
            *FAST,
        ]
    )
    resolve_defaults(options)
    pipeline = new_pipeline(options)
    build_pipeline(pipeline, options)  # the stop time is fixed here
    finished: dict = {}

    def run():
        try:
            finished["result"] = run_until_done(pipeline, options)
        except BaseException as e:  # reported by the test thread
            finished["error"] = e

    # Already there when watching starts: found by the first poll.
    drop_png(folder / "a.png", 0)
    (folder / "notes.txt").write_text("not an image: never read")
    (folder / "broken.png").write_bytes(b"not a png")
    started = time.time()
    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    dropped = dict.fromkeys(["a.png", "broken.png"], started)
    time.sleep(7.0)  # start-up (about 3 s here) and the first batch's mining
    drop_png(folder / "b.png", 1)
    shutil.copy(folder / "a.png", folder / "a_copy.png")  # a's bytes under another name
    dropped.update(dict.fromkeys(["b.png", "a_copy.png"], time.time()))
    time.sleep(4.0)
    drop_png(folder / "sub" / "c.png", 2)
    dropped["sub/c.png"] = time.time()

    runner.join(timeout=60)
    assert not runner.is_alive(), "the pipeline did not stop after --stop_after_s"
    assert "error" not in finished, finished.get("error")
    assert finished["result"].state == "DONE"
    assert time.time() - started < 40

    def window_of(rows_by_window, uri):
        hits = [
            (start, end)
            for (start, end), firings in rows_by_window.items()
            for rows in firings.values()
            for r in rows
            if r["image_uri"] == uri
        ]
        assert len(hits) == 1, (uri, hits)  # each image once, in one window
        return hits[0]

    def seconds(stamp: str) -> float:
        import datetime as dt

        when = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        return when.timestamp()

    images = windows_of(output / "images")
    uris = {n: str(folder / n) for n in dropped}
    mined = {r["image_uri"] for fs in images.values() for rs in fs.values() for r in rs}
    # a_copy.png has a.png's bytes: mined once in the run; broken.png is an error row.
    assert mined == {uris["a.png"], uris["b.png"], uris["sub/c.png"]}
    for name in ("a.png", "b.png", "sub/c.png"):
        start, end = window_of(images, uris[name])
        assert seconds(end) - seconds(start) == window_s
        # Found by a poll after it was dropped (its window ends later), and soon after:
        # a.png once the pipeline had started, the others within a few polls.
        slack = 6.0 if name == "a.png" else 3.5
        assert dropped[name] < seconds(end) and seconds(start) <= dropped[name] + slack
    windows = [window_of(images, uris[n]) for n in ("a.png", "b.png", "sub/c.png")]
    assert windows == sorted(windows) and len(set(windows)) == 3  # one window per batch
    masks = windows_of(output / "masks")
    for name in ("a.png", "b.png", "sub/c.png"):
        per_window = {
            w
            for w, fs in masks.items()
            for rs in fs.values()
            for r in rs
            if r["image_uri"] == uris[name]
        }
        assert per_window == {window_of(images, uris[name])}  # masks beside their image
    errors = windows_of(output / "errors")
    [error] = [r for fs in errors.values() for rs in fs.values() for r in rs]
    assert (error["image_uri"], error["stage"]) == (uris["broken.png"], "decode")
    assert window_of(errors, uris["broken.png"]) == window_of(images, uris["a.png"])
    # Clean stop: no temporary files left behind.
    assert not [p for p in output.rglob(".temp-*/*")]


def interrupt_after(seconds: float, signum: int = signal.SIGINT) -> threading.Timer:
    """Ctrl-C (SIGINT to this process, handled by the main thread) in `seconds`."""
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signum))
    timer.start()
    return timer


def test_ctrl_c_stops_watching_and_the_local_run_writes_what_it_found(tmp_path):
    folder, output = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    drop_png(folder / "a.png", 0)
    options = MaskMineOptions(
        [
            "--streaming",
            f"--input={folder}",
            f"--output={output}",
            f"--checkpoint={FIXTURES / 'sam_tiny.pth'}",
            "--window_s=2",
            "--poll_interval_s=0.3",  # no --stop_after_s: watches until Ctrl-C
            "--run_id=ctrlc",
            *FAST,
        ]
    )
    resolve_defaults(options)
    pipeline = new_pipeline(options)
    build_pipeline(pipeline, options)
    handler = signal.getsignal(signal.SIGINT)
    started = time.time()
    interrupt_after(5.0)
    result = run_until_done(pipeline, options)  # in the main thread, as in the CLI
    assert result.state == "DONE"
    assert time.time() - started < 30
    mined = windows_of(output / "images")
    assert [r["image_uri"] for fs in mined.values() for rs in fs.values() for r in rs] == [
        str(folder / "a.png")
    ]
    assert signal.getsignal(signal.SIGINT) == handler  # restored


class _RunningResult:
    """A runner's result for a job that never ends by itself."""

    def __init__(self):
        self.state, self.cancelled = "RUNNING", threading.Event()

    def wait_until_finish(self):
        self.cancelled.wait(30)

    def cancel(self):
        self.state = "CANCELLED"
        self.cancelled.set()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_cancels_a_local_streaming_job_that_runs_in_the_background(signum):
    # SIGTERM (a scheduler or `kill` stopping the run) is handled like Ctrl-C.
    class Pipeline:
        def run(self):
            self.result = _RunningResult()
            return self.result

    pipeline = Pipeline()
    options = MaskMineOptions(["--streaming", "--input_subscription=projects/p/subscriptions/s"])
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    started = time.time()
    interrupt_after(0.5, signum)
    with pytest.raises(KeyboardInterrupt):
        run_until_done(pipeline, options)
    assert pipeline.result.state == "CANCELLED" and time.time() - started < 5
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_locally_pubsub_and_watched_folders_together_are_refused_at_startup(tmp_path):
    options = MaskMineOptions(
        ["--streaming", "--input_subscription=projects/p/subscriptions/s", f"--input={tmp_path}"]
    )
    with pytest.raises(ConfigError, match="watch --input folders or read Pub/Sub, not both"):
        resolve_defaults(options)


def test_a_watched_folder_with_skip_existing_mines_only_new_images(tmp_path):
    # The earlier runs' images table is read by the pipeline as a side input (global
    # window) of the streaming URIs.
    from pipeline.cli import main

    folder, output = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    drop_png(folder / "old.png", 0)
    common = [f"--output={output}", f"--checkpoint={FIXTURES / 'sam_tiny.pth'}", *FAST]
    assert main(["--runner=DirectRunner", f"--input={folder / 'old.png'}", *common]) == 0
    drop_png(folder / "new.png", 1)
    options = MaskMineOptions(
        [
            "--streaming",
            f"--input={folder}",
            *common,
            "--window_s=2",
            "--poll_interval_s=0.3",
            "--stop_after_s=3",
            "--run_id=resumed",
            "--skip_existing",
        ]
    )
    resolve_defaults(options)
    pipeline = new_pipeline(options)
    build_pipeline(pipeline, options)
    assert run_until_done(pipeline, options).state == "DONE"
    rows = pq.read_table(output / "images").to_pylist()
    assert sorted((Path(r["image_uri"]).name, r["run_id"] == "resumed") for r in rows) == [
        ("new.png", True),
        ("old.png", False),
    ]


def test_a_watched_non_utf8_name_is_passed_on_escaped_not_crashing_the_job(tmp_path, caplog):
    # Beam's str coder cannot hold the lone surrogates Python decodes such a name to.
    from transforms.uris import IMAGE_EXTENSIONS
    from transforms.watch import _PollFolderFn

    (tmp_path / "ok.png").write_bytes(b"x")
    with open(bytes(tmp_path) + b"/bad\xff.png", "wb") as f:
        f.write(b"x")
    listed = [p for p, _ in _PollFolderFn(1.0, None, IMAGE_EXTENSIONS)._list(f"{tmp_path}/*")]
    assert sorted(listed) == sorted([f"{tmp_path}/bad\\xff.png", str(tmp_path / "ok.png")])
    assert all(p.encode("utf-8") for p in listed)
    assert f"file name is not valid UTF-8: {tmp_path}/bad\\xff.png" in caplog.text
