#!/bin/sh
# Debian's generic kernel headers (linux-headers-amd64: a -common and an -amd64 tree) as
# one tree, for bcc's BCC_KERNEL_SOURCE: the agent image carries them, so a node needs
# no headers of its own (struct offsets come from the node's BTF; only tracepoint
# layouts and helper prototypes come from headers, and those of another kernel do).
#   merge-kernel-headers.sh DEST [SRC_DIR=/usr/src]
set -eu
dest=$1
src=${2:-/usr/src}
common=$(ls -d "$src"/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
arch=$(ls -d "$src"/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
[ -n "$common" ] && [ -n "$arch" ] || { echo "no linux-headers-*-{common,amd64} in $src" >&2; exit 1; }
mkdir -p "$dest"
cp -a "$common/." "$dest/"
cp -a "$arch/." "$dest/"   # the architecture's generated headers over the common tree
rm -f "$dest/scripts"      # a relative link into linux-kbuild: bcc does not use it
echo "$dest: $(basename "$common") + $(basename "$arch")"
