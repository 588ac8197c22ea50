#!/bin/sh
# Builds sevimage in release mode and installs it with its shell completions and man pages.
#   scripts/install-sevimage.sh            installs under /usr/local (run as root, or set PREFIX)
#   PREFIX=$HOME/.local scripts/install-sevimage.sh
# Installs: $PREFIX/bin/sevimage, bash/zsh/fish completions, and sevimage*.1 in $PREFIX/share/man/man1.
# The man pages come from the argument parser's GenerateManual plugin (works offline once the
# package's dependencies are resolved); the completions from `sevimage --generate-completion-script`.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
prefix=${PREFIX:-/usr/local}
bash_dir=${BASH_COMPLETION_DIR:-/usr/share/bash-completion/completions}
zsh_dir=${ZSH_COMPLETION_DIR:-$prefix/share/zsh/site-functions}
fish_dir=${FISH_COMPLETION_DIR:-$prefix/share/fish/vendor_completions.d}
man_dir=$prefix/share/man/man1
if [ "$prefix" != "/usr/local" ] && [ -z "${BASH_COMPLETION_DIR:-}" ]; then
    bash_dir=$prefix/share/bash-completion/completions
fi

binary=$(scripts/build-release.sh)

install -d "$prefix/bin" "$bash_dir" "$zsh_dir" "$fish_dir" "$man_dir"
install -m 0755 "$binary" "$prefix/bin/sevimage"
"$binary" --generate-completion-script bash > "$bash_dir/sevimage"
"$binary" --generate-completion-script zsh > "$zsh_dir/_sevimage"
"$binary" --generate-completion-script fish > "$fish_dir/sevimage.fish"

manual=$(mktemp -d)
trap 'rm -rf "$manual"' EXIT
if swift package --disable-automatic-resolution --allow-writing-to-directory "$manual" \
        generate-manual --output-directory "$manual" >&2; then
    find "$manual" -name '*.1' -exec install -m 0644 {} "$man_dir" \;
else
    echo "install-sevimage: the man page could not be generated (swift package generate-manual failed); skipped" >&2
fi
echo "install-sevimage: installed $prefix/bin/sevimage, completions and man pages" >&2
