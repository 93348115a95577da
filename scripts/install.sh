#!/usr/bin/env bash
# Installs the rgfs binaries under their real names where mkfs(8), fsck(8)
# and mount(8) look for helpers: /sbin/mkfs.rgfs, /sbin/fsck.rgfs,
# /sbin/mount.rgfs (cargo cannot put a dot in a binary name).
#
#   scripts/install.sh [PREFIX]     (default PREFIX: / ; binaries go to PREFIX/sbin)
# Builds the release binaries first; installs those that exist.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-/}
cargo build --release --workspace --quiet
mkdir -p "$prefix/sbin"
for pair in mkfs-rgfs:mkfs.rgfs fsck-rgfs:fsck.rgfs mount-rgfs:mount.rgfs; do
  built=target/release/${pair%%:*}
  name=${pair##*:}
  if [ -x "$built" ]; then
    install -m 0755 "$built" "$prefix/sbin/$name"
    echo "installed $prefix/sbin/$name"
  fi
done
