# Shared set-up for scripts/demo, scripts/test and scripts/bench (sourced, not run).
# Finds Python 3.12, creates .venv in the repository root, installs the project
# with its test extras when missing or outdated, and generates the gateway CA.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

find_python312() {
    local candidate
    for candidate in "${AWSGATE_PYTHON:-}" python3.12 \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
        /usr/local/bin/python3.12 /usr/bin/python3.12 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ] ||
        ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
        local python
        if ! python="$(find_python312)"; then
            echo "awsgate: Python 3.12 is required (mitmproxy 12 needs it) and none was found." >&2
            echo "  Looked for: \$AWSGATE_PYTHON, python3.12 on PATH, pyenv versions 3.12.*," >&2
            echo "  /usr/local/bin/python3.12, /usr/bin/python3.12." >&2
            echo "  Install one (e.g. 'pyenv install 3.12') or set AWSGATE_PYTHON=/path/to/python3.12." >&2
            exit 3
        fi
        echo "awsgate: creating .venv with $python" >&2
        rm -rf "$VENV"
        "$python" -m venv "$VENV"
    fi
    local stamp="$VENV/.awsgate-installed" want
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
        echo "awsgate: installing the project and its test extras into .venv" >&2
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test]" >&2
        echo "$want" >"$stamp"
    fi
}

ensure_ca() {
    # mitmproxy creates its CA in the confdir on first start; create it up front
    # so that agents can be handed certs/mitmproxy-ca-cert.pem before the gateway runs.
    local certs="${1:-$ROOT/certs}"
    "$VENV/bin/python" - "$certs" <<'PY'
import pathlib, sys
from mitmproxy import certs
path = pathlib.Path(sys.argv[1])
path.mkdir(mode=0o700, parents=True, exist_ok=True)
certs.CertStore.from_store(path, "mitmproxy", 2048)
PY
}

ensure_venv
ensure_ca
export PATH="$VENV/bin:$PATH"
