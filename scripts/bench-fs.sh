#!/usr/bin/env bash
# Filesystem benchmark: the same workloads on rgfs (mount.rgfs over an image
# file), on ext4 over a loop device on the same disk (the device limit), and
# on mergerfs over that ext4 (the FUSE limit), in one run.
#
#   sudo scripts/bench-fs.sh [WORKDIR]     (default: /var/tmp/rgfs-bench)
#
# Needs root (loop devices, drop_caches), fio, mergerfs, python3, e2fsprogs.
# Prints a markdown table; docs/BENCHMARKS.md records results with this
# command. Everything it mounts is unmounted and its images deleted at exit.
set -euo pipefail
# Binaries are built into $CARGO_TARGET_DIR when set (relative to where the
# caller stands, as cargo takes it).
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  CARGO_TARGET_DIR=$(realpath -m -- "$CARGO_TARGET_DIR")
  export CARGO_TARGET_DIR
fi
cd "$(dirname "$0")/.."
W=${1:-/var/tmp/rgfs-bench}
SIZE_GB=${RGFS_BENCH_GB:-4}
FILES=${RGFS_BENCH_FILES:-10000}

for t in fio mergerfs python3 mkfs.ext4 losetup mkfs.gfs2; do
  command -v "$t" >/dev/null || { echo "bench-fs: needs $t (apt-get install fio mergerfs e2fsprogs gfs2-utils)" >&2; exit 2; }
done
cargo build --release -p rgfs --bin mount-rgfs --quiet
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/mount-rgfs

mkdir -p "$W"
LOOP=""
cleanup() {
  set +e
  for m in "$W/mnt/mergerfs" "$W/mnt/rgfs" "$W/mnt/ext4"; do
    mountpoint -q "$m" && umount "$m"
  done
  [ -n "$LOOP" ] && losetup -d "$LOOP"
  # mount.rgfs writes back after the kernel unmount; wait for it to exit.
  for _ in $(seq 1 100); do pgrep -f "mount-rgfs $W/rgfs.img" >/dev/null || break; sleep 0.1; done
  rm -rf "$W/ext4.img" "$W/rgfs.img" "$W/mnt"
}
trap cleanup EXIT
mkdir -p "$W/mnt/ext4" "$W/mnt/mergerfs" "$W/mnt/rgfs"

truncate -s "${SIZE_GB}G" "$W/ext4.img"
mkfs.ext4 -q -F "$W/ext4.img"
LOOP=$(losetup -f --show "$W/ext4.img")
mount "$LOOP" "$W/mnt/ext4"
mkdir -p "$W/mnt/ext4/branch"
mergerfs -o cache.files=partial,dropcacheonclose=true,category.create=mfs,minfreespace=1M "$W/mnt/ext4/branch" "$W/mnt/mergerfs"

truncate -s "${SIZE_GB}G" "$W/rgfs.img"
mkfs.gfs2 -O -q -p lock_nolock -j 1 "$W/rgfs.img"
"$BIN" "$W/rgfs.img" "$W/mnt/rgfs"

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

seq_write() { # dir -> MB/s
  drop
  fio --name=sw --directory="$1" --rw=write --bs=1M --size=1G --ioengine=psync --end_fsync=1 \
      --output-format=json 2>/dev/null | python3 -c 'import json,sys; j=json.load(sys.stdin); print("%.0f" % (j["jobs"][0]["write"]["bw"]/1024))'
}
seq_read() {
  drop
  fio --name=sw --directory="$1" --rw=read --bs=1M --size=1G --ioengine=psync \
      --output-format=json 2>/dev/null | python3 -c 'import json,sys; j=json.load(sys.stdin); print("%.0f" % (j["jobs"][0]["read"]["bw"]/1024))'
  rm -f "$1"/sw.*
}
rand_fsync() { # 4 KiB random writes, fsync after each -> IOPS
  fio --name=rw --directory="$1" --rw=randwrite --bs=4k --size=64M --fsync=1 --ioengine=psync \
      --runtime=15 --time_based --output-format=json 2>/dev/null \
      | python3 -c 'import json,sys; j=json.load(sys.stdin); print("%.0f" % j["jobs"][0]["write"]["iops"])'
  rm -f "$1"/rw.*
}
meta() { # create, stat, unlink N files in one directory -> "c/s s/s u/s ls-l-ms"
  python3 - "$1/meta" "$FILES" <<'EOF'
import os, sys, time, subprocess
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
t = time.perf_counter()
for i in range(n):
    os.close(os.open(f"{d}/file-{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
c = n / (time.perf_counter() - t)
t = time.perf_counter()
for i in range(n):
    os.stat(f"{d}/file-{i:06d}")
s = n / (time.perf_counter() - t)
subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True)
t = time.perf_counter()
subprocess.run(["ls", "-l", d], stdout=subprocess.DEVNULL, check=True)
ls = (time.perf_counter() - t) * 1000
t = time.perf_counter()
for i in range(n):
    os.unlink(f"{d}/file-{i:06d}")
u = n / (time.perf_counter() - t)
os.rmdir(d)
print(f"{c:.0f} {s:.0f} {u:.0f} {ls:.0f}")
EOF
}

declare -A R
for fs in ext4 mergerfs rgfs; do
  dir="$W/mnt/$fs"; [ "$fs" = ext4 ] && dir="$W/mnt/ext4/branch"
  R[$fs,sw]=$(seq_write "$dir")
  R[$fs,sr]=$(seq_read "$dir")
  R[$fs,rf]=$(rand_fsync "$dir")
  read -r c s u l <<<"$(meta "$dir")"
  R[$fs,c]=$c; R[$fs,s]=$s; R[$fs,u]=$u; R[$fs,l]=$l
done

ratio() { python3 -c "print('%.2f' % ($1/$2))"; }
echo "| workload | ext4 (loop) | mergerfs | rgfs | rgfs / ext4 | rgfs / mergerfs |"
echo "|---|---|---|---|---|---|"
row() { echo "| $1 | ${R[ext4,$2]} | ${R[mergerfs,$2]} | ${R[rgfs,$2]} | $(ratio "${R[rgfs,$2]}" "${R[ext4,$2]}") | $(ratio "${R[rgfs,$2]}" "${R[mergerfs,$2]}") |"; }
row "sequential write 1 GiB, 1 MiB writes + fsync (MB/s)" sw
row "sequential read 1 GiB, cold cache (MB/s)" sr
row "4 KiB random writes, fsync each (IOPS)" rf
row "create $FILES files in one directory (files/s)" c
row "stat $FILES files (files/s)" s
row "unlink $FILES files (files/s)" u
row "ls -l of $FILES entries, cold cache (ms, lower is better)" l
