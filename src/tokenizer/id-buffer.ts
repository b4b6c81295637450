/**
 * A growable list of token ids in an Int32Array. The encoder appends here and converts once at the
 * end: Array.prototype.push per token costs more than the whole trie walk.
 */
export class IdBuffer {
  ids: Int32Array;
  length = 0;

  constructor(capacity = 4096) {
    this.ids = new Int32Array(capacity);
  }

  /** Doubles the capacity, keeping the first `length` ids. */
  grow(): void {
    const ids = new Int32Array(this.ids.length * 2);
    ids.set(this.ids.subarray(0, this.length));
    this.ids = ids;
  }

  toArray(): number[] {
    const n = this.length;
    const out = new Array<number>(n);
    for (let i = 0; i < n; i++) out[i] = this.ids[i]!;
    return out;
  }
}
