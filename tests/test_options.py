"""Command-line options: flags, defaults, generator parameters."""

import json

import pytest

from pipeline.options import GENERATOR_PARAMS, MaskMineOptions, generator_params_json


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], False),
        (["--skip_existing"], True),
        (["--skip_existing=true"], True),
        (["--skip_existing=false"], False),
        (["--skip_existing=0"], False),
    ],
)
def test_flags_accept_no_value_or_an_explicit_one(argv, expected):
    # Flex templates pass every parameter as --name=value.
    assert MaskMineOptions(argv).skip_existing is expected


def test_bad_flag_value_is_rejected():
    with pytest.raises(SystemExit):
        MaskMineOptions(["--embeddings=maybe"]).get_all_options()


def test_generator_defaults_are_the_references():
    params = json.loads(generator_params_json(MaskMineOptions([])))
    assert params == {
        "points_per_side": 32,
        "points_per_batch": 64,
        "pred_iou_thresh": 0.88,
        "stability_score_thresh": 0.95,
        "stability_score_offset": 1.0,
        "box_nms_thresh": 0.7,
        "crop_n_layers": 0,
        "crop_nms_thresh": 0.7,
        "crop_overlap_ratio": 512 / 1500,
        "crop_n_points_downscale_factor": 1,
        "min_mask_region_area": 0,
        "precision": "auto",
        # Beyond the reference; "exact" computes what the reference computes.
        "prompt_mode": "exact",
        "adaptive_stride": 4,
        "adaptive_radius": 2,
    }
    assert set(params) - {"precision"} == set(GENERATOR_PARAMS)


def test_generator_flags_are_typed():
    options = MaskMineOptions(["--points_per_side=16", "--pred_iou_thresh=0.5"])
    params = json.loads(generator_params_json(options))
    assert params["points_per_side"] == 16 and params["pred_iou_thresh"] == 0.5


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--points_per_side=0"], "--points_per_side must be >= 1, got 0"),
        (["--points_per_batch=0"], "--points_per_batch must be >= 1, got 0"),
        (["--crop_n_layers=-1"], "--crop_n_layers must be >= 0, got -1"),
        (["--crop_n_points_downscale_factor=0"], "--crop_n_points_downscale_factor must be >= 1"),
        (["--crop_overlap_ratio=1.0"], "--crop_overlap_ratio must be in [0, 1)"),
        (["--min_mask_region_area=-5"], "--min_mask_region_area must be >= 0"),
        (["--inference_batch_size=0"], "--inference_batch_size must be >= 1, got 0"),
        (["--max_pixels=0"], "--max_pixels must be >= 1, got 0"),
        (["--dedup_iou_thresh=1.5"], "--dedup_iou_thresh must be in [0, 1]"),
        (["--max_area_fraction=1.5"], "max_area_fraction <= 1, got 0.0, 1.5"),
        (["--min_area_fraction=0.5", "--max_area_fraction=0.2"], "min_area_fraction <="),
        (["--model_type=vit_h"], "--model_type vit_h needs --checkpoint"),
        (["--input="], "--input is empty"),
        (["--input=data/*.png", "--input= "], "--input is empty"),
        (["--streaming", "--input="], "--input is empty"),
        (["--checkpoint="], "--checkpoint is empty"),
        (["--commit_every=0"], "--commit_every must be >= 1, got 0"),
        (["--commit_every=5", "--streaming", "--input=x/"], "--commit_every is for batch runs"),
        (["--commit_every=5", "--runner=DataflowRunner"], "--commit_every is for local runs"),
        (["--run_id=../../x"], "--run_id '../../x': use 1-100 letters"),
        (["--run_id=a/b"], "--run_id 'a/b': use 1-100 letters"),
        (["--run_id=" + "x" * 300], "use 1-100 letters, digits"),
        (["--run_id=-x"], "starting with a letter or digit"),
        (["--points_per_side=100000"], "--points_per_side must be <= 1024, got 100000"),
        (["--prompt_mode=adaptive", "--adaptive_stride=0"], "--adaptive_stride must be >= 1"),
        (["--prompt_mode=adaptive", "--adaptive_radius=-1"], "--adaptive_radius must be >= 0"),
        (
            ["--points_per_side=1024", "--points_per_batch=1048576"],
            "--points_per_batch 1048576: one decoder batch of 1048576 prompts needs at least "
            "768.0 GiB",
        ),
    ],
)
def test_bad_values_stop_the_run_at_startup_naming_the_flag(flags, message, tmp_path, capsys):
    # Found before any image is read, not by every worker after decoding; no traceback.
    # Nothing written, inside --output or outside it (--run_id ../../x once put a
    # temporary file two levels up), and quickly.
    import time

    from pipeline.cli import main

    output = tmp_path / "a" / "b" / "out"
    output.parent.mkdir(parents=True)
    start = time.monotonic()
    assert main([f"--output={output}", *flags]) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")] == ["a", "a/b"]


