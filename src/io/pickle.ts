/**
 * A restricted unpickler for the opcode stream torch.save writes (protocol 2; 3–5 opcodes accepted too).
 *
 * Nothing here ever runs code named by the file: every GLOBAL goes through the caller's resolver,
 * which returns a stand-in (a JS constructor for a plain container, a tensor descriptor factory)
 * or undefined, and undefined is refused with a UserError naming the global. Every read is
 * bounds-checked and every opcode consumes at least one byte, so garbage input ends in a UserError
 * after at most one pass over the data.
 *
 * Python values map to: dict/OrderedDict → Map, list → Array, tuple → frozen Array, set → Set,
 * str → string, bytes → Uint8Array, int → number (bigint beyond 2^53), float → number,
 * None → null, bool → boolean.
 */
import { UserError } from '../util/errors.js';

/** A resolved global that REDUCE / NEWOBJ may call. */
export interface PyCallable {
  readonly pyName: string;
  call(args: readonly unknown[]): unknown;
}

/** What a resolver returns for a global it does not call, e.g. a storage type or dtype marker. */
export type GlobalResolver = (module: string, name: string) => unknown;

export interface UnpickleOptions {
  /** How errors name the stream, e.g. "model.pth: data.pkl". */
  label: string;
  /** Returns the value for an allowed global, undefined for a forbidden one. */
  resolveGlobal: GlobalResolver;
  /** BINPERSID handler; without one, persistent ids are refused. */
  persistentLoad?: (pid: unknown) => unknown;
}

export function isPyCallable(v: unknown): v is PyCallable {
  return typeof v === 'object' && v !== null && typeof (v as PyCallable).call === 'function' && typeof (v as PyCallable).pyName === 'string';
}

export function isTuple(v: unknown): v is readonly unknown[] {
  return Array.isArray(v) && Object.isFrozen(v);
}

function tuple(items: unknown[]): readonly unknown[] {
  return Object.freeze(items);
}

const MARK = Symbol('mark');
const textDecoder = new TextDecoder('utf-8');

