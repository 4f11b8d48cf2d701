#!/usr/bin/env bash
# Put Postfix's queue and mqd's benchmark directories on one fresh ext4 with a journal (mkfs's
# default, as on a real server), loop-mounted from an image file, for a side-by-side run on a
# machine whose own filesystem has none (this project's VM: creating a file there costs up to
# ~1 ms of kernel time in a directory with many recently deleted files; see
# docs/performance.md). Needs root.
#
#   sudo benchmarks/journaled-fs.sh up      # prints the TMPDIR / BASE to run the scripts with
#   sudo benchmarks/journaled-fs.sh down    # Postfix's own queue back, the image removed
set -euo pipefail
IMG="${IMG:-/var/tmp/mqd-bench-ext4.img}"
MNT="${MNT:-/mnt/mqd-bench}"
SIZE="${SIZE:-8G}"
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

case "${1:-}" in
  up)
    mountpoint -q "$MNT" && { echo "$MNT is mounted already ('$0 down' first)" >&2; exit 1; }
    postfix stop >/dev/null 2>&1 || true
    truncate -s "$SIZE" "$IMG"
    mkfs.ext4 -q -F -O has_journal "$IMG"  # mkfs's default, said here: it is the point
    mkdir -p "$MNT"
    mount -o loop "$IMG" "$MNT"
    cp -a /var/spool/postfix "$MNT/postfix"
    mount --bind "$MNT/postfix" /var/spool/postfix
    mkdir -p "$MNT/tmp" "$MNT/spool"
    echo "ext4 with a journal at $MNT; Postfix's queue is on it. Run, for example:"
    echo "  TMPDIR=$MNT/tmp MQD=\$PWD/.venv/bin/mqd N=10000 ../shared/bench/side-by-side.sh"
    echo "  BASE=$MNT/spool benchmarks/side-by-side-e2e.sh"
    ;;
  down)
    postfix stop >/dev/null 2>&1 || true
    if mountpoint -q /var/spool/postfix; then umount /var/spool/postfix; fi
    if mountpoint -q "$MNT"; then umount "$MNT"; fi
    rm -f "$IMG"
    echo "Postfix's queue is /var/spool/postfix on the root filesystem again; $IMG removed"
    ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
