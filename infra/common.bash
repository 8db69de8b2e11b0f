# shellcheck shell=bash
# Sourced by the infra scripts: --help handling and the check that required
# settings are present. Each script defines usage() before sourcing this.

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  usage
  exit 0
fi

# Exit 2 naming the first of the given environment variables that is unset or empty.
require() {
  local name
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      echo "$(basename "$0"): error: set ${name} (see --help)" >&2
      exit 2
    fi
  done
}
