# Sourced by scripts/serve and scripts/test: make sure ./.venv exists and holds pvc (editable)
# with the extras named in $PVC_EXTRAS, then put it first on PATH.
# A virtual environment, because Debian's own python3 refuses `pip install` outside one (PEP 668).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

apt_install() {
  $SUDO apt-get install -y --no-install-recommends "$@" \
    || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "$@"; }
}

# libvirt-python (the node agent's binding) compiles against the system's libvirt.
if [[ ",${PVC_EXTRAS:-}," =~ ,(agent|test), ]] && ! pkg-config --exists libvirt 2>/dev/null; then
  apt_install libvirt-dev pkg-config gcc python3-dev
fi

if [ ! -x .venv/bin/python ]; then
  rm -rf .venv
  if ! python3 -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv python3-pip   # Debian's python3 ships without venv and pip
    python3 -m venv .venv
  fi
fi
# Editable in "compat" mode: a plain path in a .pth file. setuptools' default editable finder is
# imported by every Python start in the venv (~15 ms, about half of `python -c pass`), and `pvc`
# commands are short-lived processes.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${PVC_EXTRAS:+[$PVC_EXTRAS]}" \
  --config-settings editable_mode=compat
export PATH="$PWD/.venv/bin:$PATH"
