#!/usr/bin/env bash
# The main job of rgfs on one machine, from a fresh checkout: build, make a
# GFS2 filesystem on an image file, check it with the real fsck.gfs2 when it
# is installed, and mount it with mount.rgfs (FUSE; needs root or a user
# allowed to use fusermount3).
#
#   scripts/quickstart.sh [IMAGE] [SIZE] [MOUNTPOINT]
#       (defaults: rgfs-demo/rgfs.img 1G rgfs-demo/mnt)
# Unmount with: umount MOUNTPOINT
set -euo pipefail
cd "$(dirname "$0")/.."

image=${1:-rgfs-demo/rgfs.img}
size=${2:-1G}
mnt=${3:-rgfs-demo/mnt}
if mountpoint -q "$mnt" 2>/dev/null; then
  echo "quickstart: $mnt is mounted; umount it first (mkfs would destroy a live filesystem)" >&2
  exit 1
fi

echo "== building (release)"
cargo build --release --workspace --quiet
bin=target/release

mkdir -p "$(dirname "$image")"
if [ ! -e "$image" ]; then
  truncate -s "$size" "$image"
fi

echo "== making the filesystem on $image"
"$bin/mkfs-rgfs" -O -p lock_nolock -j 1 "$image"

if command -v fsck.gfs2 >/dev/null 2>&1; then
  echo "== checking it with fsck.gfs2 -n"
  fsck.gfs2 -n "$image" >/dev/null && echo "fsck.gfs2: clean"
else
  echo "(fsck.gfs2 not installed: apt-get install gfs2-utils to check the image)"
fi

if [ -e /dev/fuse ] && command -v fusermount3 >/dev/null 2>&1; then
  mkdir -p "$mnt"
  echo "== mounting $image on $mnt"
  "$bin/mount-rgfs" "$image" "$mnt"
  echo "mounted: $(df -h "$mnt" | tail -1)"
  echo "unmount with: umount $mnt"

else
  echo "(no /dev/fuse or fusermount3: apt-get install fuse3 to mount the image)"
fi
