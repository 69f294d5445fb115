#!/usr/bin/env bash
# The one command that installs what the tests need on a fresh Debian machine
# and runs them: `bash tests/run.sh [pytest args]`. CI runs it via .ci/run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A test whose peer (a DCMTK tool, Orthanc, pynetdicom, distributed) is missing
# fails here instead of being skipped (tests/require.py): this script installs
# them all, so a skip would only hide a broken install.
export FASTSEND_REQUIRE_PEERS=1

# DCMTK and Orthanc are real peers the tests start on loopback. pynetdicom
# installs Python scripts named storescp/storescu too, so look for DCMTK's
# binaries themselves (which report a "$dcmtk:" version), not just a name on PATH.
is_dcmtk() { [ -x "$1" ] && "$1" --version 2>/dev/null | grep -q '\$dcmtk:'; }
have_dcmtk=no
for candidate in $(type -ap storescp) /usr/bin/storescp; do
    if is_dcmtk "$candidate"; then have_dcmtk=yes; break; fi
done
have_orthanc=no
if command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; then have_orthanc=yes; fi

# Chromium renders the audit report's HTML page in tests/test_audit.py (headless).
have_chromium=no
if command -v chromium >/dev/null 2>&1; then have_chromium=yes; fi
# tmux shows what a person sees in a terminal (the progress bar) in tests/test_terminal.py.
have_tmux=no
if command -v tmux >/dev/null 2>&1; then have_tmux=yes; fi

if [ "$have_dcmtk" = no ] || [ "$have_orthanc" = no ] || [ "$have_chromium" = no ] \
    || [ "$have_tmux" = no ] || ! command -v dcmsend >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "tests/run.sh: dcmtk, orthanc, chromium or tmux is missing and neither root nor sudo is available" >&2
        exit 1
    fi
    "${SUDO[@]}" apt-get update
    # The orthanc package may start its own service on 4242/8042; the tests
    # use their own config and free ports, so that does not matter.
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends dcmtk orthanc chromium tmux
fi

# An editable install builds the Cython extension; PEP 660 needs setuptools>=64.
python3 -m pip install -U 'setuptools>=64' wheel cython
python3 -m pip install -e '.[test]'

ruff check src tests bench examples
mypy
# pytest exits 5 when it ran no test at all (say a mistyped path or -k in
# "$@"); set -e already stops on it, and it must never be waved through.
status=0
python3 -m pytest -q "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "tests/run.sh: pytest ran no test (exit 5), which is a failure" >&2
fi
exit "$status"
