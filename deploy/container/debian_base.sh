#!/usr/bin/env bash
# A Debian base image built from Debian's packages, for a machine that reaches a Debian mirror but no image
# registry (the Dockerfile's default base, debian:bookworm-slim, comes from Docker Hub). Run as root:
#
#   deploy/container/debian_base.sh [TAG] [MIRROR]
#   podman build --build-arg BASE_IMAGE=TAG ...        (docs/deploy.md, "Containers")
#
# TAG defaults to localhost/medseg3d-base:bookworm, MIRROR to the first deb.debian.org-style URI apt uses here.
# It debootstraps a minbase bookworm (about 30 s and 90 MB) into a temporary folder, imports it with
# `podman import` (or `buildah`'s, through podman's storage) and removes the folder. An existing TAG is kept.
set -euo pipefail

TAG=${1:-localhost/medseg3d-base:bookworm}
MIRROR=${2:-}
if [[ -z "$MIRROR" ]]; then
    MIRROR=$(grep -hoE '(URIs:|^deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* \
        2>/dev/null | grep -oE 'https?://[^ ]+' | head -n1 || true)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi

if podman image exists "$TAG"; then
    echo "$TAG exists; remove it (podman rmi $TAG) to build it again"
    exit 0
fi
for tool in debootstrap podman; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install debootstrap podman)" >&2; exit 1; }
done

ROOTFS=$(mktemp -d /var/tmp/medseg3d-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >&2
# what an image needs and a root file system from debootstrap lacks or should not carry
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$MIRROR" "$MIRROR" > "$ROOTFS/etc/apt/sources.list"
if [[ "$MIRROR" =~ ^https?://deb\.debian\.org/debian/?$ ]]; then  # Debian's own mirror: its security updates too
    echo 'deb http://deb.debian.org/debian-security bookworm-security main' >> "$ROOTFS/etc/apt/sources.list"
fi
tar --numeric-owner -C "$ROOTFS" -c . | podman import \
    --change 'CMD ["/bin/bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$TAG" >/dev/null
echo "$TAG"
