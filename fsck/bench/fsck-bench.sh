#!/usr/bin/env bash
# fsck benchmark: a 10 GiB GFS2 volume holding 100,000 files (100
# directories of 1,000 files, 0-8 KB each), checked by fsck.gfs2 -n and
# fsck.rgfs -n, three runs each; prints wall time and peak memory.
#
# Usage: fsck/bench/fsck-bench.sh [WORKDIR] (default: a temporary dir).
# Needs gfs2-utils and GNU time (/usr/bin/time). Builds the release
# binaries first. The image is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-$(mktemp -d)}
img="$work/bench-10g.img"
files=${FILES:-100000}
per_dir=${PER_DIR:-1000}
runs=${RUNS:-3}

cargo build --release -q -p rgfs-fsck --features populate --bins
bin=target/release

rm -f "$img"
truncate -s 10G "$img"
mkfs.gfs2 -O -q -p lock_nolock -j 2 "$img"
start=$(date +%s.%N)
"$bin/rgfs-populate" "$img" files "$files" "$per_dir"
end=$(date +%s.%N)
echo "populated $files files in $(echo "$end - $start" | bc) s; image uses $(du -h "$img" | cut -f1) on disk"

measure() {
  local name=$1; shift
  for i in $(seq "$runs"); do
    # Drop nothing from the page cache (no root assumption): runs after the
    # first are warm for both tools alike.
    /usr/bin/time -f "$name run $i: %e s, max RSS %M KiB, exit %x" "$@" >/dev/null 2>"$work/time.txt" || true
    tail -1 "$work/time.txt"
  done
}
measure "fsck.gfs2 -n" fsck.gfs2 -n "$img"
measure "fsck.rgfs -n" "$bin/fsck-rgfs" -n "$img"
measure "fsck.gfs2 -y" fsck.gfs2 -y "$img"
measure "fsck.rgfs -y" "$bin/fsck-rgfs" -y "$img"
rm -f "$img" "$work/time.txt"
