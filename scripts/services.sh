#!/usr/bin/env bash
# Starts what the tests talk to when it is not already running: PostgreSQL on
# 127.0.0.1:5432 (trust auth, database `test`) and headless Chromium for browser tests.
set -uo pipefail

pg_ready() { command -v pg_isready >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -p 5432 -q; }
if ! pg_ready; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
  fi
fi
pg_ready || echo "services: PostgreSQL is not reachable at 127.0.0.1:5432; its tests will be skipped"

if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "services: installing Debian chromium for the browser tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
    >/tmp/tuner-apt.log 2>&1 || echo "services: chromium install failed (see /tmp/tuner-apt.log)"
fi
exit 0
