#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian machine with a Rust toolchain:
# lavapipe (software Vulkan, so wgpu runs real shaders without a GPU) and a font for plots.
set -euo pipefail

packages=(mesa-vulkan-drivers libvulkan1 fonts-dejavu-core)
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${missing[@]}"
fi

if [ ! -d ../shared/data ]; then
    echo "warning: ../shared/data (the face data sets) is missing; training and data tests need it" >&2
fi
