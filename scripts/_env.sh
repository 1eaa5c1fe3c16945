# Shared by scripts/demo.sh and scripts/test.sh: create (once) and activate the cached
# virtual environment, and (re)install the project into it when its requirements change.
# The venv lives outside the repository: $MAM_TF_VENV, default ~/.cache/mam-tf/venv.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAM_TF_VENV="${MAM_TF_VENV:-$HOME/.cache/mam-tf/venv}"
PYTHON_BIN="${PYTHON_BIN:-$(command -v python3.11 || command -v python3)}"

if [ ! -x "$MAM_TF_VENV/bin/python" ]; then
    echo "[mam-tf] creating virtual environment $MAM_TF_VENV (first run: a few minutes)"
    mkdir -p "$(dirname "$MAM_TF_VENV")"
    "$PYTHON_BIN" -m venv "$MAM_TF_VENV"
    "$MAM_TF_VENV/bin/python" -m pip install -q --upgrade pip
fi
# shellcheck disable=SC1091
source "$MAM_TF_VENV/bin/activate"

# Reinstall only when pyproject.toml (the requirements) or the requested extras change.
# The extras come in a variable: a sourced script would otherwise see the caller's arguments.
_extras="${MAM_TF_EXTRAS:-}"
_stamp="$MAM_TF_VENV/.mam-tf-stamp${_extras:+-$_extras}"
_want="$(cat "$REPO_ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1) $REPO_ROOT"
# MAM_TF_NO_INSTALL=1 uses the environment as it is (tests run the scripts in the test venv).
# The stamp alone is not enough: another checkout may have installed itself into the same venv
# since, so the installed package must also be found in this checkout.
_installed_from() {
    python - <<'PY' 2>/dev/null
import importlib.util, os
spec = importlib.util.find_spec("mam_tf")
print(os.path.dirname(os.path.dirname(os.path.realpath(spec.origin))) if spec and spec.origin else "")
PY
}
if [ "${MAM_TF_NO_INSTALL:-0}" != 1 ] && { [ ! -f "$_stamp" ] || [ "$(cat "$_stamp")" != "$_want" ] ||
        [ "$(_installed_from)" != "$(realpath "$REPO_ROOT")" ]; }; then
    echo "[mam-tf] installing mam-tf${_extras:+[$_extras]} into $MAM_TF_VENV"
    python -m pip install -q -e "$REPO_ROOT${_extras:+[$_extras]}"
    echo "$_want" > "$_stamp"
fi
