#!/usr/bin/env bash
# Installs the rgfs binaries under their real names so mount(8) and friends
# find them: `mount -t rgfs DEV DIR -o opts` runs /sbin/mount.rgfs.
#
#   sudo scripts/install.sh [SBINDIR]        (default: /sbin)
#
# Builds in release mode first. Cargo cannot name binaries with dots, so
# target/release/mount-rgfs is installed as mount.rgfs, mkfs-rgfs as
# mkfs.rgfs, fsck-rgfs (when built) as fsck.rgfs.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-/sbin}
cargo build --release --workspace --quiet
install -d "$dest"
for pair in mount-rgfs:mount.rgfs mkfs-rgfs:mkfs.rgfs fsck-rgfs:fsck.rgfs; do
  src=target/release/${pair%%:*}
  dst=$dest/${pair##*:}
  if [ -x "$src" ]; then
    install -m 0755 "$src" "$dst"
    echo "installed $dst"
  fi
done
