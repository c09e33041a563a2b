#!/usr/bin/env bash
# Run the test suite against real PostgreSQL, Redis, registry and Docker Engine.
#
#   scripts/test.sh [pytest arguments...]
#
# Steps: create .venv when it is missing, install the package with its test extras, install the
# service packages when running as root and one is missing, start the private services
# (scripts/services.sh start), export their addresses as COREBASE_TEST_*, and run pytest.
# Without arguments it then tests the example plugin in examples/corebase-example-plugin, in a
# virtual environment of its own; with arguments it runs only pytest with them.
# A COREBASE_TEST_* variable that is already set wins over the private service's address.
# Without root, a missing service makes its tests skip with the reason; with CI=true they fail instead.
# Exits with pytest's exit code; code 5 (no tests collected) counts as a failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'test.sh: %s\n' "$*" >&2; }

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        log "error: $PYTHON is older than Python 3.11; set PYTHON to a Python 3.11 or newer interpreter"
        exit 1
    fi
    log "creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
fi
log "installing the package with its test extras into .venv"
.venv/bin/python -m pip install --quiet -e '.[test]'

if [ "$(id -u)" -eq 0 ] && ! bash scripts/services.sh check >/dev/null; then
    bash scripts/services.sh install
fi
bash scripts/services.sh start

while IFS= read -r line; do
    name=${line#export }
    name=${name%%=*}
    if [ -z "${!name:-}" ]; then
        eval "$line"
    fi
done < <(bash scripts/services.sh env)

# The example plugin is tested as its author would test it: in an environment of its own with
# CoreBase and the plugin installed, so that the main suite's servers never load its policy.
EXAMPLE=examples/corebase-example-plugin
test_example_plugin() {
    if [ ! -x "$EXAMPLE/.venv/bin/python" ]; then
        log "creating $EXAMPLE/.venv"
        .venv/bin/python -m venv "$EXAMPLE/.venv"
    fi
    log "installing CoreBase and the example plugin into $EXAMPLE/.venv"
    "$EXAMPLE/.venv/bin/python" -m pip install --quiet -e . -e "$EXAMPLE[test]"
    (cd "$EXAMPLE" && .venv/bin/pytest -ra)
}

check_status() {
    if [ "$1" -eq 5 ]; then
        log "error: pytest collected no tests (exit code 5) in $2; check the test paths and -k/-m filters"
    fi
}

status=0
.venv/bin/pytest -ra "$@" || status=$?
check_status "$status" "the main suite"
if [ "$#" -eq 0 ]; then
    example_status=0
    test_example_plugin || example_status=$?
    check_status "$example_status" "$EXAMPLE"
    if [ "$status" -eq 0 ]; then
        status=$example_status
    fi
fi
exit "$status"
