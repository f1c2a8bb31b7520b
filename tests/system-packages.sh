#!/usr/bin/env bash
# The Debian packages the test suite's simulated clouds need: network namespaces and veths
# (iproute2), per-host firewalls (nftables), an SSH server per simulated machine and the client the
# driver tunnels with (openssh-server, openssh-client); for sky.Container and the machine images, the
# Docker Engine (docker.io; the tests start dockerd themselves) and root filesystems built from
# Debian packages (mmdebstrap); for the simulated internet, a self-contained CPython (patchelf) and
# an apt repository of real .debs (dpkg-scanpackages, from dpkg-dev). Installs what is missing when run as root;
# otherwise says which are missing (the tests that need them then skip, saying why).
set -u
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ] || missing+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v patchelf >/dev/null 2>&1 || missing+=(patchelf)
command -v dpkg-scanpackages >/dev/null 2>&1 || missing+=(dpkg-dev)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-packages: missing ${missing[*]} (not root: not installing; the simulated-cloud tests will skip)"
  exit 0
fi
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null \
  || { echo "system-packages: could not install ${missing[*]}"; exit 1; }
