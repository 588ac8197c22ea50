#!/bin/sh
# Builds a Debian 12 root tree the way a user would, with the distribution's own tools only, and prints
# the tarball's path on stdout. The boot tests turn it into an image and boot it.
#
#   Tests/Support/make-debian-tree.sh initramfs-tools|dracut [DEST.tar]
#
# DEST defaults to .cache/debian-trees/FLAVOUR.tar in the repository. The tree holds packages only
# (linux-image-amd64, systemd-sysv, cryptsetup, and cryptsetup-initramfs or dracut): no crypttab, no
# key file, no initramfs configuration. Two things are added for the test, neither of them about the boot:
#   /usr/local/bin/sevimage-captest   a copy of /bin/true with the file capability cap_net_bind_service+ep
#                                     (and the xattr user.sevimage=kept), which must survive into the image
#   sevimage-check.service            once systemd is up, prints "SEVIMAGE-DEBIAN-OK <state>" on the serial
#                                     console when / is writable and the capability is there
#                                     ("SEVIMAGE-DEBIAN-FAIL <why>" otherwise), then powers off
#
# Needs root (mmdebstrap --mode=root) and Debian's package mirror (the host's apt sources). Reused while the
# recipe below is unchanged: a tree is 1.5-4 minutes of downloads and dpkg.
set -eu

recipe=1                                   # bump when the tree's contents change
flavour=${1:?usage: make-debian-tree.sh initramfs-tools|dracut [DEST.tar]}
here=$(cd "$(dirname "$0")/../.." && pwd)
dest=${2:-"$here/.cache/debian-trees/$flavour.tar"}

die() { printf 'make-debian-tree: error: %s\n' "$*" >&2; exit 1; }

case $flavour in
    initramfs-tools) packages="initramfs-tools,cryptsetup-initramfs" ;;
    dracut) packages="dracut" ;;
    *) die "unknown flavour $flavour (initramfs-tools or dracut)" ;;
esac
packages="linux-image-amd64,systemd-sysv,udev,cryptsetup,libcap2-bin,$packages"
[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap --mode=root)"
command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap is not installed (apt-get install mmdebstrap)"

stamp="$dest.recipe"
if [ -f "$dest" ] && [ "$(cat "$stamp" 2>/dev/null)" = "recipe $recipe $packages" ]; then
    printf '%s\n' "$dest"
    exit 0
fi
mkdir -p "$(dirname "$dest")"

sources=
for candidate in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$candidate" ] && grep -q bookworm "$candidate"; then sources=$candidate; break; fi
done
[ -n "$sources" ] || die "no bookworm entry in the host's apt sources"

hooks=$(mktemp -d)
trap 'rm -rf "$hooks" "${dest%.tar}.part.tar"' EXIT INT TERM HUP
cat >"$hooks/check" <<'EOF'
#!/bin/sh
# sevimage's boot test: / must be writable and the tree's file capability kept.
state=$(systemctl is-system-running --wait 2>/dev/null || true)
if ! touch /var/lib/sevimage-rw-check 2>/dev/null; then
    result="FAIL root-read-only"
elif ! getcap /usr/local/bin/sevimage-captest | grep -q cap_net_bind_service; then
    result="FAIL capability-lost"
else
    result="OK"
fi
echo "SEVIMAGE-DEBIAN-$result $state" >/dev/ttyS0
systemctl --no-block poweroff
EOF
cat >"$hooks/check.service" <<'EOF'
[Unit]
Description=sevimage boot test marker

[Service]
Type=simple
ExecStart=/usr/local/sbin/sevimage-check

[Install]
WantedBy=multi-user.target
EOF

# shellcheck disable=SC2016
mmdebstrap --mode=root --variant=apt --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="install -m 0755 '$hooks/check' \"\$1/usr/local/sbin/sevimage-check\"" \
    --customize-hook="install -m 0644 '$hooks/check.service' \"\$1/etc/systemd/system/sevimage-check.service\"" \
    --customize-hook='ln -sf /etc/systemd/system/sevimage-check.service "$1/etc/systemd/system/multi-user.target.wants/sevimage-check.service"' \
    --customize-hook='cp "$1/bin/true" "$1/usr/local/bin/sevimage-captest"' \
    --customize-hook='chroot "$1" setcap cap_net_bind_service+ep /usr/local/bin/sevimage-captest' \
    --customize-hook='python3 -c "import os,sys; os.setxattr(sys.argv[1], \"user.sevimage\", b\"kept\")" "$1/usr/local/bin/sevimage-captest"' \
    --customize-hook='echo sevimage-debian >"$1/etc/hostname"' \
    --customize-hook='chroot "$1" passwd -d root' \
    bookworm "${dest%.tar}.part.tar" "$sources" </dev/null >&2 || die "mmdebstrap failed"
mv "${dest%.tar}.part.tar" "$dest"
printf 'recipe %s %s\n' "$recipe" "$packages" >"$stamp"
printf '%s\n' "$dest"
