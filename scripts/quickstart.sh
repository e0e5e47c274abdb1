#!/usr/bin/env bash
# Install s3fs-registry and mount a bucket. Run as root on Debian 12.
#
#   bash scripts/quickstart.sh [CONFIG] [MOUNTPOINT]
#
# CONFIG defaults to /etc/s3fs-registry/config.yml. When that file does not exist, a local
# S3 server (moto) is started on 127.0.0.1:9000 for the purpose, with a bucket "registry",
# and a configuration for it is written to /etc/s3fs-registry/local.yml. MOUNTPOINT defaults
# to /var/lib/docker-registry, where Debian's docker-registry keeps its data.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-/etc/s3fs-registry/config.yml}
MOUNTPOINT=${2:-/var/lib/docker-registry}
PREFIX=/opt/s3fs-registry

export DEBIAN_FRONTEND=noninteractive
echo "== installing Debian packages"
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    fuse3 libfuse3-dev pkg-config gcc python3 python3-venv python3-dev ca-certificates >/dev/null

echo "== installing s3fs-registry into $PREFIX"
"${PYTHON:-python3}" -m venv "$PREFIX"
"$PREFIX/bin/pip" install -q --upgrade pip
"$PREFIX/bin/pip" install -q . 'moto[server]>=5'
ln -sf "$PREFIX/bin/s3fs-registry" /usr/local/bin/s3fs-registry

if [ ! -f "$CONFIG" ]; then
    CONFIG=/etc/s3fs-registry/local.yml
    echo "== no configuration given: starting a local S3 server (moto) on 127.0.0.1:9000"
    mkdir -p /etc/s3fs-registry /var/log/s3fs-registry
    if ! "$PREFIX/bin/python" -c 'import socket; socket.create_connection(("127.0.0.1", 9000), 1)' 2>/dev/null; then
        env -u AWS_CA_BUNDLE nohup "$PREFIX/bin/python" -m moto.server -H 127.0.0.1 -p 9000 \
            >/var/log/s3fs-registry/moto.log 2>&1 &
        echo $! >/run/s3fs-registry-moto.pid
        for _ in $(seq 100); do
            "$PREFIX/bin/python" -c 'import socket; socket.create_connection(("127.0.0.1", 9000), 1)' 2>/dev/null && break
            sleep 0.1
        done
    fi
    AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local "$PREFIX/bin/python" - <<'PY'
import boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:9000", region_name="us-east-1")
if "registry" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
    s3.create_bucket(Bucket="registry")
PY
    cat >"$CONFIG" <<'YAML'
# written by scripts/quickstart.sh for a local moto S3 server
storage:
  s3:
    accesskey: local
    secretkey: local
    region: us-east-1
    regionendpoint: http://127.0.0.1:9000
    bucket: registry
    rootdirectory: /
mount:
  log_file: /var/log/s3fs-registry/daemon.log
YAML
fi

mkdir -p "$MOUNTPOINT"
if mountpoint -q "$MOUNTPOINT"; then
    echo "$MOUNTPOINT is already mounted; unmount it first: fusermount3 -u $MOUNTPOINT" >&2
    exit 1
fi
echo "== checking the bucket's permissions"
s3fs-registry check --config "$CONFIG"
echo "== mounting"
s3fs-registry mount --config "$CONFIG" "$MOUNTPOINT"
echo "Mounted on $MOUNTPOINT (configuration: $CONFIG). Try: ls -la $MOUNTPOINT"
echo "Unmount with: fusermount3 -u $MOUNTPOINT"
