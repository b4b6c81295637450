#!/bin/bash
# A slim pack for the GPU machines of the development workplace (.dev1/): the Node binary and the
# runtime node_modules only (no TypeScript compiler or types, no npm, no Vulkan loaders), so that the
# working tree plus the pack stay under the device tool's 64 MiB. WebGPU work needs the full
# ../shared/device/pack.sh instead.
#   bash scripts/dev/slim-device-pack.sh
#   then on the device: source .dev1/boot.sh && node --import tsx --test test/cuda.test.ts …
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
[ -d node_modules ] || npm ci --ignore-scripts
out=.dev1
mkdir -p "$out"
grep -qx '/.dev1/' .git/info/exclude 2>/dev/null || echo '/.dev1/' >> .git/info/exclude
xz -T0 -6 -c "$(readlink -f "$(command -v node)")" > "$out/node.xz"
tar -cJf "$out/modules.tar.xz" \
  --exclude='node_modules/typescript' --exclude='node_modules/@types' \
  --exclude='*/koffi/build/koffi/darwin_*' --exclude='*/koffi/build/koffi/win32_*' --exclude='*/koffi/build/koffi/freebsd_*' \
  --exclude='*/koffi/build/koffi/openbsd_*' --exclude='*/koffi/build/koffi/linux_arm*' --exclude='*/koffi/build/koffi/linux_ia32' \
  --exclude='*/koffi/build/koffi/linux_riscv*' --exclude='*/koffi/build/koffi/linux_loong*' --exclude='*/koffi/build/koffi/musl_*' \
  --exclude='node_modules/@esbuild/[!l]*' --exclude='node_modules/@esbuild/linux-[!x]*' \
  node_modules
cat > "$out/boot.sh" <<'BOOT'
# Sourced at the start of a device command: source .dev1/boot.sh && ...
_dev=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_proj=$(dirname "$_dev")
mkdir -p /tmp/devnode/bin
[ -x /tmp/devnode/bin/node ] || { xz -dc "$_dev/node.xz" > /tmp/devnode/bin/node && chmod +x /tmp/devnode/bin/node; }
export PATH=/tmp/devnode/bin:$PATH
[ -d "$_proj/node_modules" ] || tar -xJf "$_dev/modules.tar.xz" -C "$_proj"
echo "device: node $(node --version), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
BOOT
du -sh "$out" | awk '{print "packed " $2 ": " $1}'
