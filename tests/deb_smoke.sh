#!/usr/bin/env bash
# Debian package smoke test (CI runs it after the tests; README "Packaging").
#
# Builds the .deb with cargo-deb, installs it, checks what went where, runs
# the installed /usr/bin/corepin on the installed /etc/corepin/corepin.toml
# (only its addresses moved to free ports and a temporary socket): /health,
# a stream held through the built-in test target and two publishes (HTTP
# API, and the installed CLI over the control socket), SIGTERM and exit 0.
# Then purges the package and checks that nothing of it is left.
#
# Run it as root: `bash tests/deb_smoke.sh` (needs `cargo install cargo-deb
# --locked`). `bash tests/deb_smoke.sh --no-build` packages the existing
# target/release/corepin instead of running `cargo build --release`;
# `--profile dev` packages the dev profile's binary (target/debug/corepin,
# stripped), which is what CI does with the binary its tests just ran.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
say() { echo "deb_smoke: $*"; }
fail() {
  echo "deb_smoke: FAILED: $*" >&2
  [ -n "${work:-}" ] && [ -s "$work/err" ] && sed 's/^/  corepin stderr: /' "$work/err" >&2
  exit 1
}

build_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build_args+=(--no-build) ;;
    --profile)
      [ $# -ge 2 ] || fail "--profile needs a profile name"
      build_args+=(--profile "$2")
      shift
      ;;
    *) fail "unknown argument '$1' (only --no-build and --profile NAME)" ;;
  esac
  shift
done

[ "$(id -u)" = 0 ] || fail "run it as root: it installs and purges the corepin package"
command -v cargo-deb >/dev/null 2>&1 || fail "cargo-deb is missing: cargo install cargo-deb --locked"
command -v curl >/dev/null 2>&1 || fail "curl is missing: apt-get install curl"

# The package is machine-wide: one smoke test at a time on a shared host
# (a second one waits here instead of removing the first one's package).
lockdir=/run/lock
[ -d "$lockdir" ] || lockdir=/var/lock
exec 9>"$lockdir/corepin-deb-smoke.lock"
flock -w 900 9 || fail "another deb smoke test held $lockdir/corepin-deb-smoke.lock for 15 minutes"

# Never install over, nor purge, a corepin someone installed for real.
status=$(dpkg-query -W -f='${db:Status-Status}' corepin 2>/dev/null || true)
case "$status" in
  "" | not-installed) ;;
  *) fail "the corepin package is already on this machine ($status); this test installs and purges it, so it will not run over it (apt-get purge corepin first)" ;;
esac

work=$(mktemp -d)
chmod 755 "$work" # apt's download user reads the .deb from here
pid=""
stream_pid=""
installed=""
apt_opts=(-y -q -o DPkg::Lock::Timeout=300)
wants=/etc/systemd/system/multi-user.target.wants/corepin.service

