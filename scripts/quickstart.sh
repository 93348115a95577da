#!/usr/bin/env bash
# The main job of rgfs on one machine, from a fresh checkout: build, make a
# GFS2 filesystem on an image file, check it with the real fsck.gfs2 when it
# is installed, and mount it with mount.rgfs (FUSE; needs root or a user
# allowed to use fusermount3).
#
#   scripts/quickstart.sh [IMAGE] [SIZE] [MOUNTPOINT]
#       (defaults: rgfs-demo/rgfs.img 1G rgfs-demo/mnt, relative to the checkout)
# Unmount with: umount MOUNTPOINT
#
# Nothing is destroyed without asking: an image that already holds a clean
# rgfs/GFS2 volume is reused (reformatted only if you say so on a terminal),
# any other existing image is reformatted only when you say so, and a
# non-empty mount point is refused. Without a terminal there is nobody to
# ask: a clean volume is reused, everything else is refused. Binaries are
# built into $CARGO_TARGET_DIR when set, as cargo does.
set -euo pipefail
# A relative CARGO_TARGET_DIR is relative to where the caller stands.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  CARGO_TARGET_DIR=$(realpath -m -- "$CARGO_TARGET_DIR")
  export CARGO_TARGET_DIR
fi
cd "$(dirname "$0")/.."

image=${1:-rgfs-demo/rgfs.img}
size=${2:-1G}
mnt=${3:-rgfs-demo/mnt}
die() { echo "quickstart: $*" >&2; exit 1; }
# Asks a yes/no question on the terminal; no terminal means no.
ask() {
  local answer
  [ -t 0 ] || return 1
  read -r -p "$1 [y/N] " answer || return 1
  [ "$answer" = y ] || [ "$answer" = Y ] || [ "$answer" = yes ]
}

if mountpoint -q "$mnt" 2>/dev/null; then
  die "$mnt is mounted; umount it first (mkfs would destroy a live filesystem)"
fi
if [ -d "$mnt" ] && [ -n "$(ls -A "$mnt")" ]; then
  ask "$mnt is not empty; mount over it (hiding its files until umount)?" \
    || die "$mnt is not empty; give an empty directory as the third argument"
fi

echo "== building (release)"
cargo build --release --workspace --quiet
bin=${CARGO_TARGET_DIR:-target}/release

mkdir -p "$(dirname "$image")"
format=true
if [ -s "$image" ]; then
  if "$bin/fsck-rgfs" -n -q "$image" >/dev/null 2>&1; then
    if ask "$image already holds a clean filesystem; reformat it (destroying its files)?"; then
      echo "== reformatting"
    else
      echo "== reusing the filesystem on $image"
      format=false
    fi
  else
    ask "$image exists and is not a clean rgfs volume; format it (destroying its contents)?" \
      || die "$image exists and is not a clean rgfs volume: not touching it (remove it, or give another IMAGE)"
  fi
else
  truncate -s "$size" "$image"
fi

if $format; then
  echo "== making the filesystem on $image"
  "$bin/mkfs-rgfs" -O -p lock_nolock -j 1 "$image"
fi

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
