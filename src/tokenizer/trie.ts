import type { IdBuffer } from './id-buffer.js';
import { buildLinkedTrie, type LinkedTrie } from './linked-trie.js';
import type { Vocab } from './vocab.js';

// Cell layout in `cells`: [check, base, token, unused]; four Int32s keep a cell inside one cache line.
const STRIDE = 4;
const CHECK = 0;
const BASE = 1;
const TOKEN = 2;
/** Free cells tried as the home of a node's first child before giving up and placing past the end. */
const MAX_TRIES = 64;
const NIL = -1;

/**
 * The vocabulary as a double-array trie: the child of cell n along byte b is cell base(n) + b, valid
 * only if that cell's check equals n. A match step is then one add and one compare, with no search
 * and no data-dependent branches beyond "does the path go on" (about 1.5x faster than sorted child
 * lists on English text).
 *
 * Matching always starts with the same two-byte lookup, so depth-2 nodes are reached through a dense
 * 65536-entry table (`root2`) and the trie cells hold only nodes of depth 2 and more. Cell 0 is never
 * used, so 0 in root2 means "no entry starts with these two bytes". Unused cells have check -1, and
 * nodes without children point their base at a block of 256 unused cells at the end, so a step from a
 * leaf fails the check like any other missing child, and every base + byte stays inside the array.
 */
export class ByteTrie {
  /** (first byte << 8 | second byte) → cell of the node after those two bytes, 0 if none. */
  readonly root2: Int32Array;
  readonly cells: Int32Array;

  constructor(vocab: Vocab) {
    const packed = pack(buildLinkedTrie(vocab));
    this.root2 = packed.root2;
    this.cells = packed.cells;
  }

  /**
   * Greedy longest match for every start position in [p, stop), reading bytes up to `end`; appends the
   * ids to `sink` and returns where the next token would start (≥ stop). Callers that tokenize a long
   * input in pieces keep `end - stop` ≥ MAX_TOKEN_BYTES - 1 so that no match is cut short.
   */
  tokenize(buf: Uint8Array, p: number, stop: number, end: number, sink: IdBuffer): number {
    const root2 = this.root2;
    const cells = this.cells;
    let ids = sink.ids;
    let count = sink.length;
    while (p < stop) {
      const b0 = buf[p]!;
      let bestId = b0 + 1; // single bytes are always tokens: id = byte + 1
      let bestEnd = p + 1;
      if (p + 1 < end) {
        let n = root2[(b0 << 8) | buf[p + 1]!]!;
        if (n !== 0) {
          let q = p + 2;
          let id = cells[n * STRIDE + TOKEN]!;
          if (id !== 0) {
            bestId = id;
            bestEnd = q;
          }
          while (q < end) {
            const next = cells[n * STRIDE + BASE]! + buf[q]!;
            if (cells[next * STRIDE + CHECK] !== n) break;
            n = next;
            q++;
            id = cells[n * STRIDE + TOKEN]!;
            if (id !== 0) {
              bestId = id;
              bestEnd = q;
            }
          }
        }
      }
      if (count === ids.length) {
        sink.length = count;
        sink.grow();
        ids = sink.ids;
      }
      ids[count++] = bestId;
      p = bestEnd;
    }
    sink.length = count;
    return p;
  }
}

/**
 * Places every node into cells, breadth first. Children of one node must land on base + byte for a
 * single base, so bases are found first-fit along a linked list of free cells; a node that fits none
 * of the first MAX_TRIES free cells goes past the last used cell instead, which bounds build time at
 * the cost of a few holes.
 */
