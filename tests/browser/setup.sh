#!/usr/bin/env bash
# Installs what the console's browser test (tests/tests/console.rs) needs: Debian's chromium and
# the pinned playwright-core (npm ci from package-lock.json). Idempotent: does nothing when both
# are present. Run as root (or with passwordless sudo) on Debian; `make test` calls it.
#
# playwright-core only drives the browser: it never downloads one (that is not possible here and
# not wanted in CI). Node.js >= 20 comes with the machine; Debian's own nodejs is too old for the
# pinned playwright-core, so a missing or old node is an error, not an install.
set -euo pipefail
cd "$(dirname "$0")"

export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -E"
fi

if command -v chromium >/dev/null 2>&1; then
    echo "browser-setup: chromium present ($(command -v chromium))"
else
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "browser-setup: apt-get not found; install chromium by hand" >&2
        exit 1
    fi
    echo "browser-setup: apt-get install -y chromium"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq chromium
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "browser-setup: node and npm (Node.js >= 20) are required" >&2
    exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    echo "browser-setup: Node.js >= 20 required, found $(node --version)" >&2
    exit 1
fi

want=$(node -p 'require("./package-lock.json").packages["node_modules/playwright-core"].version')
have=$(node -p 'require("./node_modules/playwright-core/package.json").version' 2>/dev/null || true)
if [ "$want" = "$have" ]; then
    echo "browser-setup: playwright-core $have present"
else
    echo "browser-setup: npm ci (playwright-core $want)"
    npm ci --no-audit --no-fund --loglevel=error
fi
