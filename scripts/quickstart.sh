#!/usr/bin/env bash
# Install s3fs-registry and mount a bucket. Run as root on Debian 12.
#
#   bash scripts/quickstart.sh [CONFIG] [MOUNTPOINT]     (CONFIG "" = the default)
#
# CONFIG: the daemon's configuration (doc/CONFIGURATION.md). A path that does not exist is
# an error. Without it, /etc/s3fs-registry/config.yml is used, the path `s3fs-registry mount`
# and `mount -t fuse.s3fs-registry` read by default; when that file does not exist either,
# a local S3 server (moto) is started on 127.0.0.1:9000 with a bucket "registry", and the
# configuration for it is written there. That server keeps everything in memory.
# MOUNTPOINT defaults to /var/lib/docker-registry, where Debian's docker-registry keeps its
# data; the mount is owned by its user (created as the package would), so the registry's own
# unit (User=docker-registry) can use it.
#
# Safe to run again: an existing configuration is never rewritten, a mount already there is
# left alone, and the local server is started again if it is gone (after a reboot).
set -euo pipefail
cd "$(dirname "$0")/.."
DEFAULT_CONFIG=/etc/s3fs-registry/config.yml
CONFIG=${1:-$DEFAULT_CONFIG}
MOUNTPOINT=${2:-/var/lib/docker-registry}
PREFIX=/opt/s3fs-registry
MARKER="# written by scripts/quickstart.sh for a local moto S3 server"
MOTO_PID=/run/s3fs-registry-moto.pid
MOTO_LOG=/var/log/s3fs-registry/moto.log
LOCK_WAIT=${APT_LOCK_WAIT:-600}  # seconds to wait for another apt or dpkg to finish

if [ -n "${1:-}" ] && [ ! -f "$CONFIG" ]; then
    echo "quickstart: $CONFIG does not exist (give an existing configuration file, or no" \
        "argument for a local test server)" >&2
    exit 2
fi
if [ "$(id -u)" != 0 ]; then
    echo "quickstart: run it as root" >&2
    exit 2
fi

apt_update() {
    # apt-get update does not wait for the lists lock as apt-get install waits for dpkg's
    local deadline=$((SECONDS + LOCK_WAIT)) out
    until out=$(apt-get update -qq 2>&1); do
        if ! grep -q 'Could not get lock' <<<"$out" || [ $SECONDS -ge $deadline ]; then
            echo "$out" >&2
            return 1
        fi
        echo "   another apt is running; waiting for it"
        sleep 5
    done
}

export DEBIAN_FRONTEND=noninteractive
echo "== installing Debian packages (waiting up to ${LOCK_WAIT}s for another apt or dpkg)"
apt_update
apt-get -o DPkg::Lock::Timeout="$LOCK_WAIT" install -y -qq --no-install-recommends \
    fuse3 libfuse3-dev pkg-config gcc python3 python3-venv python3-dev ca-certificates \
    adduser >/dev/null

echo "== installing s3fs-registry into $PREFIX"
"${PYTHON:-python3}" -m venv "$PREFIX"
"$PREFIX/bin/pip" install -q --upgrade pip
"$PREFIX/bin/pip" install -q .
ln -sf "$PREFIX/bin/s3fs-registry" /usr/local/bin/s3fs-registry
install -D -m 0644 README.md /usr/share/doc/s3fs-registry/README.md
install -D -m 0644 -t /usr/share/doc/s3fs-registry/doc doc/*.md

port_open() {
    "$PREFIX/bin/python" -c 'import socket; socket.create_connection(("127.0.0.1", 9000), 1)' \
        2>/dev/null
}

start_local_server() {
    "$PREFIX/bin/pip" install -q 'moto[server]>=5.2,<5.3'
    mkdir -p "$(dirname "$MOTO_LOG")"
    if port_open; then
        echo "== a server already answers on 127.0.0.1:9000; using it"
    else
        echo "== starting a local S3 server (moto) on 127.0.0.1:9000"
        env -u AWS_CA_BUNDLE nohup "$PREFIX/bin/python" -m moto.server -H 127.0.0.1 -p 9000 \
            >"$MOTO_LOG" 2>&1 &
        echo $! >"$MOTO_PID"
        for _ in $(seq 100); do port_open && break; sleep 0.1; done
    fi
    AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local "$PREFIX/bin/python" - <<'PY'
import boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:9000", region_name="us-east-1")
if "registry" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
    s3.create_bucket(Bucket="registry")
PY
}

registry_user() {
    # the user and group Debian's docker-registry package creates (its postinst, verbatim),
    # so that the package finds its data directory owned by it
    if ! getent passwd docker-registry >/dev/null; then
        adduser --quiet --system --home /var/lib/docker-registry --no-create-home --group \
            --gecos 'Docker Registry' docker-registry
    fi
}

LOCAL=no
if [ ! -f "$CONFIG" ]; then
    LOCAL=yes
    start_local_server
    registry_user
    mkdir -p "$(dirname "$CONFIG")" /var/log/s3fs-registry
    cat >"$CONFIG" <<YAML
$MARKER
# (it keeps everything in memory). Remove this file to use another configuration.
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
  # Debian's docker-registry unit runs as this user
  uid: $(id -u docker-registry)
  gid: $(id -g docker-registry)
  allow_other: true
YAML
    chmod 0600 "$CONFIG"
    echo "== wrote $CONFIG"
elif grep -qxF "$MARKER" "$CONFIG"; then
    LOCAL=yes
    echo "== $CONFIG is this script's; checking its local server"
    start_local_server
else
    echo "== using $CONFIG as it is"
fi

if mountpoint -q "$MOUNTPOINT"; then
    if grep -q " $MOUNTPOINT fuse.s3fs-registry " /proc/self/mounts; then
        echo "$MOUNTPOINT is already mounted by s3fs-registry; left as it is"
    else
        echo "quickstart: something else is mounted on $MOUNTPOINT" >&2
        exit 1
    fi
else
    mkdir -p "$MOUNTPOINT"
    echo "== checking the bucket's permissions"
    s3fs-registry check --config "$CONFIG"
    echo "== mounting"
    s3fs-registry mount --config "$CONFIG" "$MOUNTPOINT"
fi
echo
echo "Mounted on $MOUNTPOINT (configuration: $CONFIG). Try: ls -la $MOUNTPOINT"
echo "Unmount with: umount $MOUNTPOINT   (or fusermount3 -u $MOUNTPOINT)"
if [ "$LOCAL" = yes ]; then
    echo
    echo "The local S3 server (moto, log $MOTO_LOG) keeps everything in memory: what is"
    echo "written to the mount is lost when it stops. Stop it after unmounting with:"
    if [ -f "$MOTO_PID" ]; then
        echo "  kill \$(cat $MOTO_PID)"
    else
        echo "  (it was running before this script; stop it where it was started)"
    fi
fi