cleanup() {
  [ -n "$stream_pid" ] && kill "$stream_pid" 2>/dev/null || true
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  if [ -n "$installed" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get purge "${apt_opts[@]}" corepin >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Waits up to 20 s for a command to succeed.
wait_for() {
  local what=$1
  shift
  local deadline=$((SECONDS + 20))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      fail "corepin exited while waiting for $what"
    fi
    sleep 0.05
  done
}

say "building the package (cargo deb${build_args[*]:+ ${build_args[*]}})"
cargo deb --locked "${build_args[@]}" --output "$work/" >"$work/build.log" 2>&1 ||
  { cat "$work/build.log" >&2; fail "cargo deb"; }
debs=("$work"/corepin_*.deb)
deb=${debs[0]}
[ -f "$deb" ] || fail "cargo deb wrote no $work/corepin_*.deb"
say "built $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB)"

say "installing it"
installed=yes
DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "$deb" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log" >&2; fail "apt-get install $deb"; }

# What went where.
for f in /usr/bin/corepin /etc/corepin/corepin.toml /usr/lib/systemd/system/corepin.service \
  /usr/share/doc/corepin/copyright /usr/share/doc/corepin/README.md; do
  dpkg -L corepin | grep -qx "$f" || fail "the package does not install $f"
  [ -e "$f" ] || fail "$f is missing after install"
done
dpkg-query -W -f='${Conffiles}\n' corepin | grep -q '^ /etc/corepin/corepin.toml ' ||
  fail "/etc/corepin/corepin.toml is not a conffile"
cmp -s /etc/corepin/corepin.toml config/debian.toml || fail "/etc/corepin/corepin.toml is not config/debian.toml"
grep -qx 'ExecStart=/usr/bin/corepin run --config /etc/corepin/corepin.toml' \
  /usr/lib/systemd/system/corepin.service || fail "the unit does not run the installed binary on the installed config"
# postinst enabled the unit (deb-systemd-helper works without a running
# systemd; starting it is skipped then).
[ -L "$wants" ] || fail "postinst did not enable corepin.service ($wants missing)"
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify /usr/lib/systemd/system/corepin.service ||
    fail "systemd-analyze verify corepin.service"
fi
/usr/bin/corepin check --config /etc/corepin/corepin.toml >"$work/check" 2>&1 ||
  { cat "$work/check" >&2; fail "corepin check on the installed config"; }
say "installed: binary, conffile, unit (enabled), docs; corepin check: $(head -1 "$work/check")"

# The installed binary on the installed config, on free ports.
/usr/bin/corepin run --config /etc/corepin/corepin.toml --listen 127.0.0.1:0 \
  --control-http 127.0.0.1:0 --control-socket "$work/corepin.sock" \
  --ready-file "$work/ready.json" </dev/null >"$work/out" 2>"$work/err" &
pid=$!
# The bound addresses, written (whole) once every core accepts.
wait_for "corepin to start" test -s "$work/ready.json"
port_of() {
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]][0].rsplit(":", 1)[1])' \
    "$work/ready.json" "$1"
}
port=$(port_of listen)
cport=$(port_of control_http)
[ -n "$port" ] && [ -n "$cport" ] || fail "no client or control port in $work/ready.json"
say "running: clients on $port, control http on $cport"

code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$cport/health")
[ "$code" = 200 ] || fail "GET /health answered $code"

curl -sSN --max-time 60 "http://127.0.0.1:$port/stream?channel=smoke" >"$work/stream" 2>"$work/stream.err" &
stream_pid=$!
streams() {
  curl -sS --max-time 5 "http://127.0.0.1:$cport/metrics" |
    awk '/^corepin_connections\{kind="stream"/ { n += $2 } END { print n + 0 }'
}
held() { [ "$(streams)" -ge 1 ]; }
wait_for "the stream to be held" held

answer=$(curl -sS --max-time 5 -d '{"items":[{"channel":"smoke","formats":{"http-stream":{"content":"over http\n"}}}]}' \
  "http://127.0.0.1:$cport/publish/")
[ "$answer" = Published ] || fail "POST /publish/ answered '$answer'"
/usr/bin/corepin publish smoke "over the socket" --socket "$work/corepin.sock" >/dev/null ||
  fail "corepin publish over the control socket"
got_both() { grep -qx 'over http' "$work/stream" && grep -qx 'over the socket' "$work/stream"; }
wait_for "both publishes on the stream" got_both
say "GET /health 200; stream held; both publishes delivered"

kill -TERM "$pid"
deadline=$((SECONDS + 20))
while kill -0 "$pid" 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || fail "corepin did not exit within 20 s of SIGTERM"
  sleep 0.05
done
rc=0
wait "$pid" || rc=$?
pid=""
[ "$rc" = 0 ] || fail "corepin exited $rc on SIGTERM"
src=0
wait "$stream_pid" || src=$?
stream_pid=""
[ "$src" = 0 ] || fail "the stream did not end cleanly on shutdown (curl exit $src)"
say "SIGTERM: corepin exited 0, the stream ended cleanly"

say "purging the package"
DEBIAN_FRONTEND=noninteractive apt-get purge "${apt_opts[@]}" corepin >"$work/purge.log" 2>&1 ||
  { cat "$work/purge.log" >&2; fail "apt-get purge corepin"; }
installed=""
for f in /usr/bin/corepin /etc/corepin /usr/lib/systemd/system/corepin.service /usr/share/doc/corepin "$wants"; do
  if [ -e "$f" ] || [ -L "$f" ]; then fail "$f is left after purge"; fi
done
say "ok in $((SECONDS - started)) s (purged: nothing of the package is left)"
