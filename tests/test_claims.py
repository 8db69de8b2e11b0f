"""Run ids are claimed atomically: two runs into one output cannot share one."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pipeline.claims import RunIdTaken, claim_run_id
from pipeline.cli import main
from schemas import layout

from .conftest import FIXTURES


def test_a_run_id_is_claimed_once(tmp_path):
    path = claim_run_id(str(tmp_path / "out"), "r1")
    assert path == layout.claim_path(str(tmp_path / "out"), "r1")
    assert json.loads(Path(path).read_text())["run_id"] == "r1"
    with pytest.raises(RunIdTaken):
        claim_run_id(str(tmp_path / "out"), "r1")
    claim_run_id(str(tmp_path / "out"), "r2")  # another id is free


def test_of_many_simultaneous_claims_exactly_one_wins(tmp_path):
    start, won, lost = threading.Barrier(8), [], []

    def claim():
        start.wait()
        try:
            claim_run_id(str(tmp_path / "out"), "same")
            won.append(1)
        except RunIdTaken:
            lost.append(1)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(won), len(lost)) == (1, 7)


def test_a_run_whose_id_another_run_holds_stops_at_startup(tmp_path, capsys):
    # The other run has started (claimed) but written no table file yet: the check for
    # existing files alone would let this one through, and its finalize would replace
    # the first run's files.
    output = tmp_path / "out"
    claim_run_id(str(output), "busy")
    args = [f"--input={tmp_path / 'in'}", f"--output={output}", "--run_id=busy"]
    assert main([*args, f"--checkpoint={FIXTURES / 'sam_tiny.pth'}"]) == 2
    err = capsys.readouterr().err
    assert "--run_id busy: another run holds that id" in err
    assert sorted(p.name for p in output.iterdir()) == ["_runs"]  # nothing else written
