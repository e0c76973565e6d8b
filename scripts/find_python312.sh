#!/usr/bin/env bash
# Print the path of a Python 3.12 interpreter, or exit 1. Order: PATH, pyenv, common prefixes.
set -u
is312() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; }
for cand in python3.12 python3; do
  p=$(command -v "$cand" 2>/dev/null) && is312 "$p" && { echo "$p"; exit 0; }
done
if command -v pyenv >/dev/null 2>&1; then
  prefix=$(pyenv prefix 3.12 2>/dev/null || true)
  [ -z "$prefix" ] && prefix=$(ls -d "$(pyenv root)"/versions/3.12* 2>/dev/null | sort -V | tail -1)
  [ -n "$prefix" ] && is312 "$prefix/bin/python3.12" && { echo "$prefix/bin/python3.12"; exit 0; }
fi
for p in /usr/bin/python3.12 /usr/local/bin/python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
  [ -x "$p" ] && is312 "$p" && { echo "$p"; exit 0; }
done
exit 1
