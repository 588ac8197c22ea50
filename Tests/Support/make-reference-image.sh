#!/bin/sh
# Test support only: builds by hand a reference image of the shape `sevimage create` writes, so that the
# boot driver (`sevimage boot`) can be tested on its own. Not part of the product, never in git's output.
#
#   Tests/Support/make-reference-image.sh TREE OUTPUT.qcow2 PASSPHRASE_FILE
#
# TREE is a root tree with /boot/vmlinuz-* and /boot/initrd.img-* (scripts/demo-rootfs.sh makes one);
# a /boot/grub/grub.cfg booting the newest kernel with console=ttyS0 is added unless the tree has one.
#
#   GPT disk (raw, then qcow2)
#   +-------+---------------------------+-------------------------------------------+-------+
#   | GPT   | 1: ESP, FAT32, 64 MiB      | 2: LUKS2 root                             | GPT   |
#   |       | EFI/BOOT/BOOTX64.EFI =     | 16 MiB header | ext4 (mke2fs -d TREE)     | backup|
#   |       | grub-mkstandalone, config  |               | 16 MiB spare (datashift)  |       |
#   |       | embedded in its memdisk    |                                           |       |
#   +-------+---------------------------+-------------------------------------------+-------+
#
# LUKS2: aes-xts-plain64, 512-bit key, 4096-byte sectors, one PBKDF2 keyslot (1000 iterations: GRUB
# cannot open argon2 and a test needs no costly KDF), encrypted offline with `cryptsetup reencrypt
# --encrypt --reduce-device-size 32M` on the partition file (the header takes 16 MiB at the front and
# only the first partition - 32 MiB bytes survive, so the filesystem is that much smaller).
# Runs as root here (cryptsetup's CLI takes its locks under /run/cryptsetup).
set -eu

[ $# -eq 3 ] || { echo "usage: $0 TREE OUTPUT.qcow2 PASSPHRASE_FILE" >&2; exit 2; }
tree=$1 output=$2 passphrase_file=$3
die() { printf 'make-reference-image: error: %s\n' "$*" >&2; exit 1; }
[ -d "$tree" ] || die "$tree is not a directory"
[ -f "$passphrase_file" ] || die "$passphrase_file is not a file"
passphrase_file=$(realpath "$passphrase_file")
for tool in sfdisk mkfs.vfat mcopy mmd mke2fs cryptsetup grub-mkstandalone qemu-img truncate dd; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || [ -x "/sbin/$tool" ] || die "$tool is not installed"
done
PATH=$PATH:/usr/sbin:/sbin

work=$(mktemp -d "${TMPDIR:-/tmp}/reference-image-XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM HUP

mib=1048576
esp_mib=64

# --- the root tree, with a grub.cfg for the kernel in /boot
cp -a "$tree" "$work/root"
if [ ! -f "$work/root/boot/grub/grub.cfg" ]; then
    kernel=$(cd "$work/root/boot" && ls vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
    [ -n "$kernel" ] || die "$tree has no /boot/vmlinuz-*"
    version=${kernel#vmlinuz-}
    mkdir -p "$work/root/boot/grub"
    {
        echo 'set timeout=0'
        echo 'set default=0'
        echo 'menuentry "sevimage reference" {'
        echo "    linux /boot/$kernel console=ttyS0 panic=-1"
        [ -f "$work/root/boot/initrd.img-$version" ] && echo "    initrd /boot/initrd.img-$version"
        echo '}'
    } > "$work/root/boot/grub/grub.cfg"
fi

# --- root partition: ext4 (partition - 32 MiB), then LUKS2 in place
tree_kib=$(du -sk "$work/root" | cut -f1)
fs_mib=$(( (tree_kib * 3 / 2) / 1024 + 24 ))
root_mib=$(( fs_mib + 32 ))
truncate -s $(( root_mib * mib )) "$work/root.part"
mke2fs -q -F -t ext4 -b 4096 -L root -d "$work/root" "$work/root.part" "${fs_mib}M"
passphrase_size=$(stat -c %s "$passphrase_file")
# A trailing newline is not part of the passphrase (as for `sevimage --passphrase-file`).
if [ "$(tail -c 1 "$passphrase_file" | od -An -c | tr -d ' ')" = '\n' ]; then
    passphrase_size=$(( passphrase_size - 1 ))
fi
uuid=$(cat /proc/sys/kernel/random/uuid)
(cd "$work" && cryptsetup reencrypt --encrypt --type luks2 --batch-mode --force-offline-reencrypt \
    --reduce-device-size 32M --uuid "$uuid" \
    --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --hash sha256 \
    --sector-size 4096 --cipher aes-xts-plain64 --key-size 512 \
    --key-file "$passphrase_file" --keyfile-size "$passphrase_size" "$work/root.part" >&2)

# --- ESP: GRUB with an embedded config that unlocks the root by its LUKS UUID
uuid_plain=$(printf '%s' "$uuid" | tr -d '-')
cat > "$work/embedded.cfg" <<EOF
if cryptomount -u $uuid_plain; then
    set root=(crypto0)
    set prefix=(crypto0)/boot/grub
    configfile /boot/grub/grub.cfg
    echo "sevimage: cannot boot from /boot/grub/grub.cfg on the root partition"
else
    echo "sevimage: cannot unlock the root partition"
fi
halt
EOF
grub-mkstandalone -O x86_64-efi -o "$work/BOOTX64.EFI" \
    --modules="part_gpt fat ext2 cryptodisk luks2 gcry_rijndael gcry_sha256 pbkdf2 linux normal configfile echo test halt" \
    --locales= --themes= --fonts= \
    "boot/grub/grub.cfg=$work/embedded.cfg"
truncate -s $(( esp_mib * mib )) "$work/esp.part"
mkfs.vfat -F 32 -n ESP "$work/esp.part" >/dev/null
mmd -i "$work/esp.part" ::EFI ::EFI/BOOT
mcopy -i "$work/esp.part" "$work/BOOTX64.EFI" ::EFI/BOOT/BOOTX64.EFI

# --- the disk: GPT with 1 MiB alignment, partitions copied in
disk_mib=$(( 1 + esp_mib + root_mib + 1 ))
truncate -s $(( disk_mib * mib )) "$work/disk.raw"
sfdisk --quiet "$work/disk.raw" <<EOF
label: gpt
start=2048, size=$(( esp_mib * 2048 )), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="ESP"
start=$(( (1 + esp_mib) * 2048 )), size=$(( root_mib * 2048 )), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="root"
EOF
dd if="$work/esp.part" of="$work/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.part" of="$work/disk.raw" bs=1M seek=$(( 1 + esp_mib )) conv=notrunc,sparse status=none
qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$output"
printf '%s\n' "$uuid"
