#!/usr/bin/env bash
# Installs the rgfs binaries under their real names so mount(8) and friends
# find them: `mount -t rgfs DEV DIR -o opts` runs /sbin/mount.rgfs.
#
#   sudo scripts/install.sh [SBINDIR]        (default: /sbin)
#
# Builds in release mode first. Cargo cannot name binaries with dots, so
# target/release/mount-rgfs is installed as mount.rgfs, mkfs-rgfs as
# mkfs.rgfs, fsck-rgfs as fsck.rgfs, umount-fuse-rgfs as umount.fuse.rgfs
# (umount(8) runs it for fuse.rgfs mounts, so `umount DIR` returns once the
# volume is written back). The lock manager's rgfs-dlmd and rgfs-dlm keep
# their names.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-/sbin}
cargo build --release --workspace --quiet
install -d "$dest"
for pair in mount-rgfs:mount.rgfs mkfs-rgfs:mkfs.rgfs fsck-rgfs:fsck.rgfs \
            umount-fuse-rgfs:umount.fuse.rgfs rgfs-dlmd:rgfs-dlmd rgfs-dlm:rgfs-dlm; do
  src=target/release/${pair%%:*}
  dst=$dest/${pair##*:}
  if [ ! -x "$src" ]; then
    echo "install.sh: $src was not built" >&2
    exit 1
  fi
  install -m 0755 "$src" "$dst"
  echo "installed $dst"
done
