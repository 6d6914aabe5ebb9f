# Shared by the scripts that install things: sourced, not run.

# Run a command as root (directly, or through sudo when the caller is not root).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt-get that waits (up to 10 minutes) for another installer's dpkg lock instead of failing at once,
# and never asks questions.
apt_get() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@"
}

# Install Debian packages, refreshing the package lists once if they are missing or stale.
# Usage: apt_install WHO PACKAGE...   (WHO names the script in what it prints)
apt_install() {
  local who=$1
  shift
  if ! command -v apt-get >/dev/null; then
    echo "$who: no apt-get here; install $* (Debian/Ubuntu package names) by hand" >&2
    return 1
  fi
  echo "$who: installing Debian packages: $*" >&2
  if ! apt_get install -y -qq --no-install-recommends "$@" >/dev/null; then
    apt_get update -qq
    apt_get install -y -qq --no-install-recommends "$@" >/dev/null
  fi
}

# pip reading only PyPI and the lock: no machine-wide find-links, extra indexes or constraints, so
# every machine resolves the same files the lock's hashes name.
isolated_pip_env() {
  export PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_EXTRA_INDEX_URL= PIP_CONSTRAINT= \
    PIP_DISABLE_PIP_VERSION_CHECK=1
}
