#!/bin/sh
# The Envoy sidecar's entrypoint: renders the bootstrap from the image's own descriptor set with the flags it is
# given (python -m gateway render --help), then runs Envoy on it. Rendering at start keeps the transcoder in step
# with the service image: there is no committed copy of the descriptor to drift.
set -eu
config=${ENVOY_CONFIG:-/tmp/envoy/envoy.yaml}
mkdir -p "$(dirname "$config")"
python -m gateway render "$@" --output "$config"
# No hot restart (a sidecar is restarted, never hot-swapped: no shared memory needed); worker threads follow
# the container's CPU, not the node's.
exec envoy --config-path "$config" --disable-hot-restart --concurrency "${ENVOY_CONCURRENCY:-2}" \
  --log-level "${ENVOY_LOG_LEVEL:-warn}"
