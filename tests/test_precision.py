"""--precision auto: bf16 only where the hardware runs it fast, with the choice recorded."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.cli import main
from pipeline.config import resolve_defaults
from pipeline.options import MaskMineOptions
from sam_core import SamPredictor, build_sam, precision

from .conftest import FIXTURES
from .helpers import read_table, scene

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})
AMX = AVX2_ONLY | {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}


@pytest.fixture
def cpu_with(monkeypatch):
    """Fake the CPU's /proc/cpuinfo flags."""

    def fake(flags: frozenset[str]) -> None:
        monkeypatch.setattr(precision, "cpu_flags", lambda: flags)

    return fake


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(AVX2_ONLY, "fp32"), (AMX, "bf16"), (AVX2_ONLY | {"avx512_bf16"}, "bf16"), (set(), "fp32")],
)
def test_auto_picks_bf16_only_on_cpus_with_bf16_hardware(cpu_with, flags, expected):
    cpu_with(frozenset(flags))
    assert precision.resolve_precision("auto", torch.device("cpu")) == expected


def test_explicit_precisions_are_kept_and_others_refused(cpu_with):
    cpu_with(AVX2_ONLY)
    cpu = torch.device("cpu")
    assert precision.resolve_precision("bf16", cpu) == "bf16"
    assert precision.resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve_precision("fp16", cpu)


@pytest.mark.parametrize(
    ("capability", "expected"), [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp32")]
)
def test_auto_on_cuda_picks_bf16_from_ampere_on(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Fake GPU")
    assert precision.resolve_precision("auto", torch.device("cuda")) == expected


def test_the_predictor_resolves_auto_on_its_model_device(cpu_with, tiny_checkpoint):
    model = build_sam(checkpoint=tiny_checkpoint)
    cpu_with(AMX)
    assert SamPredictor(model, "auto").precision == "bf16"
    cpu_with(AVX2_ONLY)
    assert SamPredictor(model, "auto").precision == "fp32"
    assert SamPredictor(model).precision == "fp32"  # the library default stays exact


def options(tmp_path, *flags: str) -> MaskMineOptions:
    return MaskMineOptions(
        [f"--output={tmp_path / 'out'}", f"--checkpoint={FIXTURES / 'sam_tiny.pth'}", *flags]
    )


def test_explicit_bf16_on_a_cpu_without_bf16_warns_at_startup(cpu_with, tmp_path, capsys):
    cpu_with(AVX2_ONLY)
    resolve_defaults(options(tmp_path, "--precision=bf16", "--device=cpu"))
    err = capsys.readouterr().err
    assert "warning: --precision bf16 will be slow here" in err
    assert "neither AMX-BF16 nor AVX512-BF16" in err and "--precision auto" in err
    cpu_with(AMX)
    resolve_defaults(options(tmp_path, "--precision=bf16", "--device=cpu", "--run_id=b"))
    resolve_defaults(options(tmp_path, "--device=cpu", "--run_id=c"))  # auto: no warning
    assert "warning" not in capsys.readouterr().err


def test_auto_is_the_default_and_rows_record_what_ran(cpu_with, tmp_path):
    from PIL import Image

    cpu_with(AVX2_ONLY)
    (tmp_path / "in").mkdir()
    Image.fromarray(scene(0)).save(tmp_path / "in" / "a.png")
    args = [f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'out'}"]
    args += [f"--checkpoint={FIXTURES / 'sam_tiny.pth'}", "--device=cpu", "--points_per_side=4"]
    assert main([*args, "--pred_iou_thresh=0", "--stability_score_thresh=0"]) == 0
    params = set(read_table(tmp_path / "out", "masks")["generator_params"].to_pylist())
    assert len(params) == 1
    recorded = json.loads(params.pop())
    assert recorded["precision_requested"] == "auto"
    assert recorded["precision"] == "fp32"
    assert recorded["device"] == "cpu"
    assert recorded["torch_version"] == torch.__version__
    assert recorded["points_per_side"] == 4
