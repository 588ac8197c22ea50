#!/bin/sh
# Runs a command in the stage image's unpacked tree with a pod's restrictions, without a container runtime:
# a private mount namespace in which the tree is a read-only bind mount (so is everything in it but /work and
# /images), /input and the Secret directories are read-only binds, /work and /images writable binds of host
# directories, /dev a tmpfs with null, zero, full, random, urandom and a writable termination-log, /proc mounted
# (sevimage's in-memory copies are /proc/self/fd/N); then chroot, and setpriv to the image's user 65532 with
# no-new-privs, an empty bounding set and no inheritable capabilities, an environment of only the VAR=VALUE
# given, and CWD as the working directory. Prints the command's stdout; its stderr goes to stderr.
#
#   run-in-stage-tree.sh ROOTFS INPUT IMAGES SECRETS WORK CWD [VAR=VALUE ...] -- COMMAND [ARG ...]
#
# SECRETS holds passphrase/ and new-passphrase/ (mounted at /secrets/...). Needs root (unshare, mount, chroot).
# ROOTFS must be a tree this script may add mount points to (an unpacked copy: umoci unpack).
set -eu
[ $# -ge 7 ] || { echo "usage: run-in-stage-tree.sh ROOTFS INPUT IMAGES SECRETS WORK CWD [VAR=VALUE ...] -- COMMAND..." >&2; exit 2; }
if [ "${RUN_IN_STAGE_TREE_INNER:-}" != 1 ]; then
    root=$1
    # Mount points, made while the tree is still writable (an image tree has /dev, /proc and /work; the rest are the pod's volumes).
    mkdir -p "$root/input" "$root/images" "$root/secrets/passphrase" "$root/secrets/new-passphrase" "$root/work" "$root/dev" "$root/proc"
    RUN_IN_STAGE_TREE_INNER=1 exec unshare --mount --propagation private "$0" "$@"
fi
root=$1 input=$2 images=$3 secrets=$4 work=$5 cwd=$6
shift 6
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount --bind "$input" "$root/input"; mount -o remount,bind,ro "$root/input"
mount --bind "$secrets/passphrase" "$root/secrets/passphrase"; mount -o remount,bind,ro "$root/secrets/passphrase"
mount --bind "$secrets/new-passphrase" "$root/secrets/new-passphrase"; mount -o remount,bind,ro "$root/secrets/new-passphrase"
mount --bind "$images" "$root/images"
mount --bind "$work" "$root/work"
mount -t tmpfs -o mode=0755,size=1m tmpfs "$root/dev"
for node in null zero full random urandom; do
    : >"$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
: >"$root/dev/termination-log"
chmod 0666 "$root/dev/termination-log"
mount -t proc proc "$root/proc"
variables=
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    variables="$variables $1"
    shift
done
[ "${1:-}" = "--" ] || { echo "run-in-stage-tree: no -- before the command" >&2; exit 2; }
shift
# shellcheck disable=SC2086
exec chroot "$root" /usr/bin/setpriv --reuid=65532 --regid=65532 --clear-groups --no-new-privs --bounding-set=-all \
    --inh-caps=-all -- /usr/bin/env -i $variables /bin/sh -c 'cd "$0" && exec "$@"' "$cwd" "$@"
