#!/bin/sh
# TEST SCAFFOLDING: the entrypoint of the fetchdocker/data-takehome-localstack stand-in. LocalStack 1.0.4 in
# host mode with SQS only (the reference image's behaviour: query protocol only), then the init hook:
# create login-queue and preload it with the synthetic messages baked into the image (fixed seed).
set -eu
export SERVICES=sqs EDGE_BIND_HOST=0.0.0.0 EDGE_PORT=4566 HOSTNAME_EXTERNAL=localhost DNS_ADDRESS=0 \
    SKIP_SSL_CERT_DOWNLOAD=1 DISABLE_EVENTS=1
localstack start --host &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true' TERM INT
"$(dirname "$(command -v localstack)")/python" /opt/standin/localstack-preload.py /opt/standin/preload.json
wait "$server"
