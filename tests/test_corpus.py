"""One run over the hostile corpus (scripts/make_corpus.py): every listed file ends up in
exactly one of images/, errors/ (with its reason) or the skipped count."""

import collections
import re

from pipeline.cli import main
from pipeline.options import MaskMineOptions
from pipeline.parts import plan_parts
from scripts.make_corpus import make_corpus

from .conftest import FIXTURES
from .helpers import FAST, read_table

# One prompt per image, larger batches: the corpus has 38 images to account for, not to
# mine well (CI's two cores).
QUICK = [*FAST, "--points_per_side=1", "--inference_batch_size=8"]


def mine_corpus(tmp_path, capsys, *flags: str) -> dict:
    corpus = make_corpus(tmp_path / "c")
    output = tmp_path / "out"
    args = [f"--input={i}" for i in corpus.inputs]
    args += [f"--output={output}", f"--checkpoint={FIXTURES / 'sam_tiny.pth'}", *QUICK, *flags]
    capsys.readouterr()
    assert main(["--runner=DirectRunner", *args]) == 0
    err = capsys.readouterr().err
    skipped = re.findall(r"files_skipped_by_extension: (\d+)", err)
    return {
        "corpus": corpus,
        "images": read_table(output, "images").column("image_uri").to_pylist(),
        "errors": read_table(output, "errors").to_pylist(),
        "skipped": int(skipped[-1]) if skipped else 0,
    }


def check_accounting(run: dict) -> None:
    expected = run["corpus"].expected
    want = collections.defaultdict(list)
    for uri, (kind, _) in expected.items():
        want[kind].append(uri)
    errors = {r["image_uri"]: r["error"] for r in run["errors"]}
    rows = collections.Counter(run["images"] + [r["image_uri"] for r in run["errors"]])
    print(
        f"corpus: {len(expected)} entries; images/ {len(run['images'])} rows, errors/ "
        f"{len(run['errors'])} rows, skipped {run['skipped']} (expected "
        f"{len(want['image'])}/{len(want['error'])}/{len(want['skipped'])}); not created: "
        f"{run['corpus'].not_created}"
    )
    assert [u for u, n in rows.items() if n > 1] == []  # nothing doubled
    assert sorted(run["images"]) == sorted(want["image"])
    assert sorted(errors) == sorted(want["error"])
    assert run["skipped"] == len(want["skipped"])
    for uri, (kind, reason) in expected.items():
        if kind == "error":
            assert reason in errors[uri], (uri, errors[uri])
    # Nothing else: every row is a corpus entry.
    assert set(rows) <= set(expected)


def test_one_run_accounts_for_every_file_of_the_corpus(tmp_path, capsys):
    run = mine_corpus(tmp_path, capsys)
    with capsys.disabled():
        check_accounting(run)
    # The non-UTF-8 name is an error row that names its bytes, not a crash.
    assert any("\\xff" in r["image_uri"] for r in run["errors"])


def test_the_launchers_listing_accounts_for_the_corpus_the_same(tmp_path):
    # --commit_every lists on the launcher (pipeline/parts.py): the same URIs, the same
    # listing errors (written by part 0), the same skipped count.
    corpus = make_corpus(tmp_path / "c")
    inputs = [f"--input={i}" for i in corpus.inputs]
    options = MaskMineOptions([*inputs, f"--output={tmp_path / 'o'}", "--commit_every=10"])
    plan = plan_parts(options)
    listed = [u for part in plan.parts for u in part]
    failures = {f.uri: f.error for f in plan.listing_errors}
    expected = corpus.expected
    assert plan.failed == [] and plan.skipped == 0
    assert len(listed) == len(set(listed)) and not set(listed) & set(failures)
    assert sorted([*listed, *failures]) == sorted(
        u for u, (k, _) in expected.items() if k != "skipped"
    )
    assert plan.by_extension == sum(k == "skipped" for k, _ in expected.values())
    for uri, error in failures.items():
        assert expected[uri][1] in error


def test_part_zero_writes_the_launchers_listing_errors(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "up").symlink_to(folder, target_is_directory=True)
    with open(bytes(folder) + b"/x\xfe.png", "wb") as f:
        f.write(b"whatever")
    (folder / "a.png").write_bytes(b"not a png")
    output = tmp_path / "out"
    args = [f"--input={folder}", f"--output={output}", "--commit_every=1", *QUICK]
    # Every input failed: exit 1, with each one's row.
    assert main(["--runner=DirectRunner", *args]) == 1
    errors = {r["image_uri"]: r["error"] for r in read_table(output, "errors").to_pylist()}
    assert sorted(errors) == sorted(
        [str(folder / "a.png"), str(folder / "up"), f"{folder}/x\\xfe.png"]
    )
    assert "not an image" in errors[str(folder / "a.png")]
    assert "symbolic link loop" in errors[str(folder / "up")]
    assert "not valid UTF-8" in errors[f"{folder}/x\\xfe.png"]
