#!/bin/sh
# Builds sevimage's built-in demo root tree and prints its path on stdout.
#
#   scripts/demo-rootfs.sh [DEST]        DEST defaults to .cache/demo-rootfs in the repository
#
# The tree:
#   /boot/vmlinuz-VERSION       Debian's kernel, taken from linux-image-VERSION-amd64 (downloaded with
#                               apt-get download and unpacked with dpkg-deb -x, never installed)
#   /boot/initrd.img-VERSION    gzip'ed newc cpio: busybox (busybox-static) and an /init that prints
#                               "SEVIMAGE-BOOT-OK <uname -r>" on the console and powers the VM off
#   /etc/hostname, /usr/lib/os-release (+ /etc/os-release symlink), /etc/issue (+ /etc/issue.net hard
#   link), empty /proc /sys /dev /run /tmp /root, /etc/sevimage-demo (the recipe version of this script)
#
# Idempotent: a tree built by the same recipe is reused without network access. Downloads are cached
# in .cache/debs. Needs no root: the initramfs is written with `cpio --owner=0:0`.
set -eu

recipe=1                                   # bump when the tree's contents change
marker=SEVIMAGE-BOOT-OK

here=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-"$here/.cache/demo-rootfs"}
debs=${SEVIMAGE_DEB_CACHE:-"$here/.cache/debs"}

say() { printf 'demo-rootfs: %s\n' "$*" >&2; }
die() { printf 'demo-rootfs: error: %s\n' "$*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg-deb cpio gzip; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

# One build at a time (tests and the README's command may run this concurrently).
mkdir -p "$(dirname "$dest")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$(dirname "$dest")/.$(basename "$dest").lock"
    flock 9
fi

# A tree already built by this recipe: done.
if [ -f "$dest/etc/sevimage-demo" ] && [ "$(cat "$dest/etc/sevimage-demo")" = "recipe $recipe" ] \
   && ls "$dest"/boot/vmlinuz-* >/dev/null 2>&1 && ls "$dest"/boot/initrd.img-* >/dev/null 2>&1; then
    printf '%s\n' "$dest"
    exit 0
fi

# The versioned kernel package that linux-image-amd64 points at (e.g. linux-image-6.1.0-56-amd64).
kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n 1
}
package=$(kernel_package)
if [ -z "$package" ]; then
    say "apt has no package lists; running apt-get update"
    apt-get update >&2 || die "apt-get update failed"
    package=$(kernel_package)
fi
[ -n "$package" ] || die "cannot find the kernel package that linux-image-amd64 depends on"
version=${package#linux-image-}

mkdir -p "$debs"
# Downloads one package's .deb into the cache (once) and prints its path.
fetch() {
    found=$(ls "$debs/$1"_*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$found" ]; then
        say "downloading $1"
        (cd "$debs" && apt-get download "$1" >&2) || die "apt-get download $1 failed"
        found=$(ls "$debs/$1"_*.deb 2>/dev/null | head -n 1 || true)
        [ -n "$found" ] || die "apt-get download $1 left no .deb in $debs"
    fi
    printf '%s\n' "$found"
}

# Built next to DEST and renamed into place, so that a half-built tree is never seen.
parent=$(dirname "$dest")
mkdir -p "$parent"
work=$(mktemp -d "$parent/.demo-rootfs-XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM HUP
tree=$work/tree
mkdir -p "$tree"

# --- the kernel: only boot/vmlinuz-* from the package
say "unpacking $package"
dpkg-deb -x "$(fetch "$package")" "$work/kernel"
mkdir -p "$tree/boot"
ls "$work/kernel/boot/vmlinuz-$version" >/dev/null 2>&1 || die "$package holds no boot/vmlinuz-$version"
cp "$work/kernel/boot/vmlinuz-$version" "$tree/boot/"
chmod 0644 "$tree/boot/vmlinuz-$version"
rm -rf "$work/kernel"

# --- busybox: the static one (an initramfs has no shared libraries)
if [ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null || true)" = "install ok installed" ] \
   && [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; then
    busybox=/bin/busybox
else
    dpkg-deb -x "$(fetch busybox-static)" "$work/busybox"
    busybox=$work/busybox/bin/busybox
fi
[ -x "$busybox" ] || die "no static busybox found"

# --- the initramfs
initramfs=$work/initramfs
mkdir -p "$initramfs/bin" "$initramfs/proc" "$initramfs/sys" "$initramfs/dev"
cp "$busybox" "$initramfs/bin/busybox"
chmod 0755 "$initramfs/bin/busybox"
for applet in sh mount mkdir echo uname poweroff cat sleep; do
    ln -s busybox "$initramfs/bin/$applet"
done
cat > "$initramfs/init" <<EOF
#!/bin/busybox sh
# sevimage demo init: show that the kernel from the encrypted root came up, then power off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# An external initramfs has no /dev/console until devtmpfs is mounted: talk to it from here on.
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
echo
echo "$marker \$(uname -r)"
echo
poweroff -f
EOF
chmod 0755 "$initramfs/init"
(cd "$initramfs" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --quiet) \
    | gzip -n -9 > "$tree/boot/initrd.img-$version"
chmod 0644 "$tree/boot/initrd.img-$version"

# --- a few ordinary root-tree files
mkdir -p "$tree/etc" "$tree/usr/lib" "$tree/proc" "$tree/sys" "$tree/dev" "$tree/run" "$tree/root" "$tree/tmp"
chmod 1777 "$tree/tmp"
chmod 0700 "$tree/root"
printf 'sevimage-demo\n' > "$tree/etc/hostname"
cat > "$tree/usr/lib/os-release" <<EOF
PRETTY_NAME="sevimage demo (busybox, Debian kernel $version)"
NAME="sevimage demo"
ID=sevimage-demo
ID_LIKE=debian
VERSION_ID="$recipe"
EOF
ln -s ../usr/lib/os-release "$tree/etc/os-release"
printf 'sevimage demo \\n \\l\n\n' > "$tree/etc/issue"
ln "$tree/etc/issue" "$tree/etc/issue.net"
printf 'recipe %s\n' "$recipe" > "$tree/etc/sevimage-demo"

# Replace an older tree (another recipe) only now that the new one is complete.
if [ -e "$dest" ]; then
    mv "$dest" "$work/old"
fi
mv "$tree" "$dest"
say "built $dest (kernel $version)"
printf '%s\n' "$dest"
