#!/usr/bin/env bash
# Pub/Sub topic + subscription fed by GCS OBJECT_FINALIZE notifications on the image
# bucket, for `maskmine --streaming --input_subscription ...` (see infra/README.md).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: infra/streaming_setup.sh [--help]

Creates (if missing) a Pub/Sub topic and subscription, and a notification on
IMAGE_BUCKET that publishes OBJECT_FINALIZE events (new or overwritten objects) to the
topic, in JSON. A streaming job then reads the subscription and mines each new image:

  maskmine --streaming --input_subscription projects/$PROJECT/subscriptions/$SUBSCRIPTION \
    --output gs://BUCKET/out --window_s 300 --runner DataflowRunner ...

(--window_s: one set of Parquet files per window; --allowed_lateness_s: late firings.)

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
echo "stream with: maskmine --streaming --input_subscription" \
  "projects/${PROJECT}/subscriptions/${SUBSCRIPTION} --window_s 300 ..."