@pytest.mark.parametrize(
    "flag, suggestion",
    [
        ("--commit-every=3", "--commit_every"),
        ("--pred_iou_threshold=0.5", "--pred_iou_thresh"),
        ("--points-per-side", "--points_per_side"),
        ("--skip_exisiting", "--skip_existing"),
    ],
)
def test_a_misspelled_flag_stops_the_run_instead_of_being_ignored(
    flag, suggestion, tmp_path, capsys
):
    # Beam would log it as unparseable and mine with the default instead.
    from pipeline.cli import main

    assert main([f"--output={tmp_path / 'out'}", flag, "4"]) == 2
    err = capsys.readouterr().err
    assert f"did you mean {suggestion}?" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_flags_of_beam_and_of_runners_are_not_taken_for_typos():
    from pipeline.cli import misspelled_flags

    argv = ["--experiment=use_runner_v2", "--direct_running_mode=in_memory", "--dry_run"]
    argv += ["--some_runner_only_flag=1", "--input", "x", "--window_s", "5"]
    assert misspelled_flags(argv) == []


def test_an_empty_output_stops_the_run_at_startup(tmp_path, capsys, monkeypatch):
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)  # an empty --output must not mean "here"
    assert main(["--output="]) == 2
    err = capsys.readouterr().err
    assert "--output is empty" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_help_lists_the_mining_and_streaming_flags(capsys):
    from pipeline.cli import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in [
        "--input",
        "--checkpoint",
        "--points_per_side",
        "--dedup_by",
        "--window_s",
        "--commit_every",
    ]:
        assert flag in out, flag
    assert "--input_subscription" in out and "inspect" in out


def test_unusable_or_mismatched_local_checkpoint_stops_the_run_at_startup(tmp_path, capsys):
    # Found from the file's shapes before reading any image, not by the workers.
    from pipeline.cli import main

    from .conftest import FIXTURES

    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    cases = [
        ([f"--checkpoint={text}"], "not a readable PyTorch checkpoint"),
        (
            [f"--checkpoint={FIXTURES / 'sam_tiny.pth'}", "--model_type=vit_b"],
            "does not match model_type 'vit_b': its shapes look like 'custom'",
        ),
    ]
    # A diverged (NaN-weight) checkpoint: it would mine empty masks and record its
    # images as mined.
    import torch

    state = torch.load(FIXTURES / "sam_tiny.pth", weights_only=True)
    state["mask_decoder.iou_token.weight"][0, 0] = float("nan")
    diverged = tmp_path / "diverged.pth"
    torch.save(state, diverged)
    cases.append(([f"--checkpoint={diverged}"], "hold NaN or infinite values"))
    for flags, message in cases:
        assert main([f"--output={tmp_path / 'out'}", *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert f"error: --checkpoint {flags[0].split('=', 1)[1]}: " in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("inside", ["out", "sub/out"])
def test_an_output_inside_a_recursively_listed_input_is_refused(inside, tmp_path, capsys):
    # A later run over the same folder would mine the files written there.
    from pipeline.cli import main

    (tmp_path / "in").mkdir()
    output = tmp_path / "in" / inside
    for spec in (str(tmp_path / "in"), f"{tmp_path}/in/**/*.png", f"{tmp_path}/in/"):
        assert main([f"--input={spec}", f"--output={output}"]) == 2
        err = capsys.readouterr().err
        assert f"--output {output} is inside --input {spec}" in err
    assert not output.exists()


def test_an_output_beside_or_one_level_under_a_glob_is_allowed(tmp_path):
    from pipeline.config import resolve_defaults

    (tmp_path / "in").mkdir()
    for spec, output in [
        (str(tmp_path / "in"), tmp_path / "in-out"),  # a sibling whose name starts alike
        (f"{tmp_path}/in/*.png", tmp_path / "in" / "out"),  # one level: never nested files
    ]:
        resolve_defaults(MaskMineOptions([f"--input={spec}", f"--output={output}"]))
