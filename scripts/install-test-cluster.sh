#!/usr/bin/env bash
#! Installs what the local test control plane needs and builds kube-apiserver,
#! kube-controller-manager and kube-scheduler from Debian's kubernetes source package.
#
# The binaries are cached outside the repository (KUBE_EXECUTOR_CACHE, default
# /var/cache/kube-executor) so a second run only checks they are present.
set -euo pipefail

CACHE_DIR="${KUBE_EXECUTOR_CACHE:-/var/cache/kube-executor}"
BIN_DIR="$CACHE_DIR/bin"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler)

step() { printf '==> %s\n' "$*" >&2; }
die() { printf 'install-test-cluster: %s\n' "$*" >&2; exit 1; }
trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR

have_binaries() {
  for b in "${BINARIES[@]}"; do [ -x "$BIN_DIR/$b" ] || return 1; done
}

apt_packages=(etcd-server openssl git iproute2 procps util-linux)
build_packages=(golang-go rsync golang-github-modern-go-reflect2-dev dpkg-dev)

missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || printf '%s\n' "$p"
  done
}

apt_updated=0
apt_install() {
  local missing
  missing=$(missing_packages "$@")
  [ -z "$missing" ] && return 0
  [ "$(id -u)" = 0 ] || die "need root to install: $missing"
  if [ "$apt_updated" = 0 ]; then
    step "apt-get update"
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt_updated=1
  fi
  step "apt-get install $missing"
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null \
    || die "apt-get install failed for: $missing"
}

# Derives a deb-src entry from the existing Debian deb entry instead of naming a mirror.
ensure_deb_src() {
  local src=/etc/apt/sources.list.d/kube-executor-src.sources
  if grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ || grep -qs '^deb-src ' /etc/apt/sources.list; then
    return 0
  fi
  local deb822=/etc/apt/sources.list.d/debian.sources
  if [ -f "$deb822" ]; then
    step "adding deb-src entries derived from $deb822"
    sed -e 's/^Types: *deb$/Types: deb-src/' "$deb822" > "$src"
  elif grep -qs '^deb ' /etc/apt/sources.list; then
    step "adding deb-src lines derived from /etc/apt/sources.list"
    grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > /etc/apt/sources.list.d/kube-executor-src.list
  else
    die "no Debian deb entry found to derive a deb-src entry from"
  fi
  apt_updated=0
}

apt_install "${apt_packages[@]}"
command -v etcd >/dev/null || die "etcd not found after installing etcd-server"

if have_binaries; then
  step "control-plane binaries cached in $BIN_DIR"
  exit 0
fi

ensure_deb_src
apt_install "${build_packages[@]}"
if [ "$apt_updated" = 0 ]; then apt-get update -qq >/dev/null || die "apt-get update failed"; fi

WORK="$CACHE_DIR/build"
rm -rf "$WORK"
mkdir -p "$WORK" "$BIN_DIR"
cd "$WORK"
step "fetching the kubernetes source package"
apt-get source --download-only kubernetes >/dev/null 2>&1 || die "apt-get source kubernetes failed (is the deb-src entry valid?)"
tarball=$(ls kubernetes_*.orig.tar.gz 2>/dev/null | head -n1)
[ -n "$tarball" ] || die "kubernetes orig tarball not found after apt-get source"
mkdir -p gopath/src/k8s.io
tar -xzf "$tarball" -C gopath/src/k8s.io
srcdir=$(find gopath/src/k8s.io -mindepth 1 -maxdepth 1 -type d | head -n1)
[ "$srcdir" = gopath/src/k8s.io/kubernetes ] || mv "$srcdir" gopath/src/k8s.io/kubernetes
KSRC="$WORK/gopath/src/k8s.io/kubernetes"

# The vendored reflect2 v1.0.1 crashes the API server under Go >= 1.18; Debian ships v1.0.2.
step "replacing vendored reflect2 with Debian's copy"
rm -rf "$KSRC/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$KSRC/vendor/github.com/modern-go/reflect2"

export GOPATH="$WORK/gopath" GO111MODULE=off GOFLAGS= GOCACHE="$WORK/gocache"
cd "$KSRC"
step "generating OpenAPI definitions (make gen_openapi)"
make gen_openapi >"$WORK/gen_openapi.log" 2>&1 || { tail -n 30 "$WORK/gen_openapi.log" >&2; die "make gen_openapi failed"; }

for b in "${BINARIES[@]}"; do
  step "building $b"
  go build -ldflags "-s -w" -o "$BIN_DIR/$b.tmp" "./cmd/$b" || die "go build $b failed"
  mv "$BIN_DIR/$b.tmp" "$BIN_DIR/$b"
done
cd /
rm -rf "$WORK"
have_binaries || die "binaries missing after build"
step "control-plane binaries built into $BIN_DIR"
