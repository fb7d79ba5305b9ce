#!/bin/sh
# test_units.sh BUILD_DIR "PROGRAMS" — checks the systemd units as installed by this build tree.
#
# systemd 252's `systemd-analyze verify` wants every ExecStart= binary to exist and, by default, every
# Documentation=man: page to be found by man(1); it also reports unknown or unparsable settings on
# stderr while still exiting 0. So the test
#   1. installs the build tree into a temporary root (DESTDIR=ROOT cmake --install BUILD --prefix /usr),
#      next to a copy of the host's /usr/lib/systemd/system (verify --root= resolves units, their
#      dependencies such as network-online.target, and ExecStart= paths inside ROOT only);
#   2. runs `systemd-analyze verify --root=ROOT --generators=no` with MANPATH pointing into ROOT and
#      fails on a non-zero exit OR on any output;
#   3. runs `systemd-analyze security --offline=yes --threshold=20` on each unit. On 252 --threshold
#      is compared with the internal 0..100 exposure, i.e. ten times the printed 0.0..10.0 figure
#      (--threshold=2 would reject a unit rated 1.4); the printed figure is also checked (<= 2.0);
#   4. checks the settings verify cannot judge (paths, user, credentials, directories);
#   5. proves that the harness can fail: a unit with a misspelt value must make verify print, and
#      a bare Type=notify unit must exceed the threshold.
# ExecStart= binaries whose targets do not exist yet in this tree are replaced in ROOT by a placeholder
# (said in the output); once a target exists its installed binary is required.
set -eu

build=${1:?usage: test_units.sh BUILD_DIR PROGRAMS}
programs=${2-}
src=${FS_SOURCE_DIR:?FS_SOURCE_DIR not set}

fail() {
    echo "test_units: FAIL: $*" >&2
    exit 1
}
note() { echo "test_units: $*"; }

command -v systemd-analyze >/dev/null 2>&1 || fail "systemd-analyze not found (package systemd)"

work=$(mktemp -d "${TMPDIR:-/tmp}/fs-units.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
root=$work/root
unitdir=$root/usr/lib/systemd/system

# --- 1. the temporary root ---------------------------------------------------------------------
mkdir -p "$root/usr/lib/systemd" "$root/usr/bin"
ln -s usr/bin "$root/bin"
ln -s usr/lib "$root/lib"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
if ! DESTDIR="$root" cmake --install "$build" --prefix /usr >"$work/install.log" 2>&1; then
    cat "$work/install.log" >&2
    fail "cmake --install $build failed"
fi

for u in fedslim-coordinator.service fedslim-agent.service; do
    [ -f "$unitdir/$u" ] || fail "$u not installed to /usr/lib/systemd/system"
    cmp -s "$unitdir/$u" "$src/packaging/systemd/$u" || fail "installed $u differs from packaging/systemd/$u"
done
[ -f "$root/usr/lib/sysusers.d/fedslim.conf" ] || fail "sysusers file not installed to /usr/lib/sysusers.d/fedslim.conf"

for p in $programs; do
    [ -x "$root/usr/bin/$p" ] || fail "program $p (a target of this tree) not installed to /usr/bin"
done
for d in fedslim-coordinator fedslim-agent; do
    case " $programs " in
    *" $d "*) ;;
    *)
        note "NOTE: target $d does not exist yet; verifying its unit against a placeholder /usr/bin/$d"
        printf '#!/bin/sh\necho "placeholder for verify" >&2\nexit 1\n' >"$root/usr/bin/$d"
        chmod 0755 "$root/usr/bin/$d"
        ;;
    esac
done
[ -x /bin/kill ] || fail "/bin/kill (package procps) missing: ExecReload= uses it"
cp /bin/kill "$root/usr/bin/kill"      # ExecReload=/bin/kill -HUP $MAINPID

# --- 2. verify ----------------------------------------------------------------------------------
man_opt=--man=no
if [ -d "$build/man" ]; then
    for page in man1/fedslim.1 man1/fedslimctl.1 man5/fedslim.conf.5 man8/fedslim-coordinator.8 \
                man8/fedslim-agent.8; do
        [ -f "$root/usr/share/man/$page.gz" ] || fail "man page /usr/share/man/$page.gz not installed"
    done
    if command -v man >/dev/null 2>&1; then
        man_opt=--man=yes
    else
        note "NOTE: man(1) not installed: Documentation= links checked by file name only"
    fi
else
    note "NOTE: scdoc was not found at configure time: no man pages, verify runs with --man=no"
fi

verify() {
    MANPATH="$root/usr/share/man" systemd-analyze verify --root="$root" --generators=no "$man_opt" "$@" 2>&1
}

set +e
out=$(verify fedslim-coordinator.service fedslim-agent.service)
rc=$?
set -e
if [ $rc -ne 0 ] || [ -n "$out" ]; then
    printf '%s\n' "$out" >&2
    fail "systemd-analyze verify: exit $rc, output above (any output counts as a failure)"
