#!/usr/bin/env bash
# The whole test suite on a fresh machine: install, type-check, run every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
touch node_modules/.rwkvx-installed
npm test
