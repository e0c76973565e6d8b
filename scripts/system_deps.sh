#!/usr/bin/env bash
# Debian packages the project needs at run time. Installed when running as root, otherwise named.
set -eu
PKGS="libusb-1.0-0"   # pyrealsense2 links against libusb
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: not a Debian system; make sure these libraries are installed:$missing" >&2; exit 0
fi
if [ "$(id -u)" = 0 ]; then
  echo "installing Debian packages:$missing"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
else
  echo "error: missing Debian packages:$missing. Run: sudo apt-get install -y$missing" >&2; exit 1
fi
