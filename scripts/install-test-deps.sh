#!/usr/bin/env bash
# Installs the external servers the integration tests run privately: redis-server (+ redis-cli)
# and PostgreSQL, plus the openssl CLI for throwaway test certificates and promtool (package
# `prometheus`) for deploy/helm-lint.sh. Idempotent: does nothing
# when they are already present. Run as root (or with passwordless sudo) on Debian/Ubuntu;
# `make test` calls it before `cargo test`.
#
# The harness (tests/src) always starts its own servers on free loopback ports with data in temp
# dirs, so the distro's system services are never used; we stop them if a postinst started them,
# so they do not hold memory or the default ports.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -E"
    fi
fi

apt_updated=0
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-test-deps: apt-get not found; install $* by hand" >&2
        exit 1
    fi
    if [ "$apt_updated" -eq 0 ]; then
        echo "install-test-deps: apt-get update"
        $SUDO apt-get update -qq
        apt_updated=1
    fi
    echo "install-test-deps: apt-get install -y $*"
    # policy-rc.d exit 101 tells invoke-rc.d not to start services from postinst scripts.
    # Only create it if none exists, and remove only the one we created.
    if [ ! -e /usr/sbin/policy-rc.d ] && [ -z "$SUDO" ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        # Removed even if apt-get fails or we are interrupted.
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    $SUDO apt-get install -y -qq --no-install-recommends "$@"
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
}

# Stops a system service a postinst may have started anyway (no systemd in containers: fall back
# to the init script). Failure is fine: the harness never uses the default ports.
stop_service() {
    local name="$1"
    if command -v service >/dev/null 2>&1; then
        $SUDO service "$name" stop >/dev/null 2>&1 || true
    fi
}

have_postgres() {
    if [ -n "${PG_BIN_DIR:-}" ] && [ -x "${PG_BIN_DIR}/postgres" ]; then
        return 0
    fi
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

did_something=0

if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    echo "install-test-deps: redis-server present ($(command -v redis-server))"
else
    apt_install redis-server redis-tools
    stop_service redis-server
    did_something=1
fi

# The TLS tests make a throwaway CA and certificates with the openssl CLI (tests/src/tls.rs,
# tests/src/certs.rs); the Sentinel tests
# run `redis-server --sentinel` (the same binary, so no redis-sentinel package is needed).
if command -v openssl >/dev/null 2>&1; then
    echo "install-test-deps: openssl present ($(command -v openssl))"
else
    apt_install openssl
    did_something=1
fi

if have_postgres; then
    echo "install-test-deps: postgres present ($(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -n1 || echo "$PG_BIN_DIR/postgres"))"
else
    apt_install postgresql
    stop_service postgresql
    did_something=1
fi

# deploy/helm-lint.sh runs `promtool check rules` on the chart's rendered PrometheusRule; the
# Debian package `prometheus` ships promtool (its server is stopped if a postinst started it).
if command -v promtool >/dev/null 2>&1; then
    echo "install-test-deps: promtool present ($(command -v promtool))"
else
    apt_install prometheus
    stop_service prometheus
    did_something=1
fi

# initdb/postgres refuse to run as root; the harness switches to this user via runuser.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "install-test-deps: warning: no 'postgres' OS user; the harness needs it when run as root" >&2
fi

if [ "$did_something" -eq 0 ]; then
    echo "install-test-deps: nothing to do"
else
    echo "install-test-deps: done"
fi
