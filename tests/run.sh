#!/usr/bin/env bash
# Runs corepin's whole test suite on a fresh Debian machine: installs what
# the tests need when it is missing (curl; nginx with its Lua module for the
# stand-in API gateway; nats-server, redis-server and haproxy for the
# cluster tests; a Python venv with gripcontrol, pyzmq, tnetstring3,
# pubcontrol, websockets and django-grip; the npm clients @fanoutio/grip, wscat
# and sockjs-client; Chromium for the SockJS browser test),
# then `cargo test`. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# The zmq crate builds libzmq (C++) from source.
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
# TLS tests drive `openssl s_client` (and curl with --cacert).
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
# The stand-in API gateway (tests/gateway) runs Lua in nginx, as Kong does.
[ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] || need_apt+=(libnginx-mod-http-lua)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
# The SockJS browser test (tests/sockjs.rs) runs sockjs-client in headless Chromium.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# The EventSource browser test (tests/eventsource_browser.rs) cuts a stream with `ss -K`.
command -v ss >/dev/null 2>&1 || need_apt+=(iproute2)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# The cluster tests (tests/cluster.rs) run real brokers and a real balancer.
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "tests/run.sh: please install: ${need_apt[*]} (sudo apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
fi

venv=target/pyenv
# django_grip is looked up, not imported: importing it needs Django settings.
if ! "$venv/bin/python" -c 'import gripcontrol, pubcontrol, websockets, zmq, tnetstring, jwt, cryptography.hazmat.primitives.asymmetric.ec, importlib.util as u; assert u.find_spec("django_grip")' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r tests/clients/requirements.txt
fi
if [ ! -d tests/clients/node_modules/@fanoutio/grip ] || [ ! -d tests/clients/node_modules/wscat ] || [ ! -d tests/clients/node_modules/sockjs-client ]; then
  (cd tests/clients && npm install --no-audit --no-fund -q >/dev/null)
fi
export COREPIN_PYTHON="$PWD/$venv/bin/python"

cargo test --workspace --all-targets "$@"
