#!/usr/bin/env bash
# Build the local Debian base image the stage images are built on in tests (no registry
# needed): debootstrap a minbase bookworm root filesystem, tar it, `FROM scratch` + ADD.
#
# Cached twice, both keyed by a hash of this script and images/base/Dockerfile:
#   $FACECLUSTER_CACHE/base-<key>/rootfs.tar   (survives `podman system reset`; ~60 s to redo)
#   the image localhost/facecluster-base:<key> (podman's own storage; ~10 s to redo from the tar)
# Prints the image name on stdout (last line).
#
# Env: DEBIAN_MIRROR (default: the host's configured mirror, else http://deb.debian.org/debian),
#      DEBIAN_SUITE (bookworm), FACECLUSTER_CACHE, ENGINE (podman|docker).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=podman-env.sh
. "$here/podman-env.sh"

suite="${DEBIAN_SUITE:-bookworm}"
if [ -z "${DEBIAN_MIRROR:-}" ]; then
  DEBIAN_MIRROR="$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
                   | head -1 | sed -E 's/^(URIs:|deb) +//; s/ *$//' || true)"
  DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
fi
key="$(cat "$0" "$root/images/base/Dockerfile" | { cat; echo "$suite"; } | sha256sum | cut -c1-12)"
image="localhost/facecluster-base:$key"
cache="$FACECLUSTER_CACHE/base-$key"

log() { echo "[build-base] $*" >&2; }

if $ENGINE image exists "$image" 2>/dev/null || $ENGINE image inspect "$image" >/dev/null 2>&1; then
  log "cached image $image"
  echo "$image"; exit 0
fi

if [ ! -s "$cache/rootfs.tar" ]; then
  command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
  mkdir -p "$cache"
  tmp="$(mktemp -d "$cache/rootfs.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  log "debootstrap --variant=minbase $suite from $DEBIAN_MIRROR (about a minute)"
  t0=$SECONDS
  debootstrap --variant=minbase "$suite" "$tmp/rootfs" "$DEBIAN_MIRROR" >"$tmp/debootstrap.log" 2>&1 \
    || { tail -20 "$tmp/debootstrap.log" >&2; exit 1; }
  # Point the image's apt at the same mirror, drop caches the image does not need.
  echo "deb $DEBIAN_MIRROR $suite main" > "$tmp/rootfs/etc/apt/sources.list"
  rm -rf "$tmp/rootfs/var/cache/apt/archives/"*.deb "$tmp/rootfs/var/lib/apt/lists/"*
  tar --numeric-owner -C "$tmp/rootfs" -cf "$tmp/rootfs.tar" .
  mv "$tmp/rootfs.tar" "$cache/rootfs.tar"
  log "root filesystem ready in $((SECONDS - t0)) s: $cache/rootfs.tar"
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$root/images/base/Dockerfile" "$ctx/Dockerfile"
ln "$cache/rootfs.tar" "$ctx/rootfs.tar" 2>/dev/null || cp "$cache/rootfs.tar" "$ctx/rootfs.tar"
log "building $image"
$ENGINE build -q -t "$image" -f "$ctx/Dockerfile" "$ctx" >&2
echo "$image"
