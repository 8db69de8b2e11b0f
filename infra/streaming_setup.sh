#!/usr/bin/env bash
# Pub/Sub topic + subscription fed by GCS OBJECT_FINALIZE notifications on the image
# bucket. The pipeline's streaming mode (reading this subscription) is a later issue:
# this only prepares the plumbing.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: infra/streaming_setup.sh [--help]

Creates (if missing) a Pub/Sub topic and subscription, and a notification on
IMAGE_BUCKET that publishes OBJECT_FINALIZE events (new or overwritten objects) to the
topic, in JSON. Streaming mode of the pipeline is not implemented yet (later issue).

Environment:
  PROJECT        Google Cloud project ID                         (required)
  IMAGE_BUCKET   bucket that receives images, without gs://      (required)
  TOPIC          Pub/Sub topic          (default: maskmine-new-images)
  SUBSCRIPTION   Pub/Sub subscription   (default: maskmine-new-images-sub)
  PREFIX         only objects under this prefix (default: images/)
USAGE
}

# shellcheck source=/dev/null  # infra/common.bash: --help and require()
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"

require PROJECT IMAGE_BUCKET
TOPIC="${TOPIC:-maskmine-new-images}"
SUBSCRIPTION="${SUBSCRIPTION:-maskmine-new-images-sub}"
PREFIX="${PREFIX:-images/}"

if ! gcloud pubsub topics describe "${TOPIC}" --project "${PROJECT}" >/dev/null 2>&1; then
  gcloud pubsub topics create "${TOPIC}" --project "${PROJECT}"
fi
if ! gcloud pubsub subscriptions describe "${SUBSCRIPTION}" --project "${PROJECT}" \
  >/dev/null 2>&1; then
  gcloud pubsub subscriptions create "${SUBSCRIPTION}" --project "${PROJECT}" \
    --topic "${TOPIC}" --ack-deadline 600 --message-retention-duration 7d
fi
# gcloud grants the bucket's Cloud Storage service agent publish rights on the topic.
gcloud storage buckets notifications create "gs://${IMAGE_BUCKET}" \
  --topic "projects/${PROJECT}/topics/${TOPIC}" \
  --event-types OBJECT_FINALIZE \
  --object-prefix "${PREFIX}" \
  --payload-format json
echo "notifications: gs://${IMAGE_BUCKET}/${PREFIX}* -> ${TOPIC} -> ${SUBSCRIPTION}"
