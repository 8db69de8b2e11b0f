#!/usr/bin/env bash
# Build the maskmine Dataflow flex template spec (gcloud dataflow flex-template build).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: infra/build_template.sh [--help]

Writes the flex template spec to TEMPLATE_PATH, with the parameters of
infra/flex-template/metadata.json (generated from the pipeline's options by
infra/make_template_metadata.py). The launcher image is built by Cloud Build from
Google's Python flex template base image and this repository's source; the workers run
the image infra/build_image.sh pushed: launch with
sdk_container_image=IMAGE (infra/launch.sh MODE=template does).

Environment:
  PROJECT              Google Cloud project ID                         (required)
  REGION               region, e.g. us-central1                        (required)
  BUCKET               GCS bucket name, without gs://                  (required)
  REPOSITORY           Artifact Registry repository  (default: maskmine)
  TEMPLATE_PATH        (default: gs://BUCKET/templates/maskmine.json)
  LAUNCHER_IMAGE       (default: REGION-docker.pkg.dev/PROJECT/REPOSITORY/maskmine-launcher:latest)
USAGE
}

# shellcheck source=/dev/null  # infra/common.bash: --help and require()
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

require PROJECT REGION BUCKET
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPOSITORY="${REPOSITORY:-maskmine}"
TEMPLATE_PATH="${TEMPLATE_PATH:-gs://${BUCKET}/templates/maskmine.json}"
LAUNCHER_IMAGE="${LAUNCHER_IMAGE:-${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/maskmine-launcher:latest}"

cd "${ROOT}"
# Refuse a stale metadata file: the template must offer exactly the CLI's options.
python infra/make_template_metadata.py --check

gcloud dataflow flex-template build "${TEMPLATE_PATH}" \
  --project "${PROJECT}" \
  --sdk-language PYTHON \
  --flex-template-base-image PYTHON3 \
  --image-gcr-path "${LAUNCHER_IMAGE}" \
  --py-path pipeline --py-path sam_core --py-path transforms --py-path schemas \
  --py-path pyproject.toml --py-path README.md --py-path infra/requirements-gpu.txt \
  --py-path infra/flex-template/main.py \
  --env FLEX_TEMPLATE_PYTHON_PY_FILE=main.py \
  --env FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE=infra/requirements-gpu.txt \
  --metadata-file infra/flex-template/metadata.json \
  --additional-experiments "use_runner_v2,no_use_multiple_sdk_containers" \
  --worker-region "${REGION}" \
  --temp-location "gs://${BUCKET}/tmp" \
  --staging-location "gs://${BUCKET}/staging"
echo "template: ${TEMPLATE_PATH}"