function pack(t: LinkedTrie): { root2: Int32Array; cells: Int32Array } {
  let cap = t.nodes + (t.nodes >> 2) + 1024;
  let used = new Uint8Array(cap);
  let nextFree = new Int32Array(cap);
  let prevFree = new Int32Array(cap);
  used[0] = 1; // cell 0 stands for "none"
  for (let i = 1; i < cap; i++) {
    nextFree[i] = i + 1 < cap ? i + 1 : NIL;
    prevFree[i] = i - 1 >= 1 ? i - 1 : NIL;
  }
  let head = 1;
  let tail = cap - 1;
  let maxUsed = 0;

  const grow = (need: number) => {
    if (need < cap) return;
    const old = cap;
    cap = Math.max(need + 1024, cap + (cap >> 1));
    const u = new Uint8Array(cap);
    u.set(used);
    used = u;
    const nf = new Int32Array(cap);
    nf.set(nextFree);
    nextFree = nf;
    const pf = new Int32Array(cap);
    pf.set(prevFree);
    prevFree = pf;
    for (let i = old; i < cap; i++) {
      prevFree[i] = i === old ? tail : i - 1;
      nextFree[i] = i + 1 < cap ? i + 1 : NIL;
    }
    if (tail === NIL) head = old;
    else nextFree[tail] = old;
    tail = cap - 1;
  };
  const take = (i: number) => {
    grow(i);
    if (used[i]) throw new Error(`double-array trie: cell ${i} placed twice`);
    used[i] = 1;
    const p = prevFree[i]!;
    const n = nextFree[i]!;
    if (p === NIL) head = n;
    else nextFree[p] = n;
    if (n === NIL) tail = p;
    else prevFree[n] = p;
    if (i > maxUsed) maxUsed = i;
  };

  const { firstChild, nextSibling, byte } = t;
  const slot = new Int32Array(t.nodes);
  const base = new Int32Array(t.nodes).fill(NIL);
  const parent = new Int32Array(t.nodes);
  const queue = new Int32Array(t.nodes);
  let queued = 0;
  const root2 = new Int32Array(65536);

  // Depth-2 nodes have no parent cell to agree with, so any free cell will do.
  for (let key = 0; key < 65536; key++) {
    const n = t.root2[key]!;
    if (n === 0) continue;
    const cell = head === NIL ? cap : head;
    take(cell);
    slot[n] = cell;
    root2[key] = cell;
    queue[queued++] = n;
  }

  for (let qi = 0; qi < queued; qi++) {
    const n = queue[qi]!;
    const c0 = firstChild[n]!;
    if (c0 === 0) continue;
    const anchor = byte[c0]!;
    let b = NIL;
    for (let f = head, tries = 0; f !== NIL && tries < MAX_TRIES; f = nextFree[f]!, tries++) {
      const candidate = f - anchor;
      if (candidate < 1) continue;
      let fits = true;
      // The first child's cell is f itself, known to be free.
      for (let c = nextSibling[c0]!; c !== 0; c = nextSibling[c]!) {
        const i = candidate + byte[c]!;
        if (i < cap && used[i]) {
          fits = false;
          break;
        }
      }
      if (fits) {
        b = candidate;
        break;
      }
    }
    if (b === NIL) {
      // Past the last used cell every child lands on a free cell, counting from the smallest byte.
      let low = anchor;
      for (let c = nextSibling[c0]!; c !== 0; c = nextSibling[c]!) if (byte[c]! < low) low = byte[c]!;
      b = Math.max(1, maxUsed + 1 - low);
    }
    base[n] = b;
    for (let c = c0; c !== 0; c = nextSibling[c]!) {
      const cell = b + byte[c]!;
      take(cell);
      slot[c] = cell;
      parent[c] = n;
      queue[queued++] = c;
    }
  }

  const empty = maxUsed + 1; // 256 cells that no node uses: the target of every leaf's base
  let size = empty + 256;
  for (let n = 1; n < t.nodes; n++) if (base[n]! + 256 > size) size = base[n]! + 256;
  const cells = new Int32Array(size * STRIDE);
  for (let i = 0; i < size; i++) cells[i * STRIDE + CHECK] = NIL;
  for (let n = 1; n < t.nodes; n++) {
    const s = slot[n]! * STRIDE;
    cells[s + BASE] = base[n] === NIL ? empty : base[n]!;
    cells[s + TOKEN] = t.token[n]!;
    // Depth-2 nodes (parent 0) keep check -1: they are reached through root2, never by a step.
    if (parent[n] !== 0) cells[s + CHECK] = slot[parent[n]!]!;
  }
  return { root2, cells };
}
