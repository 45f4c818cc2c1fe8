# Sourced by .ci/test and .ci/demo: makes a fresh machine ready, reusing caches outside the checkout.
#   - the Python environment: a venv under ~/.cache/rtml keyed by pyproject.toml and Python version
#   - the Go-built control plane (etcd, kube-apiserver, kube-controller-manager, kubectl, helm),
#     built once from the pinned modules in operator/rtml/dev/gotools and cached by their hash
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${RTML_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rtml}"
PYTHON="${PYTHON:-python3}"

say() { printf '\n==> %s\n' "$*" >&2; }

command -v "$PYTHON" >/dev/null || { echo "rtml needs Python 3.11+ ($PYTHON not found)." >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "rtml needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version)." >&2; exit 1; }
command -v go >/dev/null || {
  echo "Go is needed to build the local control plane (kube-apiserver, etcd, helm); install Go 1.25+." >&2
  exit 1
}

# Debian packages: Redis (the Feast online store in tests), PostgreSQL (the Feast SQL registry
# in tests, as in a cluster; Debian keeps its binaries off PATH), wrk (the benchmarks' load
# generator), the image tools (mmdebstrap, buildah, podman, umoci, runc: docs/images.md), what
# the node's runc is built with (pkg-config, libseccomp-dev: docs/local-control-plane.md),
# Prometheus (Experiments' analysis: docs/experiments.md) and Lua 5.1 (the Argo CD health
# checks' tests: docs/gitops.md), and libgomp1 (OpenMP, which the ranking example's
# LightGBM wheel loads).
missing=()
for pkg in redis-server wrk mmdebstrap buildah podman umoci runc pkg-config; do
  command -v "$pkg" >/dev/null || [[ -x "/usr/sbin/$pkg" ]] || missing+=("$pkg")  # runc: sbin
done
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[[ -e /usr/include/seccomp.h ]] || missing+=(libseccomp-dev)
[[ -x /usr/bin/prometheus ]] || missing+=(prometheus)
[[ -x /usr/bin/lua5.1 ]] || missing+=(lua5.1)
compgen -G "/usr/lib/*/libgomp.so.1" >/dev/null || missing+=(libgomp1)  # LightGBM's wheel links it
if ((${#missing[@]})); then
  say "installing ${missing[*]} from Debian's packages"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

key="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-12)-$("$PYTHON" -c 'import sys; print("py%d.%d" % sys.version_info[:2])')"
VENV="$CACHE/venv-$key"
if [[ ! -x "$VENV/bin/rtml-deps-ok" ]]; then
  say "creating the Python environment in $VENV (once per pyproject.toml change)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  # Install the dependencies once; the project itself is linked per checkout below.
  "$VENV/bin/pip" install --quiet -e "$ROOT[dev]"
  printf '#!/bin/sh\n' > "$VENV/bin/rtml-deps-ok" && chmod +x "$VENV/bin/rtml-deps-ok"
fi
# Point the cached environment at this checkout (CI clones afresh each time): seconds, no downloads.
"$VENV/bin/pip" install --quiet --no-deps --no-build-isolation -e "$ROOT" >"$CACHE/pip-link.log" 2>&1 \
  || "$VENV/bin/pip" install --quiet --no-deps -e "$ROOT" >"$CACHE/pip-link.log" 2>&1
export PATH="$VENV/bin:$PATH"

say "building or reusing the local control plane binaries"
RTML_BIN="$(rtml dev tools build)"
export PATH="$RTML_BIN:$PATH"
export RTML_BIN
say "building or reusing the local node's binaries (kubelet, containerd, runc, CNI, coredns, pause)"
RTML_NODE_BIN="$(rtml dev tools build --node)"; export RTML_NODE_BIN

# The runtime, operator and Redis images, built with buildah on a Debian base; the base, the
# layer cache and the OCI archives are cached under $CACHE/images (seconds when nothing changed).
say "building or reusing the images"
rtml dev images build --context "$ROOT" >&2

# The upstream CRDs (KServe, KEDA) the tests and the demo install: fetched from their Go modules at
# pinned versions through the Go module proxy, cached outside the checkout (rtml.dev.thirdparty).
say "fetching or reusing the upstream CRDs"
RTML_THIRDPARTY_CRDS="$(rtml dev thirdparty-crds)"
export RTML_THIRDPARTY_CRDS
