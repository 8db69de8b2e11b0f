"""benchmarks/gpu_check.py in its tiny mode: every code path runs on the CPU, so the script
is known to work on the day a GPU is lent, and it imports nothing the GPU machine lacks."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts.seeded import TINY, seeded_state_dict

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
TINY_MODELS = ("tiny", "tiny_large")
BATCHES = (1, 4, 8)


def run_tiny(out: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    # cwd outside the repository: the script must find it from its own path.
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", out, *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("gpu_check") / "x.json"
    result = run_tiny(str(out), out.parent)
    return json.loads(out.read_text()), result.stdout


def test_tiny_parity_passes_every_check(tiny_report):
    report, stdout = tiny_report
    parity = report["parity"]
    names = {c["check"] for c in parity["checks"]}
    assert names == {
        "embedding",
        "low_res_logits",
        "iou_predictions",
        "decoder_low_res_logits",
        "decoder_iou_predictions",
        "amg_unmatched_share",
    }
    assert all(c["result"] == "PASS" and c["value"] <= c["tolerance"] for c in parity["checks"])
    assert parity["tf32"] is False and "TF32 off" in stdout
    # Every candidate is kept: 3 masks per grid point, all of them matched.
    grid = report["plan"]["parity_grid"]
    assert parity["amg"]["masks_reference"] == parity["amg"]["matched"] == 3 * grid**2
    bf16 = parity["bf16"]
    assert 0.0 < bf16["embedding_relative_l2"] < 0.1
    assert bf16["amg"]["masks_reference"] == 3 * grid**2
    assert 0.0 <= bf16["amg"]["share"] <= 1.0
    assert report["passed"] is True


def test_tiny_throughput_covers_every_config(tiny_report):
    report, _ = tiny_report
    amg = report["amg"]
    expected = set(itertools.product(TINY_MODELS, ("fp32", "bf16"), ("reference", "zero"), BATCHES))
    assert {(r["model"], r["precision"], r["thresholds"], r["batch"]) for r in amg} == expected
    assert all(r["images_per_s"] > 0 and r["masks_per_image"] >= 0 for r in amg)
    assert all(1 <= len(r["times_s"]) <= report["plan"]["max_repeats"] for r in amg)
    # Thresholds 0 keep masks that the reference thresholds drop on random weights.
    zero = [r["masks_per_image"] for r in amg if r["thresholds"] == "zero"]
    assert min(zero) > 0
    encoder = {(r["model"], r["precision"], r["batch"]) for r in report["encoder"]}
    assert encoder == set(itertools.product(TINY_MODELS, ("fp32", "bf16"), BATCHES))
    assert all(r["ms_per_image"] > 0 for r in report["encoder"])
    assert report["skipped"] == []
    assert set(report["sections_s"]) == {"environment", "parity", "throughput"}
    assert report["environment"]["cpu_capability"]


def test_a_spent_budget_skips_configs_and_says_so(tmp_path):
    # A folder (named with a trailing /, not there yet): the figures go to gpu_check.json.
    result = run_tiny(f"{tmp_path}/figures/", tmp_path, "--budget_s", "0")
    report = json.loads((tmp_path / "figures" / "gpu_check.json").read_text())
    assert report["amg"] == [] and report["encoder"] == []
    assert len(report["skipped"]) == len(TINY_MODELS) * 2 * 2 * len(BATCHES)
    assert "SKIPPED tiny fp32 thresholds=reference batch=1" in result.stdout
    assert report["passed"] is True  # parity is not subject to the budget


def test_seeded_model_on_cpu_is_scripts_seeded():
    # The script re-runs scripts.seeded's recipe on the device (vit_h's 2.5 GB need not
    # be made on the CPU); on the CPU it must give exactly the same weights.
    from benchmarks import gpu_check

    ours = gpu_check.seeded_model(TINY, seed=3, device=torch.device("cpu")).state_dict()
    reference = seeded_state_dict(TINY, seed=3)
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


def run_blocking(
    blocked: tuple[str, ...], run_name: str, after: str = ""
) -> subprocess.CompletedProcess:
    """Run the script's module in a fresh interpreter where importing `blocked` fails."""
    code = (
        "import runpy, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {blocked!r}:\n"
        "            raise ModuleNotFoundError('blocked: ' + name, name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--help']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name={run_name!r})\n" + after
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_it_imports_no_beam_and_no_pyarrow():
    # The GPU machine has no Beam: with such imports blocked the module must still load.
    result = run_blocking(
        ("apache_beam", "pyarrow"),
        "gpu_check",
        "assert 'sam_core.generator' in sys.modules and 'scripts.amg_match' in sys.modules\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('apache_beam', 'pyarrow')))\n",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip() == "[]"


def test_without_pycocotools_it_says_how_to_bring_it():
    result = run_blocking(("pycocotools",), "__main__")
    assert result.returncode == 2, result.stderr[-4000:]
    assert "pip install --no-index --find-links wheels/ pycocotools" in result.stderr
