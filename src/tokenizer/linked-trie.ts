import { fail } from '../util/errors.js';
import type { Vocab } from './vocab.js';

/**
 * The vocabulary's byte trie as built by plain insertion: children in singly linked sibling lists.
 * Cheap to build (no sorting, no maps) but slow to search, so it is only the intermediate form that
 * the double-array trie is packed from. Nodes of depth 0 and 1 are left implicit: every entry of two
 * or more bytes starts at `root2[first byte << 8 | second byte]`. Node 0 means "none".
 */
export interface LinkedTrie {
  readonly nodes: number;
  readonly root2: Int32Array;
  /** Token id ending at the node, 0 if none. */
  readonly token: Int32Array;
  readonly firstChild: Int32Array;
  readonly nextSibling: Int32Array;
  /** The byte on the edge into the node. */
  readonly byte: Uint8Array;
}

export function buildLinkedTrie(vocab: Vocab): LinkedTrie {
  const { bytes, offset, length } = vocab;
  let capacity = 1;
  for (let id = 0; id < length.length; id++) if (length[id]! > 1) capacity += length[id]! - 1;
  const root2 = new Int32Array(65536);
  const token = new Int32Array(capacity);
  const firstChild = new Int32Array(capacity);
  const nextSibling = new Int32Array(capacity);
  const byte = new Uint8Array(capacity);
  let nodes = 1;

  for (let id = 0; id < length.length; id++) {
    const l = length[id]!;
    if (l === 0) continue;
    const o = offset[id]!;
    if (l === 1) {
      // Single bytes are implicit (id = byte + 1, checked by the loader); another id for one would be
      // a duplicate the encoder could never produce.
      if (id !== bytes[o]! + 1) fail(`tokenizer vocabulary: token ids ${bytes[o]! + 1} and ${id} have the same bytes`);
      continue;
    }
    const key = (bytes[o]! << 8) | bytes[o + 1]!;
    let n = root2[key]!;
    if (n === 0) {
      n = root2[key] = nodes++;
      byte[n] = bytes[o + 1]!;
    }
    for (let k = 2; k < l; k++) {
      const b = bytes[o + k]!;
      let c = firstChild[n]!;
      while (c !== 0 && byte[c] !== b) c = nextSibling[c]!;
      if (c === 0) {
        c = nodes++;
        byte[c] = b;
        nextSibling[c] = firstChild[n]!;
        firstChild[n] = c;
      }
      n = c;
    }
    if (token[n] !== 0) fail(`tokenizer vocabulary: token ids ${token[n]} and ${id} have the same bytes`);
    token[n] = id;
  }
  return { nodes, root2, token, firstChild, nextSibling, byte };
}
