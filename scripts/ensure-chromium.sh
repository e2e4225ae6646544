#!/usr/bin/env bash
# Debian's chromium for the browser tests: playwright drives /usr/bin/chromium, it never
# downloads a browser of its own.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=""
# -n: fail at once rather than wait for a password inside `make test`.
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