fi
note "systemd-analyze verify ($man_opt): both units clean"

# --- 3. security exposure -----------------------------------------------------------------------
for u in fedslim-coordinator.service fedslim-agent.service; do
    set +e
    out=$(systemd-analyze security --offline=yes --threshold=20 "$unitdir/$u" 2>&1)
    rc=$?
    set -e
    score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9.]*\).*/\1/p')
    [ -n "$score" ] || { printf '%s\n' "$out" >&2; fail "no exposure level printed for $u"; }
    note "exposure $u: $score (limit 2.0)"
    [ $rc -eq 0 ] || { printf '%s\n' "$out" | grep -v '^✓' >&2; fail "$u: exposure $score over the threshold"; }
    awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "$u: exposure $score > 2.0"
done

# --- 4. settings verify does not judge ----------------------------------------------------------
has() {  # has UNIT LINE: the unit contains exactly this line
    grep -qxF "$2" "$unitdir/$1" || fail "$1: missing '$2'"
}
for role in coordinator agent; do
    u=fedslim-$role.service
    has "$u" "Type=notify"
    has "$u" "ExecStart=/usr/bin/fedslim-$role --config /etc/fedslim/$role.conf"
    has "$u" 'ExecReload=/bin/kill -HUP $MAINPID'
    has "$u" "Restart=on-failure"
    has "$u" "User=fedslim"
    has "$u" "Group=fedslim"
    has "$u" "LoadCredential=$role.key:/etc/fedslim/keys/$role.key"
    has "$u" "StateDirectory=fedslim"
    has "$u" "ConfigurationDirectory=fedslim"
    has "$u" "ProtectSystem=strict"
    has "$u" "PrivateUsers=yes"
    has "$u" "SystemCallFilter=~@privileged"
    grep -q '^WatchdogSec=[1-9]' "$unitdir/$u" || fail "$u: no WatchdogSec="
    grep -q '^StartLimitIntervalSec=[1-9]' "$unitdir/$u" || fail "$u: no StartLimitIntervalSec="
    grep -q '^StartLimitBurst=[1-9]' "$unitdir/$u" || fail "$u: no StartLimitBurst="
    # The daemon's default secret_key is $CREDENTIALS_DIRECTORY/<role>.key: the names must agree.
    if grep -rqs 'CREDENTIALS_DIRECTORY' "$src/daemon" "$src/coordinator" "$src/agent"; then
        grep -rqsF "CREDENTIALS_DIRECTORY}/$role.key" "$src/daemon" "$src/coordinator" "$src/agent" ||
            fail "the daemon sources do not default to \$CREDENTIALS_DIRECTORY/$role.key (LoadCredential name of $u)"
    fi
done
has fedslim-coordinator.service "RuntimeDirectory=fedslim"
# Stopping the agent must not remove /run/fedslim (the coordinator's control socket) on a host
# that runs both.
if grep -q '^RuntimeDirectory=fedslim$' "$unitdir/fedslim-agent.service"; then
    fail "fedslim-agent.service: RuntimeDirectory=fedslim would delete the coordinator's /run/fedslim"
fi
grep -qE '^u fedslim - ' "$root/usr/lib/sysusers.d/fedslim.conf" || fail "sysusers: no 'u fedslim -' line"

# fedslim.conf(5) documents every key of the daemons' configuration schemas (daemon/config_*.c).
keys=$(cat "$src"/daemon/config_*.c "$src"/daemon/config_internal.h 2>/dev/null | sed -n 's/.*\.key = "\([a-z_]*\)".*/\1/p' | sort -u)
if [ -n "$keys" ]; then
    n=0
    for k in $keys; do
        grep -qF "*$k* =" "$src/packaging/man/fedslim.conf.5.scd" ||
            fail "fedslim.conf(5) (packaging/man/fedslim.conf.5.scd) does not document key '$k'"
        n=$((n + 1))
    done
    note "fedslim.conf(5) documents all $n configuration keys"
else
    note "NOTE: no daemon/config_*.c yet: fedslim.conf(5) key list not cross-checked"
fi

# --- 5. the harness itself can fail -------------------------------------------------------------
sed -e 's/^ProtectSystem=strict$/ProtectSystem=stric/' "$unitdir/fedslim-coordinator.service" \
    >"$unitdir/fs-selfcheck.service"
out=$(verify fs-selfcheck.service || true)
case "$out" in
*stric*) ;;
*) fail "self-check: verify did not report a misspelt ProtectSystem= value (got: $out)" ;;
esac
printf '[Service]\nType=notify\nExecStart=/usr/bin/fedslim-coordinator\n' >"$work/bare.service"
if systemd-analyze security --offline=yes --threshold=20 "$work/bare.service" >/dev/null 2>&1; then
    fail "self-check: an unhardened unit passed --threshold=20"
fi
note "self-checks: a misspelt value and an unhardened unit are caught"
note "PASS"
