#!/usr/bin/env bash
# Builds the small training corpus used in docs/training-run.md: the King James Bible as shipped by
# Debian's bible-kjv package (public domain), one JSONL document per chapter, then binidx.
#   bash scripts/corpus-kjv.sh OUTDIR
set -euo pipefail
out=${1:-data/kjv}
mkdir -p "$out"
if ! command -v bible >/dev/null 2>&1; then
  echo "installing Debian's bible-kjv (the text and its reader)…" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq bible-kjv >/dev/null; else sudo apt-get install -y -qq bible-kjv >/dev/null; fi
fi
bible -f "Gen1:1-Rev22:21" > "$out/kjv.txt"
# "Ge1:1 In the beginning…" → one document per chapter, verse references dropped
node -e '
const fs = require("fs");
const lines = fs.readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean);
const docs = new Map();
for (const l of lines) {
  const m = /^(\S+?)(\d+):(\d+) (.*)$/.exec(l);
  if (!m) continue;
  const key = m[1] + m[2];
  if (!docs.has(key)) docs.set(key, []);
  docs.get(key).push(m[4]);
}
fs.writeFileSync(process.argv[2], [...docs.values()].map((v) => JSON.stringify({ text: v.join("\n") })).join("\n") + "\n");
console.error(docs.size + " chapters");
' "$out/kjv.txt" "$out/kjv.jsonl"
"$(dirname "$0")/../rwkvx" data prepare --input "$out/kjv.jsonl" --out "$out/kjv"
