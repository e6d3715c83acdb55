#!/bin/sh
# Builds agentspace as one static binary (cgo SQLite linked in, pure-Go DNS
# and user lookups, no dlopen). The Dockerfile and .ci/run both run exactly
# this script, so the image is built the way CI builds it.
#
#   deploy/build-static.sh [output path]    (default ./agentspace)
#
# Needs Go, gcc and the static C library (Debian: gcc libc6-dev).
set -eu
out=${1:-agentspace}
cd "$(dirname "$0")/.."
CGO_ENABLED=1 go build -trimpath \
  -tags 'netgo osusergo sqlite_omit_load_extension' \
  -ldflags "-s -w -linkmode external -extldflags '-static'" \
  -o "$out" ./cmd/agentspace
