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
# PyPI's Linux torch wheel is the CUDA build (about 2.6 GB downloaded with its CUDA libraries);
# PyTorch's CPU index has the same release built for the CPU (about 190 MB). When an extra
# needs torch and it is not installed yet, take it from there first if that index answers
# ($MAM_TF_TORCH_INDEX, "" to skip); otherwise pip takes it from its configured indexes, where a
# CPU wheel (a local version such as 2.13.0+cpu) wins over the CUDA one of the same release.
_torch_cpu_first() {
    local index="${MAM_TF_TORCH_INDEX-https://download.pytorch.org/whl/cpu}" req
    [ -n "$index" ] || return 0
    python -c "import torch" >/dev/null 2>&1 && return 0
    req="$(python - "$REPO_ROOT/pyproject.toml" <<'PY'
import sys, tomllib
extras = tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]
print(next(r for r in extras["keras3-torch"] if r.startswith("torch")))
PY
)"
    if python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=10)" \
            "$index" >/dev/null 2>&1; then
        echo "[mam-tf] installing $req, the CPU build, from $index"
        python -m pip install -q --no-deps --index-url "$index" "$req"
    else
        echo "[mam-tf] $index does not answer: $req comes from pip's configured indexes" \
             "(on Linux PyPI has only the CUDA build, about 2.6 GB with its libraries)"
    fi
}
if [ "${MAM_TF_NO_INSTALL:-0}" != 1 ] && { [ ! -f "$_stamp" ] || [ "$(cat "$_stamp")" != "$_want" ] ||
        [ "$(_installed_from)" != "$(realpath "$REPO_ROOT")" ]; }; then
    case ",$_extras," in
        *,test,*|*,all,*|*,keras3,*|*,keras3-torch,*) _torch_cpu_first ;;
    esac
    echo "[mam-tf] installing mam-tf${_extras:+[$_extras]} into $MAM_TF_VENV"
    python -m pip install -q -e "$REPO_ROOT${_extras:+[$_extras]}"
    echo "$_want" > "$_stamp"
fi
