#!/usr/bin/env bash
# make infra-check: prove the Bicep is sound without an Azure subscription.
#  1. create/refresh .venv-infra from infra/requirements-infra.txt (checkov stays out of the app's .venv)
#  2. parse every .bicep with pycep-parser and run checkov with infra/checks (infra/check.py)
#  3. run the structural and settings-coverage tests in tests/infra
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv-infra
REQ=infra/requirements-infra.txt
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}

if [ ! -x "$VENV/bin/checkov" ] || ! cmp -s "$REQ" "$VENV/.requirements-infra.txt"; then
  echo "infra-check: installing $REQ into $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
  cp "$REQ" "$VENV/.requirements-infra.txt"
fi

"$VENV/bin/python" infra/check.py
# pyproject's pytest options for the app suite (asyncio, timeout) are unknown to this venv: silence those warnings.
"$VENV/bin/python" -m pytest tests/infra -q -p no:cacheprovider --confcutdir=tests/infra -W ignore::pytest.PytestConfigWarning "$@"
