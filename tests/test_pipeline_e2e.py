"""The whole pipeline on the local runner: tiny model, generated images, bad inputs."""

import collections
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.cli import main
from sam_core.mask_ops import masks_to_boxes

from .conftest import FIXTURES
from .helpers import FAST, read_table, scene


def write_good_images(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, fmt in enumerate(["png", "jpg", "png"]):
        path = folder / f"good_{i}.{fmt}"
        Image.fromarray(scene(i)).save(path)
        paths.append(str(path))
    return paths


def png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR is patched to claim width x height."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # type + 13 bytes of header data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def write_bad_images(folder: Path) -> dict[str, str]:
    """name -> path of inputs that must become error rows (but one: the rotated JPEG)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    (folder / "empty.jpg").write_bytes(b"")
    paths["empty"] = str(folder / "empty.jpg")
    buf = io.BytesIO()
    Image.fromarray(scene(7)).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    paths["truncated"] = str(folder / "truncated.jpg")
    (folder / "text.png").write_text("this is not an image\n")
    paths["text"] = str(folder / "text.png")
    (folder / "bomb.png").write_bytes(png_claiming(40000, 40000))
    paths["bomb"] = str(folder / "bomb.png")
    return paths


def write_odd_but_valid(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    gradient = (np.linspace(0, 65535, 50 * 40).reshape(50, 40)).astype(np.uint16)
    Image.fromarray(gradient).save(folder / "deep.png")  # 16-bit grey
    paths["deep"] = str(folder / "deep.png")
    Image.fromarray(scene(3)).convert("CMYK").save(folder / "cmyk.jpg")
    paths["cmyk"] = str(folder / "cmyk.jpg")
    rotated = Image.fromarray(scene(4, size=(40, 90)))  # 90 wide, 40 high as stored
    exif = rotated.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    rotated.save(folder / "rotated.jpg", exif=exif)
    paths["rotated"] = str(folder / "rotated.jpg")
    return paths


def run(args: list[str]) -> None:
    assert main(["--runner=DirectRunner", *args]) == 0


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    good = write_good_images(root / "good")
    bad = write_bad_images(root / "bad")
    odd = write_odd_but_valid(root / "odd")
    missing = str(root / "nowhere" / "missing.png")
    manifest = root / "manifest.txt"
    manifest.write_text("\n".join([*bad.values(), *odd.values(), missing, good[0]]) + "\n")
    output = root / "out"
    args = [
        f"--input={root / 'good'}",
        f"--input={manifest}",
        f"--output={output}",
        f"--checkpoint={FIXTURES / 'sam_tiny.pth'}",
        *FAST,
    ]
    run([*args, "--run_id=first"])
    return {
        "root": root,
        "output": output,
        "args": args,
        "good": good,
        "bad": bad,
        "odd": odd,
        "missing": missing,
    }


def test_every_input_is_mined_or_failed_exactly_once(mined):
    images = read_table(mined["output"], "images").to_pylist()
    errors = read_table(mined["output"], "errors").to_pylist()
    mined_uris = [r["image_uri"] for r in images]
    failed_uris = [r["image_uri"] for r in errors]
    inputs = {*mined["good"], *mined["bad"].values(), *mined["odd"].values(), mined["missing"]}
    assert sorted(mined_uris + failed_uris) == sorted(inputs)
    assert set(mined_uris) == {*mined["good"], *mined["odd"].values()}


def test_bad_inputs_have_readable_error_rows(mined):
    errors = {r["image_uri"]: r for r in read_table(mined["output"], "errors").to_pylist()}
    assert errors[mined["missing"]]["stage"] == "read"
    for name, path in mined["bad"].items():
        row = errors[path]
        assert row["stage"] == "decode", (name, row)
        assert len(row["error"]) > 10 and row["run_id"] == "first"
    assert "max_pixels" in errors[mined["bad"]["bomb"]]["error"]


def test_odd_images_are_mined_with_their_displayed_size(mined):
    images = {r["image_uri"]: r for r in read_table(mined["output"], "images").to_pylist()}
    rotated = images[mined["odd"]["rotated"]]
    assert (rotated["image_width"], rotated["image_height"]) == (40, 90)
    assert (
        images[mined["odd"]["deep"]]["image_width"],
        images[mined["odd"]["deep"]]["image_height"],
    ) == (40, 50)


def test_masks_decode_to_their_area_and_box(mined):
    masks = read_table(mined["output"], "masks").to_pylist()
    images = {r["image_uri"]: r for r in read_table(mined["output"], "images").to_pylist()}
    assert len(masks) >= len(images)
    per_image = {}
    for m in masks:
        rle = {"size": m["segmentation"]["size"], "counts": m["segmentation"]["counts"]}
        mask = mask_utils.decode(rle).astype(bool)
        image = images[m["image_uri"]]
        assert mask.shape == (image["image_height"], image["image_width"])
        assert int(mask.sum()) == m["area"]
        x0, y0, x1, y1 = masks_to_boxes(torch.from_numpy(mask)).tolist()
        assert m["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        assert m["image_sha256"] == image["image_sha256"]
        assert m["checkpoint_sha256"] and m["model_type"] == "custom"
        assert '"points_per_side": 6' in m["generator_params"]
        per_image[m["image_uri"]] = per_image.get(m["image_uri"], 0) + 1
    for uri, image in images.items():
        assert image["masks_kept"] == per_image.get(uri, 0)
        assert image["masks_generated"] >= image["masks_kept"]


def test_same_run_twice_gives_the_same_mask_ids(mined, tmp_path):
    output = tmp_path / "again"
    args = [a if not a.startswith("--output=") else f"--output={output}" for a in mined["args"]]
    run([*args, "--run_id=second"])
    first = sorted(read_table(mined["output"], "masks").column("mask_id").to_pylist())
    second = sorted(read_table(output, "masks").column("mask_id").to_pylist())
    assert first == second
    assert len(set(first)) == len(first)


def _other_output(mined, output: Path) -> list[str]:
    return [a if not a.startswith("--output=") else f"--output={output}" for a in mined["args"]]


def test_a_run_in_parts_writes_what_one_run_writes(mined, tmp_path, capsys):
    output = tmp_path / "parts"
    run([*_other_output(mined, output), "--run_id=p", "--commit_every=4"])
    assert "all parts done" in capsys.readouterr().err
    one = {t: read_table(mined["output"], t).to_pylist() for t in ("masks", "images", "errors")}
    parts = {t: read_table(output, t).to_pylist() for t in ("masks", "images", "errors")}
    assert sorted(m["mask_id"] for m in parts["masks"]) == sorted(
        m["mask_id"] for m in one["masks"]
    )
    for table in ("images", "errors"):
        assert sorted(r["image_uri"] for r in parts[table]) == sorted(
            r["image_uri"] for r in one[table]
        )
    # One set of files, and one run id, per part of at most 4 images.
    run_ids = collections.Counter(r["run_id"] for r in parts["images"] + parts["errors"])
    listed = len(one["images"]) + len(one["errors"])
    assert len(run_ids) == -(-listed // 4) and max(run_ids.values()) <= 4
    assert all(r.startswith("p-part") for r in run_ids)
    assert len(list((output / "images").glob("*.parquet"))) == len(run_ids)


def test_a_run_stopped_midway_keeps_its_finished_parts(mined, tmp_path, monkeypatch, capsys):
    import pipeline.parts

    output = tmp_path / "stopped"
    args = [f"--input={mined['root'] / 'good'}", f"--output={output}", *FAST]
    args += [f"--checkpoint={FIXTURES / 'sam_tiny.pth'}", "--commit_every=2"]
    mine_once, calls = pipeline.parts.mine_once, []

    def dies_in_part_two(options, *more):
        calls.append(options.run_id)
        if len(calls) == 2:
            raise RuntimeError("worker killed")
        return mine_once(options, *more)

    monkeypatch.setattr(pipeline.parts, "mine_once", dies_in_part_two)
    with pytest.raises(RuntimeError, match="worker killed"):
        main(["--runner=DirectRunner", *args, "--run_id=a"])
    assert "stopped in part 2: part 1 is written" in capsys.readouterr().err
    first = read_table(output, "images").column("image_uri").to_pylist()
    assert sorted(first) == sorted(mined["good"])[:2]
    monkeypatch.setattr(pipeline.parts, "mine_once", mine_once)
    run([*args, "--run_id=b", "--skip_existing"])
    assert "2 image(s) already in" in capsys.readouterr().err
    images = read_table(output, "images").to_pylist()
    assert sorted(r["image_uri"] for r in images) == sorted(mined["good"])
    assert {r["run_id"] for r in images} == {"a-part00000", "b-part00000"}
    every_mask = read_table(output, "masks").column("mask_id").to_pylist()
    good = set(mined["good"])
    assert sorted(every_mask) == sorted(
        m["mask_id"]
        for m in read_table(mined["output"], "masks").to_pylist()
        if m["image_uri"] in good
    )


def test_a_run_id_used_before_under_the_output_is_refused(mined, capsys):
    # Its files would be replaced (part-RUN_ID-*), with whatever they held lost.
    before = sorted(p.stat().st_mtime_ns for p in mined["output"].rglob("*.parquet"))
    assert main(["--runner=DirectRunner", *mined["args"], "--run_id=first"]) == 2
    assert "already holds that run's files" in capsys.readouterr().err
    assert sorted(p.stat().st_mtime_ns for p in mined["output"].rglob("*.parquet")) == before


def test_parts_mine_uris_with_any_character(tmp_path):
    # The parts' lists must carry every URI as it is, line breaks in file names included.
    folder = tmp_path / "odd names"
    folder.mkdir()
    for i, name in enumerate(["a\nb.png", "c #1.png", "d.png"]):
        Image.fromarray(scene(i)).save(folder / name)
    output = tmp_path / "out"
    run([f"--input={folder}", f"--output={output}", *FAST, "--commit_every=2"])
    mined = read_table(output, "images").column("image_uri").to_pylist()
    assert sorted(mined) == sorted(str(p) for p in folder.iterdir())
    assert not (output / "errors").exists() or read_table(output, "errors").num_rows == 0


def test_ctrl_c_while_listing_the_parts_exits_130(tmp_path, monkeypatch, capsys):
    import pipeline.parts

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.parts, "list_image_uris", interrupted)
    args = [f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'out'}", "--commit_every=2"]
    assert main(["--runner=DirectRunner", *args]) == 130
    assert "maskmine: interrupted" in capsys.readouterr().err


def test_skip_existing_mines_only_what_is_missing(mined, tmp_path, capsys):
    output = tmp_path / "resumed"
    common = [f"--output={output}", f"--checkpoint={FIXTURES / 'sam_tiny.pth'}", *FAST]
    # An earlier run that got through part of the images only.
    run([f"--input={mined['good'][0]}", f"--input={mined['good'][1]}", *common, "--run_id=a"])
    capsys.readouterr()
    run([f"--input={mined['root'] / 'good'}", *common, "--run_id=b", "--skip_existing"])
    summary = capsys.readouterr().err
    assert "images_skipped_existing: 2" in summary and "images_mined: 1" in summary
    images = read_table(output, "images").to_pylist()
    uris = sorted(r["image_uri"] for r in images)
    assert uris == sorted(mined["good"])
    runs = {r["image_uri"]: r["run_id"] for r in images}
    assert runs[mined["good"][2]] == "b" and runs[mined["good"][0]] == "a"
    masks = read_table(output, "masks").to_pylist()
    assert {(m["image_uri"], m["run_id"]) for m in masks} <= set(runs.items())


def test_embeddings_sink_holds_each_images_encoder_output(mined, tmp_path):
    from sam_core import SamPredictor, build_sam
    from transforms.decode import decode_image_bytes

    output = tmp_path / "with_embeddings"
    checkpoint = FIXTURES / "sam_tiny.pth"
    run(
        [
            f"--input={mined['root'] / 'good'}",
            f"--output={output}",
            f"--checkpoint={checkpoint}",
            "--embeddings",
            *FAST,
        ]
    )
    rows = read_table(output, "embeddings").to_pylist()
    assert sorted(r["image_uri"] for r in rows) == sorted(mined["good"])
    predictor = SamPredictor(build_sam(checkpoint=checkpoint))
    for row in rows:
        stored = np.frombuffer(row["embedding"], dtype="<f2").reshape(row["shape"])
        pixels = decode_image_bytes(Path(row["image_uri"]).read_bytes())
        expected = predictor.encode([pixels])[0]
        assert list(row["input_size"]) == list(expected.input_size)
        np.testing.assert_allclose(
            stored.astype(np.float32), expected.features.numpy(), atol=2e-2, rtol=1e-2
        )
    # Masks are written as without --embeddings.
    assert len(read_table(output, "masks")) > 0


def test_a_run_that_mines_nothing_because_every_input_failed_exits_non_zero(
    mined, tmp_path, capsys
):
    output = tmp_path / "out"
    common = [f"--output={output}", f"--checkpoint={FIXTURES / 'sam_tiny.pth'}", *FAST]
    assert main(["--runner=DirectRunner", f"--input={mined['root'] / 'bad'}", *common]) == 1
    assert f"no image was mined; {len(mined['bad'])} input(s) failed" in capsys.readouterr().err
    errors = read_table(output, "errors").to_pylist()
    assert sorted(r["image_uri"] for r in errors) == sorted(mined["bad"].values())


def test_a_run_with_nothing_left_to_mine_is_a_success(mined, tmp_path):
    output = tmp_path / "done"
    common = [f"--output={output}", f"--checkpoint={FIXTURES / 'sam_tiny.pth'}", *FAST]
    run([f"--input={mined['good'][0]}", *common, "--run_id=a"])
    # Everything already mined: no image and no error, which is not a failure.
    run([f"--input={mined['good'][0]}", *common, "--run_id=b", "--skip_existing"])


def test_skip_existing_stops_when_earlier_output_cannot_be_listed(tmp_path, monkeypatch, capsys):
    # A listing error must not read as "nothing mined yet" and mine everything again.
    from apache_beam.io.filesystems import FileSystems

    def refuse(patterns, limits=None):
        raise PermissionError("403 storage.objects.list denied")

    output = tmp_path / "out"
    (output / "images").mkdir(parents=True)
    monkeypatch.setattr(FileSystems, "match", staticmethod(refuse))
    args = [f"--output={output}", f"--input={tmp_path / 'in'}", "--skip_existing", *FAST]
    assert main(["--runner=DirectRunner", *args]) == 2
    err = capsys.readouterr().err
    assert "--skip_existing: cannot list" in err and "403" in err


def test_images_table_is_written_after_the_masks_and_embeddings(tmp_path):
    # --skip_existing trusts images/: its files must not appear before the masks'.
    import apache_beam as beam
    from apache_beam.portability.api import beam_runner_api_pb2

    from pipeline.config import resolve_defaults
    from pipeline.graph import build_pipeline
    from pipeline.options import MaskMineOptions

    options = MaskMineOptions(
        [
            f"--output={tmp_path / 'out'}",
            f"--input={tmp_path / 'in'}",
            "--embeddings",
            "--run_id=g",
            *FAST,
        ]
    )
    resolve_defaults(options)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options)
    proto = pipeline.to_runner_api()
    transforms = proto.components.transforms
    producer = {pcoll: t.unique_name for t in transforms.values() for pcoll in t.outputs.values()}
    after = next(t for t in transforms.values() if t.unique_name == "AfterMasks")
    payload = beam_runner_api_pb2.ParDoPayload.FromString(after.spec.payload)
    waits_for = {producer[after.inputs[name]].split("/")[0] for name in payload.side_inputs}
    assert waits_for == {"WriteMasks", "WriteEmbeddings"}, waits_for
    write_images = next(t for t in transforms.values() if t.unique_name == "WriteImages")
    assert producer[next(iter(write_images.inputs.values()))] == "AfterMasks"


def test_mask_ids_are_unique_in_a_run_with_copies_and_degenerate_images(tmp_path):
    # The same bytes under two names are two images; a 1x1 image's three outputs per
    # prompt are the same mask; a flat image gives near-identical masks everywhere.
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(scene(3)).save(folder / "a.png")
    (folder / "copy_of_a.png").write_bytes((folder / "a.png").read_bytes())
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "dot.png")
    Image.new("RGB", (40, 30), (90, 90, 90)).save(folder / "flat.png")
    output = tmp_path / "out"
    run(
        [
            f"--input={folder}",
            f"--output={output}",
            f"--checkpoint={FIXTURES / 'sam_tiny.pth'}",
            *FAST,
        ]
    )
    masks = read_table(output, "masks").to_pylist()
    ids = [m["mask_id"] for m in masks]
    assert len(ids) == len(set(ids)) > 0
    by_uri = collections.Counter(Path(m["image_uri"]).name for m in masks)
    assert by_uri["a.png"] == by_uri["copy_of_a.png"] > 0
    assert all(m["area"] > 0 and np.isfinite(m["stability_score"]) for m in masks)


def test_a_sigkill_between_a_parts_masks_and_images_leaves_each_mask_once(tmp_path, capsys):
    # A real kill in the window (a hook holds the part there): its masks/ files are in
    # place, its images/ file is not. The resuming --skip_existing run mines those images
    # again and must remove the killed part's masks, or the raw table holds them twice.
    import os
    import signal
    import subprocess
    import sys
    import time

    from pipeline.graph import HOLD_FILE, HOLD_RUN

    folder = tmp_path / "in"
    good = write_good_images(folder)
    output, flag = tmp_path / "out", tmp_path / "held"
    args = [f"--input={folder}", f"--output={output}", *FAST, "--commit_every=2"]
    args += [f"--checkpoint={FIXTURES / 'sam_tiny.pth'}"]
    env = {**os.environ, HOLD_RUN: "a-part00001", HOLD_FILE: str(flag)}
    killed = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--runner=DirectRunner", *args, "--run_id=a"],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while not flag.exists():  # the condition: the part reached the window
            assert killed.poll() is None, killed.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the run never reached the window"
            time.sleep(0.05)
        os.kill(killed.pid, signal.SIGKILL)
    finally:
        killed.kill()
        killed.wait()
        killed.stderr.close()
    assert killed.returncode == -signal.SIGKILL
    names = {t: sorted(p.name for p in (output / t).glob("*.parquet")) for t in ("masks", "images")}
    assert any(n.startswith("part-a-part00001-") for n in names["masks"])
    assert not any(n.startswith("part-a-part00001-") for n in names["images"])

    run([*args, "--run_id=b", "--skip_existing"])
    images = read_table(output, "images").to_pylist()
    assert sorted(r["image_uri"] for r in images) == sorted(good)
    masks = read_table(output, "masks").to_pylist()  # the raw table, every file
    ids = [m["mask_id"] for m in masks]
    assert len(ids) == len(set(ids)) > 0
    mined = {r["image_uri"]: r["masks_kept"] for r in images}
    assert collections.Counter(m["image_uri"] for m in masks) == {
        u: n for u, n in mined.items() if n
    }
    assert not list(output.glob("*/part-a-part00001-*.parquet"))
    err = capsys.readouterr().err
    assert "run a-part00001 was killed before all its images/ files were written" in err


def test_unfinished_runs_are_only_those_whose_process_is_gone(tmp_path):
    # A run still going (this process), one of another host and a finished one are kept.
    import socket

    from pipeline.claims import claim_run_id
    from pipeline.parts import unfinished_runs

    output = tmp_path / "out"
    for table in ("masks", "images"):
        (output / table).mkdir(parents=True)
    claim_run_id(str(output), "alive")
    runs = output / "_runs"
    dead = {"host": socket.gethostname(), "pid": 2**22 + 12345, "local": True}
    (runs / "dead.json").write_text(json.dumps(dead))
    (runs / "elsewhere.json").write_text(json.dumps({**dead, "host": "another-host"}))
    (runs / "remote.json").write_text(json.dumps({**dead, "local": False}))
    for run_id in ("alive", "dead-part00003", "elsewhere", "remote", "dead-part00000"):
        (output / "masks" / f"part-{run_id}-00000-of-00001.parquet").write_bytes(b"")
    (output / "images" / "part-dead-part00000-00000-of-00001.parquet").write_bytes(b"")
    # Two shards, one in place: killed while renaming them.
    (output / "masks" / "part-dead-part00004-00000-of-00001.parquet").write_bytes(b"")
    (output / "images" / "part-dead-part00004-00001-of-00002.parquet").write_bytes(b"")
    found = unfinished_runs(str(output))
    assert sorted(found) == ["dead-part00003", "dead-part00004"]
    assert [Path(p).parent.name for p in found["dead-part00004"]] == ["images", "masks"]


def test_an_output_with_glob_characters_is_written_read_and_resumed(tmp_path, capsys):
    # "out[1]" crashed every run at the final write (Beam's finalize globs its paths).
    folder = tmp_path / "in"
    good = write_good_images(folder)[:1]
    output = tmp_path / "out[1]*?"
    args = [f"--input={good[0]}", f"--output={output}", *FAST]
    args += [f"--checkpoint={FIXTURES / 'sam_tiny.pth'}"]
    run([*args, "--run_id=a"])
    assert read_table(output, "images").column("image_uri").to_pylist() == good
    assert read_table(output, "masks").num_rows > 0
    capsys.readouterr()
    # The same id again is refused (its files are found through the escaped pattern), and
    # --skip_existing finds the image mined.
    assert main(["--runner=DirectRunner", *args, "--run_id=a"]) == 2
    assert "already holds that run's files" in capsys.readouterr().err
    run([*args, "--run_id=b", "--skip_existing", "--commit_every=5"])
    assert "1 image(s) already in" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out[1]*?"]
    assert not list(output.glob("*/beam-temp-*"))  # Beam's own cleanup matched it unescaped


def test_the_adaptive_mode_is_recorded_with_its_parameters_and_prompts(tmp_path):
    # Bundled model (distinct masks per point, so the adaptive mode skips some points).
    from pipeline.config import BUNDLED_CHECKPOINT
    from sam_core import AutomaticMaskGenerator, build_sam
    from training.scenes import EVAL_SEED_START, generate_scene

    folder = tmp_path / "scenes"
    folder.mkdir()
    images = {}
    for seed in (EVAL_SEED_START, EVAL_SEED_START + 1):
        path = folder / f"scene_{seed}.png"
        images[str(path)] = generate_scene(seed, (96, 128)).image
        Image.fromarray(images[str(path)]).save(path)
    params = dict(
        points_per_side=16,
        pred_iou_thresh=0.2,
        stability_score_thresh=0.3,
        adaptive_stride=4,
        adaptive_radius=1,
    )
    output = tmp_path / "out"
    flags = [f"--{name}={value}" for name, value in params.items()]
    run(
        [
            f"--input={folder}",
            f"--output={output}",
            "--precision=fp32",
            "--prompt_mode=adaptive",
            *flags,
        ]
    )

    model = build_sam(checkpoint=BUNDLED_CHECKPOINT)
    generator = AutomaticMaskGenerator(model, prompt_mode="adaptive", **params)
    for row in read_table(output, "images").to_pylist():
        generator.generate(images[row["image_uri"]])
        assert row["prompts_decoded"] == generator.prompts_decoded[0] < 16 * 16
    recorded = json.loads(read_table(output, "masks").column("generator_params")[0].as_py())
    assert recorded["prompt_mode"] == "adaptive"
    assert {name: recorded[name] for name in params} == params
