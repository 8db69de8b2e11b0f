"""benchmarks/gpu_check.py in its tiny CPU mode: every code path runs, so it never rots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_tiny_mode_passes_and_reports_every_section(tmp_path):
    out = tmp_path / "figures" / "gpu_check.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    parity = report["parity"]
    for key in ("embedding", "low_res_logits", "iou_predictions", "amg"):
        assert parity[key]["pass"], (key, parity[key])
    assert parity["tf32"] is False
    assert 0.0 <= parity["bf16"]["share_at_iou_0.9"] <= 1.0
    rows = report["throughput"]
    assert {(r["precision"], r["thresholds"], r["batch"]) for r in rows} == {
        (p, t, b) for p in ("fp32", "bf16") for t in ("defaults", "thresholds 0") for b in (1, 2)
    }
    assert all(not r["skipped"] and r["images_per_s"] > 0 for r in rows)
    assert report["environment"]["cpu_capability"]


def test_it_needs_no_beam_and_no_pyarrow():
    # The GPU machine has neither Beam nor (necessarily) the pipeline's stack.
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('apache_beam', 'pyarrow'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.argv = ['gpu_check', '--help']\n"
        f"import runpy; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GPU check" in result.stdout
