#!/usr/bin/env bash
# Installs the rgfs binaries under their real names so mount(8) and friends
# find them: `mount -t rgfs DEV DIR -o opts` runs /sbin/mount.rgfs.
#
#   sudo scripts/install.sh [SBINDIR]               (default: /sbin)
#   sudo scripts/install.sh --uninstall [SBINDIR]   removes what install put there
#
# Builds in release mode first (into $CARGO_TARGET_DIR when set, as cargo
# does). Cargo cannot name binaries with dots, so target/release/mount-rgfs
# is installed as mount.rgfs, mkfs-rgfs as mkfs.rgfs, fsck-rgfs as
# fsck.rgfs, umount-fuse-rgfs as umount.fuse.rgfs (umount(8) runs it for
# fuse.rgfs mounts, so `umount DIR` returns once the volume is written back).
# Binaries are stripped. mount.fuse.rgfs is a link to mount.rgfs, so
# `mount -t fuse.rgfs` (the type mountinfo shows) works too. The lock
# manager's rgfs-dlmd and rgfs-dlm keep their names.
set -euo pipefail
uninstall=false
if [ "${1:-}" = "--uninstall" ]; then
  uninstall=true
  shift
fi
dest=${1:-/sbin}
# A relative CARGO_TARGET_DIR is relative to where the caller stands.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  CARGO_TARGET_DIR=$(realpath -m -- "$CARGO_TARGET_DIR")
  export CARGO_TARGET_DIR
fi
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-$PWD/target}/release

# The one list: built name:installed name.
binaries=(
  mount-rgfs:mount.rgfs
  mkfs-rgfs:mkfs.rgfs
  fsck-rgfs:fsck.rgfs
  umount-fuse-rgfs:umount.fuse.rgfs
  rgfs-dlmd:rgfs-dlmd
  rgfs-dlm:rgfs-dlm
)
# Links: link name:target name.
links=(mount.fuse.rgfs:mount.rgfs)

if $uninstall; then
  for entry in "${binaries[@]}" "${links[@]}"; do
    # Binaries are "built:installed"; links are "link:target".
    IFS=: read -r _ name <<<"$entry"
    case " ${links[*]} " in *" $entry "*) name=${entry%%:*} ;; esac
    if [ -e "$dest/$name" ] || [ -L "$dest/$name" ]; then
      rm -f -- "$dest/$name"
      echo "removed $dest/$name"
    fi
  done
  exit 0
fi

cargo build --release --workspace --quiet
# Every binary must be there before the first is installed: a half
# install would mix two versions.
for entry in "${binaries[@]}"; do
  src=$bin/${entry%%:*}
  if [ ! -x "$src" ]; then
    echo "install.sh: $src was not built" >&2
    exit 1
  fi
done
install -d "$dest"
for entry in "${binaries[@]}"; do
  IFS=: read -r built name <<<"$entry"
  src=$bin/$built
  install -s -m 0755 "$src" "$dest/$name"
  echo "installed $dest/$name"
done
for entry in "${links[@]}"; do
  ln -sfn "${entry##*:}" "$dest/${entry%%:*}"
  echo "linked $dest/${entry%%:*} -> ${entry##*:}"
done
