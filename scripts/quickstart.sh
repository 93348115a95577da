#!/usr/bin/env bash
# The main job of rgfs on one machine, from a fresh checkout: build, make a
# GFS2 filesystem on an image file, and check it with the real fsck.gfs2
# when it is installed.
#
#   scripts/quickstart.sh [IMAGE] [SIZE]      (defaults: rgfs-demo/rgfs.img 1G)
set -euo pipefail
cd "$(dirname "$0")/.."

image=${1:-rgfs-demo/rgfs.img}
size=${2:-1G}

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
