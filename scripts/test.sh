#!/usr/bin/env bash
# Install everything the tests need (Debian packages, a virtualenv with the project and its
# test tools) and run them all: ruff, mypy, then pytest against the moto server and a
# throwaway Ceph RADOS Gateway, both started by the tests on 127.0.0.1. Run as root.
# Extra arguments go to pytest (e.g. -k semantics, --s3=moto).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
echo "== installing Debian packages"
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    fuse3 libfuse3-dev pkg-config gcc python3 python3-venv python3-dev \
    docker-registry skopeo ceph-mon ceph-osd radosgw ceph-common \
    procps psmisc iproute2 ca-certificates >/dev/null

echo "== installing the project and its test tools into .venv"
"${PYTHON:-python3}" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
