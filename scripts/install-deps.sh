#!/bin/sh
# install-deps.sh — install the Debian packages fedslim needs to build, test, benchmark and run its demo.
# Idempotent and non-interactive: it installs only what is missing and does nothing when all is present.
# Needs root (or sudo) only when something is missing.
set -eu

PACKAGES="
build-essential cmake pkg-config clang libclang-rt-14-dev libomp-14-dev valgrind
libzmq3-dev libsodium-dev libmsgpack-dev
libopenblas-dev libopenblas0-openmp liblapacke-dev
libsystemd-dev systemd libinih-dev libjansson-dev
libpng-dev libjpeg62-turbo-dev zlib1g-dev
libcmocka-dev
dataset-fashion-mnist
python3 python3-torch python3-numpy
iproute2 scdoc lintian dpkg-dev file
"

missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
        "install ok installed") ;;
        *) missing="$missing $p" ;;
    esac
done

if [ -z "$missing" ]; then
    exit 0
fi

echo "install-deps: installing:$missing"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-deps: missing packages:$missing; run this script as root" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
