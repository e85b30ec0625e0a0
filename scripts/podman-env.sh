# shellcheck shell=bash
# Sourced by the container scripts: picks the container engine and, on hosts whose default
# OCI runtime cannot work (see scripts/containers.conf), points podman at our small config.
_fc_scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -z "${CONTAINERS_CONF:-}" ] && command -v runc >/dev/null 2>&1; then
  export CONTAINERS_CONF="$_fc_scripts/containers.conf"
fi
# ENGINE: podman (default when present) or docker.
if [ -z "${ENGINE:-}" ]; then
  if command -v podman >/dev/null 2>&1; then ENGINE=podman; else ENGINE=docker; fi
fi
export ENGINE
# Where slow-to-make artefacts (the debootstrap root filesystem) are kept between runs.
export FACECLUSTER_CACHE="${FACECLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/facecluster}"
