#!/usr/bin/env bash
# Launch maskmine on Dataflow GPU workers (one L4 per G2 VM, one SDK process per VM).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: infra/launch.sh [--help] [EXTRA_MASKMINE_OPTIONS...]

Launches a batch job, or a streaming one when SUBSCRIPTION is set. In MODE=direct,
extra arguments are passed on to the pipeline (e.g. --embeddings); MODE=template takes
its settings from the environment only and refuses extra arguments.

Environment:
  PROJECT              Google Cloud project ID                          (required)
  REGION               Dataflow region, e.g. us-central1                (required)
  BUCKET               GCS bucket name, without gs://                   (required)
  SDK_CONTAINER_IMAGE  worker image URI from infra/build_image.sh       (required)
  INPUT                images glob/manifest (default: gs://BUCKET/images/**)
  OUTPUT               output folder        (default: gs://BUCKET/out)
  CHECKPOINT           SAM checkpoint       (default: gs://BUCKET/models/sam_vit_h_4b8939.pth)
  MODEL_TYPE           vit_h | vit_l | vit_b                    (default: vit_h)
  PRECISION            auto (bf16 on Ampere or newer: L4, A100; fp32 on T4) | bf16 | fp32
                       (default: auto, decided on each worker)
  MACHINE_TYPE         G2 machine type for L4                   (default: g2-standard-8)
  GPU_TYPE             accelerator type                         (default: nvidia-l4)
  MAX_WORKERS          autoscaling cap                          (default: 4)
  DISK_SIZE_GB         worker boot disk, holds the image        (default: 50)
  SUBSCRIPTION         streaming: Pub/Sub subscription name or projects/P/subscriptions/S
                       (from infra/streaming_setup.sh); INPUT is then only watched if set
  WINDOW_S             streaming output window in seconds          (default: 300)
  MODE                 direct (python -m pipeline) | template   (default: direct)
  TEMPLATE_PATH        for MODE=template (default: gs://BUCKET/templates/maskmine.json)
  DRY_RUN=1            build the job offline (--dry_run=True), submit nothing; fake values
                       are filled in for unset PROJECT/REGION/BUCKET/SDK_CONTAINER_IMAGE
  PYTHON               interpreter for MODE=direct (default: .venv/bin/python, else python3)
USAGE
}

# shellcheck source=/dev/null  # infra/common.bash: --help and require()
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN="${DRY_RUN:-0}"
if [[ "${DRY_RUN}" == "1" ]]; then
  PROJECT="${PROJECT:-maskmine-dry-run}"
  REGION="${REGION:-us-central1}"
  BUCKET="${BUCKET:-fake-bucket}"
  SDK_CONTAINER_IMAGE="${SDK_CONTAINER_IMAGE:-us-central1-docker.pkg.dev/p/maskmine/maskmine-gpu:dry}"
  # The default gs:// checkpoint below stays: a dry run does not ask GCS whether it exists.
fi
require PROJECT REGION BUCKET SDK_CONTAINER_IMAGE

SUBSCRIPTION="${SUBSCRIPTION:-}"
WINDOW_S="${WINDOW_S:-300}"
if [[ -n "${SUBSCRIPTION}" && "${SUBSCRIPTION}" != projects/* ]]; then
  SUBSCRIPTION="projects/${PROJECT}/subscriptions/${SUBSCRIPTION}"
fi
if [[ -n "${SUBSCRIPTION}" ]]; then
  INPUT="${INPUT:-}"  # streaming: the subscription is the source; INPUT adds a watch
else
  INPUT="${INPUT:-gs://${BUCKET}/images/**}"
fi
OUTPUT="${OUTPUT:-gs://${BUCKET}/out}"
CHECKPOINT="${CHECKPOINT-gs://${BUCKET}/models/sam_vit_h_4b8939.pth}"
MODEL_TYPE="${MODEL_TYPE:-vit_h}"
PRECISION="${PRECISION:-auto}"
MACHINE_TYPE="${MACHINE_TYPE:-g2-standard-8}"
GPU_TYPE="${GPU_TYPE:-nvidia-l4}"
MAX_WORKERS="${MAX_WORKERS:-4}"
DISK_SIZE_GB="${DISK_SIZE_GB:-50}"
MODE="${MODE:-direct}"
ACCELERATOR="worker_accelerator=type:${GPU_TYPE};count:1;install-nvidia-driver"
# One SDK process per VM: Python otherwise starts one per vCPU, each with its own model
# copy on the one GPU. --share_model_across_processes is a second guard.
EXPERIMENTS="use_runner_v2,no_use_multiple_sdk_containers"

if [[ "${MODE}" == "template" ]]; then
  if [[ "${DRY_RUN}" == "1" ]]; then
    echo "launch.sh: error: DRY_RUN=1 is for MODE=direct (gcloud has no offline run)" >&2
    exit 2
  fi
  if [[ $# -gt 0 ]]; then
    echo "launch.sh: error: MODE=template passes no extra arguments (got: $*); set the" \
      "environment variables above, or use MODE=direct" >&2
    exit 2
  fi
  TEMPLATE_PATH="${TEMPLATE_PATH:-gs://${BUCKET}/templates/maskmine.json}"
  # input and checkpoint only when set: an empty value is a startup error.
  template_io="output=${OUTPUT}"
  if [[ -n "${INPUT}" ]]; then
    template_io="input=${INPUT}~${template_io}"
  fi
  if [[ -n "${CHECKPOINT}" ]]; then
    template_io="${template_io}~checkpoint=${CHECKPOINT}"
  fi
  template_streaming=()
  if [[ -n "${SUBSCRIPTION}" ]]; then
    template_streaming=(--enable-streaming-engine
      --parameters "streaming=true,input_subscription=${SUBSCRIPTION},window_s=${WINDOW_S}")
  fi
  gcloud dataflow flex-template run "maskmine-$(date -u +%Y%m%d-%H%M%S)" \
    --project "${PROJECT}" --region "${REGION}" \
    --template-file-gcs-location "${TEMPLATE_PATH}" \
    --worker-machine-type "${MACHINE_TYPE}" --max-workers "${MAX_WORKERS}" \
    --temp-location "gs://${BUCKET}/tmp" --staging-location "gs://${BUCKET}/staging" \
    --additional-experiments "${EXPERIMENTS}" \
    --parameters "^~^${template_io}" \
    --parameters "model_type=${MODEL_TYPE},precision=${PRECISION},device=cuda" \
    --parameters "share_model_across_processes=true" \
    --parameters "sdk_container_image=${SDK_CONTAINER_IMAGE},disk_size_gb=${DISK_SIZE_GB}" \
    --parameters "^~^dataflow_service_options=${ACCELERATOR}" \
    "${template_streaming[@]}"
  exit 0
fi
if [[ "${MODE}" != "direct" ]]; then
  echo "launch.sh: error: MODE must be direct or template, not ${MODE}" >&2
  exit 2
fi

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "${ROOT}/.venv/bin/python" ]]; then
    PYTHON="${ROOT}/.venv/bin/python"
  else
    PYTHON="python3"
  fi
fi

args=(
  --runner DataflowRunner
  --project "${PROJECT}"
  --region "${REGION}"
  --temp_location "gs://${BUCKET}/tmp"
  --staging_location "gs://${BUCKET}/staging"
  --sdk_container_image "${SDK_CONTAINER_IMAGE}"
  --sdk_location container
  --machine_type "${MACHINE_TYPE}"
  --disk_size_gb "${DISK_SIZE_GB}"
  --max_num_workers "${MAX_WORKERS}"
  --dataflow_service_options "${ACCELERATOR}"
  --experiments "${EXPERIMENTS}"
  --output "${OUTPUT}"
  --model_type "${MODEL_TYPE}"
  --precision "${PRECISION}"
  --device cuda
  --share_model_across_processes
)
if [[ -n "${INPUT}" ]]; then
  args+=(--input "${INPUT}")
fi
if [[ -n "${SUBSCRIPTION}" ]]; then
  args+=(--streaming --input_subscription "${SUBSCRIPTION}" --window_s "${WINDOW_S}")
fi
if [[ -n "${CHECKPOINT}" ]]; then
  args+=(--checkpoint "${CHECKPOINT}")
fi
if [[ "${DRY_RUN}" == "1" ]]; then
  args+=(--dry_run=True --run_id dry-run)
fi
cd "${ROOT}"
exec "${PYTHON}" -m pipeline "${args[@]}" "$@"