export function unpickle(data: Uint8Array, opts: UnpickleOptions): unknown {
  const { label } = opts;
  const n = data.length;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let pos = 0;
  let opPos = 0;
  let stack: unknown[] = [];
  const metastack: unknown[][] = [];
  const memo = new Map<number, unknown>();

  const corrupt = (why: string): never => {
    throw new UserError(`${label}: corrupt pickle (${why} at byte ${opPos})`);
  };
  const need = (k: number): void => {
    if (k < 0 || pos + k > n) corrupt('data ends inside an opcode');
  };
  const u8 = (): number => {
    need(1);
    return data[pos++]!;
  };
  const u16 = (): number => {
    need(2);
    const v = view.getUint16(pos, true);
    pos += 2;
    return v;
  };
  const u32 = (): number => {
    need(4);
    const v = view.getUint32(pos, true);
    pos += 4;
    return v;
  };
  const i32 = (): number => {
    need(4);
    const v = view.getInt32(pos, true);
    pos += 4;
    return v;
  };
  const u64 = (): number => {
    need(8);
    const v = view.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(n)) corrupt('length exceeds the data');
    return Number(v);
  };
  const bytes = (k: number): Uint8Array => {
    need(k);
    const b = data.subarray(pos, pos + k);
    pos += k;
    return b;
  };
  const line = (): string => {
    const end = data.indexOf(0x0a, pos);
    if (end < 0) corrupt('unterminated text line');
    const s = latin1(data.subarray(pos, end));
    pos = end + 1;
    return s;
  };
  const pop = (): unknown => {
    if (stack.length === 0) corrupt('stack underflow');
    const v = stack.pop();
    if (v === MARK) corrupt('unexpected MARK');
    return v;
  };
  const top = (): unknown => {
    if (stack.length === 0) corrupt('stack underflow');
    const v = stack[stack.length - 1];
    if (v === MARK) corrupt('unexpected MARK');
    return v;
  };
  const popMark = (): unknown[] => {
    const items = stack;
    const prev = metastack.pop();
    if (prev === undefined) corrupt('no MARK to pop to');
    stack = prev!;
    return items;
  };
  const littleLong = (b: Uint8Array): number | bigint => {
    if (b.length === 0) return 0;
    // Building a BigInt byte by byte is quadratic; torch never writes integers anywhere near this long.
    if (b.length > 64) corrupt(`integer of ${b.length} bytes`);
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
    if (b[b.length - 1]! & 0x80) v -= 1n << BigInt(8 * b.length);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };
  const global = (module: string, name: string): unknown => {
    const v = opts.resolveGlobal(module, name);
    if (v === undefined) {
      throw new UserError(`${label}: refuses to load global '${module}.${name}' (only tensors and plain containers are allowed)`);
    }
    return v;
  };
  const call = (fn: unknown, args: unknown, how: string): unknown => {
    if (!isPyCallable(fn)) corrupt(`${how} of something that is not a callable global`);
    if (!Array.isArray(args)) corrupt(`${how} arguments are not a tuple`);
    return (fn as PyCallable).call(args as unknown[]);
  };
  const setItems = (d: unknown, items: unknown[]): void => {
    if (!(d instanceof Map)) corrupt('SETITEM(S) on something that is not a dict');
    if (items.length % 2 !== 0) corrupt('odd number of items for SETITEMS');
    for (let i = 0; i < items.length; i += 2) (d as Map<unknown, unknown>).set(items[i], items[i + 1]);
  };
  const appendItems = (l: unknown, items: unknown[]): void => {
    if (!Array.isArray(l) || Object.isFrozen(l)) corrupt('APPEND(S) on something that is not a list');
    for (const it of items) (l as unknown[]).push(it);
  };

  while (pos < n) {
    opPos = pos;
    const op = data[pos++]!;
    switch (op) {
      case 0x80: { // PROTO
        const proto = u8();
        if (proto > 5) corrupt(`unsupported pickle protocol ${proto}`);
        break;
      }
      case 0x95: // FRAME: only a buffering hint for the writer's reader
        u64();
        break;
      case 0x2e: // STOP
        return pop();
      case 0x28: // MARK
        metastack.push(stack);
        stack = [];
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(tuple([]));
        break;
      case 0x8f: // EMPTY_SET
        stack.push(new Set());
        break;
      case 0x74: { // TUPLE
        // popMark swaps `stack`, so it must run before `stack.push` is looked up.
        const items = popMark();
        stack.push(tuple(items));
        break;
      }
      case 0x85: // TUPLE1
        stack.push(tuple([pop()]));
        break;
      case 0x86: { // TUPLE2
        const b = pop();
        const a = pop();
        stack.push(tuple([a, b]));
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop();
        const b = pop();
        const a = pop();
        stack.push(tuple([a, b, c]));
        break;
      }
      case 0x6c: { // LIST
        const items = popMark();
        stack.push(items);
        break;
      }
      case 0x64: { // DICT
        const items = popMark();
        const d = new Map<unknown, unknown>();
        setItems(d, items);
        stack.push(d);
        break;
      }
      case 0x91: { // FROZENSET
        const items = popMark();
        stack.push(new Set(items));
        break;
      }
      case 0x90: { // ADDITEMS
        const items = popMark();
        const s = top();
        if (!(s instanceof Set)) corrupt('ADDITEMS on something that is not a set');
        for (const it of items) (s as Set<unknown>).add(it);
        break;
      }
      case 0x61: { // APPEND
        const v = pop();
        appendItems(top(), [v]);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x30: // POP
        if (stack.length === 0) corrupt('stack underflow');
        stack.pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x58: // BINUNICODE
        stack.push(textDecoder.decode(bytes(u32())));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(textDecoder.decode(bytes(u8())));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(textDecoder.decode(bytes(u64())));
        break;
      case 0x54: { // BINSTRING (Python 2 str; signed length)
        const len = i32();
        if (len < 0) corrupt('negative string length');
        stack.push(latin1(bytes(len)));
        break;
      }
      case 0x55: // SHORT_BINSTRING
        stack.push(latin1(bytes(u8())));
        break;
      case 0x42: // BINBYTES
        stack.push(bytes(u32()).slice());
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(bytes(u8()).slice());
        break;
      case 0x8e: // BINBYTES8
        stack.push(bytes(u64()).slice());
        break;
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: // LONG1
        stack.push(littleLong(bytes(u8())));
        break;
      case 0x8b: { // LONG4
        const len = i32();
        if (len < 0) corrupt('negative integer length');
        stack.push(littleLong(bytes(len)));
        break;
      }
      case 0x47: { // BINFLOAT (big-endian, unlike everything else)
        need(8);
        stack.push(view.getFloat64(pos, false));
        pos += 8;
        break;
      }
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: { // LONG_BINGET
        const idx = op === 0x68 ? u8() : u32();
        if (!memo.has(idx)) corrupt(`memo key ${idx} is missing`);
        stack.push(memo.get(idx));
        break;
      }
      case 0x63: { // GLOBAL
        const module = line();
        const name = line();
        stack.push(global(module, name));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') corrupt('STACK_GLOBAL needs two strings');
        stack.push(global(module as string, name as string));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop();
        const fn = pop();
        stack.push(call(fn, args, 'REDUCE'));
        break;
      }
      case 0x81: { // NEWOBJ
        const args = pop();
        const cls = pop();
        stack.push(call(cls, args, 'NEWOBJ'));
        break;
      }
      case 0x92: { // NEWOBJ_EX
        pop(); // kwargs: none of the allowed constructors take any
        const args = pop();
        const cls = pop();
        stack.push(call(cls, args, 'NEWOBJ_EX'));
        break;
      }
      case 0x62: { // BUILD
        // The allowed objects carry no state we use (an OrderedDict's `_metadata`, a Parameter's
        // hooks), so the state is checked for shape only and dropped.
        pop();
        top();
        break;
      }
      case 0x51: { // BINPERSID
        const pid = pop();
        if (opts.persistentLoad === undefined) corrupt('persistent id without a handler');
        stack.push(opts.persistentLoad!(pid));
        break;
      }
      default:
        throw new UserError(`${label}: unsupported pickle opcode 0x${op.toString(16).padStart(2, '0')} at byte ${opPos}`);
    }
  }
  opPos = pos;
  return corrupt('data ends without a STOP opcode');
}

function latin1(b: Uint8Array): string {
  let s = '';
  for (let i = 0; i < b.length; i += 8192) s += String.fromCharCode(...b.subarray(i, i + 8192));
  return s;
}
