#!/usr/bin/env bash
#! Validates every golden object file in tests/golden against the Kubernetes OpenAPI schemas (strict).
#
# Usage: scripts/validate-golden.sh [golden-file...]
#
# Each golden file is a JSON `List`; kubernetes-validate checks one object per YAML document and
# does not look inside a List's items, so every item is written out as its own document first.
# A schema that cannot be found (unknown kind) counts as a failure, not a warning.
#
# Environment:
#   KUBERNETES_VERSIONS   space-separated versions to validate against
#                         (default: "1.33.0 latest"; 1.33 is the API level the code is built for)
#   KUBE_EXECUTOR_CACHE   cache root of scripts/install-tools.sh (default /var/cache/kube-executor)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_root="${KUBE_EXECUTOR_CACHE:-/var/cache/kube-executor}"

die() { printf 'validate-golden: %s\n' "$*" >&2; exit 1; }

validator="$cache_root/tools/venv/bin/kubernetes-validate"
if [ ! -x "$validator" ]; then
  validator="$(command -v kubernetes-validate || true)"
fi
[ -n "$validator" ] || die "kubernetes-validate not found in $cache_root/tools/venv/bin or on PATH (run scripts/install-tools.sh)"

# The validator's own interpreter has PyYAML; any python3 does for the JSON split.
python="$(dirname "$validator")/python3"
[ -x "$python" ] || python="$(command -v python3 || true)"
[ -n "$python" ] || die "python3 is needed to split the golden Lists"

if [ "$#" -gt 0 ]; then
  files=("$@")
else
  shopt -s nullglob
  files=("$repo_root"/tests/golden/*.json)
  shopt -u nullglob
fi
[ "${#files[@]}" -gt 0 ] || die "no golden files in $repo_root/tests/golden (run: UPDATE_GOLDEN=1 cargo test -p kube-executor --lib golden)"

read -r -a versions <<<"${KUBERNETES_VERSIONS:-1.33.0 latest}"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

status=0
for file in "${files[@]}"; do
  base="$(basename "$file" .json)"
  split="$scratch/$base.yaml"
  # JSON is YAML: one JSON object per `---` document.
  "$python" - "$file" "$split" <<'PY' || { status=1; continue; }
import json, sys
source, target = sys.argv[1], sys.argv[2]
with open(source) as f:
    data = json.load(f)
items = data["items"] if data.get("kind") == "List" else [data]
if not items:
    sys.exit(f"{source}: no objects")
with open(target, "w") as out:
    for item in items:
        out.write("---\n")
        json.dump(item, out)
        out.write("\n")
PY
  for version in "${versions[@]}"; do
    version_args=()
    [ "$version" = latest ] || version_args=(-k "$version")
    if ! output="$("$validator" --strict "${version_args[@]}" "$split" 2>&1)"; then
      status=1
    fi
    # Report against the golden file's name, not the scratch copy.
    printf '%s\n' "${output//$split/$file}"
    if grep -q '^WARN' <<<"$output"; then
      status=1
    fi
  done
done

if [ "$status" -eq 0 ]; then
  printf 'validate-golden: all %d golden file(s) valid\n' "${#files[@]}"
else
  printf 'validate-golden: FAILED\n' >&2
fi
exit "$status"
