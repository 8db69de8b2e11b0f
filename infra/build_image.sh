#!/usr/bin/env bash
# Build the GPU worker image (infra/Dockerfile) and push it to Artifact Registry.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: infra/build_image.sh [--help]

Builds infra/Dockerfile from the repository root and pushes it to Artifact Registry.

Environment:
  PROJECT      Google Cloud project ID                      (required)
  REGION       Artifact Registry region, e.g. us-central1   (required)
  REPOSITORY   Artifact Registry Docker repository          (default: maskmine)
  IMAGE_NAME   image name                                   (default: maskmine-gpu)
  TAG          image tag                          (default: git short commit)
  BUILDER      cloudbuild (gcloud builds submit, no local Docker needed)
               or docker (local docker build + push)       (default: cloudbuild)

Prints the pushed image URI on the last line (use it as SDK_CONTAINER_IMAGE).
USAGE
}

# shellcheck source=/dev/null  # infra/common.bash: --help and require()
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

require PROJECT REGION
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPOSITORY="${REPOSITORY:-maskmine}"
IMAGE_NAME="${IMAGE_NAME:-maskmine-gpu}"
TAG="${TAG:-$(git -C "${ROOT}" rev-parse --short HEAD)}"
BUILDER="${BUILDER:-cloudbuild}"
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/${IMAGE_NAME}:${TAG}"

cd "${ROOT}"
case "${BUILDER}" in
  cloudbuild)
    # Cloud Build needs a cloudbuild config to use a Dockerfile outside the root.
    config="$(mktemp)"
    trap 'rm -f "${config}"' EXIT
    cat >"${config}" <<YAML
steps:
  - name: gcr.io/cloud-builders/docker
    args: ["build", "-f", "infra/Dockerfile", "-t", "${IMAGE}", "."]
images: ["${IMAGE}"]
timeout: 3600s
options:
  machineType: E2_HIGHCPU_8
  diskSizeGb: 100
YAML
    gcloud builds submit --project "${PROJECT}" --region "${REGION}" \
      --config "${config}" .
    ;;
  docker)
    gcloud auth configure-docker "${REGION}-docker.pkg.dev" --quiet
    docker build -f infra/Dockerfile -t "${IMAGE}" .
    docker push "${IMAGE}"
    ;;
  *)
    echo "build_image.sh: error: BUILDER must be cloudbuild or docker, not ${BUILDER}" >&2
    exit 2
    ;;
esac
echo "${IMAGE}"
