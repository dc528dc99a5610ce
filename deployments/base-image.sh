#!/usr/bin/env bash
# Builds a Python 3.11 base image for deployments/Dockerfile from Debian's own packages, for machines that reach
# a Debian mirror and PyPI but not Docker Hub (so `FROM python:3.11-slim` cannot be pulled):
#
#   sudo deployments/base-image.sh                       # -> care-base:bookworm
#   docker build -f deployments/Dockerfile --build-arg BASE_IMAGE=care-base:bookworm -t care-worker .
#
# It bootstraps a minimal Debian bookworm root filesystem (debootstrap --variant=minbase) with python3 (3.11),
# python3-venv, python3-pip and python3-dev (the headers: Triton and torch.compile build small C extensions at run
# time; the official python image has them too), applies bookworm-updates and bookworm-security, and imports it
# with `docker import`. The image is not rebuilt when it exists already (FORCE=1 rebuilds it), and the root
# filesystem is built in a temporary folder that is removed on exit, also after a failure.
#
# Settings (environment variables):
#   IMAGE            tag to create (default care-base:bookworm)
#   SUITE            Debian suite (default bookworm: its python3 is 3.11, as the project needs)
#   MIRROR           Debian mirror (default: the first .../debian mirror in this host's apt sources, else
#                    http://deb.debian.org/debian)
#   SECURITY_MIRROR  Debian security mirror (default: the host's .../debian-security, else
#                    http://deb.debian.org/debian-security)
#   CA_CERTS         extra CA certificates (PEM files, space separated) for the image to trust, e.g. the CA of a
#                    TLS-intercepting proxy between the build and PyPI. Default: the host's local additions,
#                    /usr/local/share/ca-certificates/*.crt; CA_CERTS="" adds none. When any are added, the image
#                    also sets PIP_CERT, REQUESTS_CA_BUNDLE and SSL_CERT_FILE to the system bundle, so pip and
#                    Python clients that carry their own bundle (certifi) use it.
#   FORCE=1          rebuild even if IMAGE exists
#   TMPDIR           where the temporary root filesystem goes (about 450 MB)
#
# Needs: root, debootstrap (apt-get install debootstrap), a running Docker daemon.
set -euo pipefail

IMAGE=${IMAGE:-care-base:bookworm}
SUITE=${SUITE:-bookworm}
FORCE=${FORCE:-0}

log() { printf '[base-image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap and chroot)"
command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
command -v docker >/dev/null || die "docker not found"
docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable (docker info failed)"

if [[ $FORCE != 1 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE exists already (FORCE=1 rebuilds it)"
    exit 0
fi

# The host's apt mirrors: one-line sources.list entries ("deb [opts] URI suite ...") and deb822 .sources files
# ("URIs: URI ...").
host_mirrors() {
    {
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | sed -nE 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p'
        cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
            | sed -nE 's/^[[:space:]]*URIs:[[:space:]]*(.*)/\1/p' | tr ' ' '\n'
    } | sed -e 's:/*$::' | grep -E '^https?://' || true
}
MIRROR=${MIRROR:-$(host_mirrors | grep -E '/debian$' | head -n1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-$(host_mirrors | grep -E '/debian-security$' | head -n1)}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}

if [[ -v CA_CERTS ]]; then
    read -r -a ca_certs <<<"$CA_CERTS"
else
    shopt -s nullglob
    ca_certs=(/usr/local/share/ca-certificates/*.crt)
    shopt -u nullglob
fi
for cert in "${ca_certs[@]}"; do
    [[ -r $cert ]] || die "CA certificate $cert is not readable"
done

ROOTFS=$(mktemp -d "${TMPDIR:-/var/tmp}/care-base-rootfs.XXXXXX")
cleanup() {
    mountpoint -q "$ROOTFS/proc" && umount -l "$ROOTFS/proc"
    rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT

log "debootstrap $SUITE from $MIRROR into $ROOTFS"
debootstrap --variant=minbase \
    --include=ca-certificates,python3,python3-venv,python3-pip,python3-dev \
    "$SUITE" "$ROOTFS" "$MIRROR"

cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
# no recommended packages and no caches in the image, as in Debian's official container images
cat >"$ROOTFS/etc/apt/apt.conf.d/90container" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"   # no service starts inside the chroot
chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"

log "applying $SUITE-updates and $SUITE-security"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
mount -t proc proc "$ROOTFS/proc"
chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -ec 'apt-get update -q && apt-get -yq upgrade'

env_changes=(--change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]')
if ((${#ca_certs[@]})); then
    log "adding CA certificates: ${ca_certs[*]}"
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates/extra"
    for cert in "${ca_certs[@]}"; do
        name=$(basename "$cert")
        cp "$cert" "$ROOTFS/usr/local/share/ca-certificates/extra/${name%.*}.crt"
    done
    chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin update-ca-certificates
    bundle=/etc/ssl/certs/ca-certificates.crt
    env_changes+=(--change "ENV PIP_CERT=$bundle REQUESTS_CA_BUNDLE=$bundle SSL_CERT_FILE=$bundle")
fi
umount "$ROOTFS/proc"

log "cleaning up the root filesystem"
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/log/apt/* \
    "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
: >"$ROOTFS/etc/resolv.conf"   # Docker mounts its own
find "$ROOTFS" -name __pycache__ -prune -exec rm -rf {} +

python_version=$(chroot "$ROOTFS" python3 -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')
log "importing as $IMAGE (Python $python_version)"
tar -C "$ROOTFS" --numeric-owner -c . \
    | docker import "${env_changes[@]}" \
        --message "debootstrap --variant=minbase $SUITE ($MIRROR) + python3 $python_version" - "$IMAGE"
docker image ls "$IMAGE"
