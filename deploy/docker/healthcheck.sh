#!/usr/bin/env bash
# Container liveness probe: GET /healthz on Rampart's admin listener, exit 0 only on HTTP 200.
#
# Plain bash (/dev/tcp) so the runtime image needs no curl/wget. The address is
# RAMPART_ADMIN_LISTEN (what the config's server.admin_listen is overridden with), else the
# shipped default 127.0.0.1:9091; a wildcard bind address is probed on loopback.
set -u
addr="${RAMPART_HEALTHCHECK_ADDR:-${RAMPART_ADMIN_LISTEN:-127.0.0.1:9091}}"
host="${addr%:*}"
port="${addr##*:}"
host="${host#[}"
host="${host%]}"
case "$host" in
  0.0.0.0 | "") host=127.0.0.1 ;;
  ::) host=::1 ;;
esac

exec 3<>"/dev/tcp/${host}/${port}" || exit 1
printf 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
IFS= read -r -t 3 status <&3 || exit 1
case "$status" in
  "HTTP/1."[01]" 200"*) exit 0 ;;
  *) echo "healthz: ${status:-no answer}" >&2; exit 1 ;;
esac
