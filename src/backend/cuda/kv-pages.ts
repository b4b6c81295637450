/**
 * The attention blocks' K/V caches as *paged* buffers: one reserved virtual address range per buffer,
 * backed page by page with physical memory through the driver's virtual-memory API (cuMemCreate +
 * cuMemMap). Kernels keep addressing a cache as one contiguous [tokens, C] array, yet
 *  - growing it maps more pages (no copy, no doubling of a 10 GB buffer, no 2× transient peak), and
 *  - a page can move to pinned host memory and stay mapped at the same address: the GPU then reads
 *    it over PCIe/NVLink-C2C when (and only when) a kernel touches it. Which tokens a decoding step
 *    touches is exactly the own chunk plus the top-k selected ones, so offloading the oldest pages
 *    is lossless and costs only the selected chunks' bytes per step.
 * A `KvPager` owns the policy: a device budget for K/V pages; past it, the oldest device page of the
 * buffer holding the most device pages is moved to the host before a new device page is mapped.
 */
import koffi from 'koffi';
import { UserError } from '../../util/errors.js';
import { check, cu, CudaContext, CUDA_ERROR_OUT_OF_MEMORY } from './driver.js';
import { copyDtoD, trackAllocation } from './memory.js';

const MiB = 1 << 20;
const LOC_DEVICE = 1, LOC_HOST = 2, LOC_HOST_NUMA = 3;
const ATTR_VMM = 102, ATTR_HOST_NUMA_VMM = 141, ATTR_HOST_VMM = 145, ATTR_HOST_NUMA_ID = 134;

const Location = koffi.struct('rwkvx_CUmemLocation', { type: 'int', id: 'int' });
const Prop = koffi.struct('rwkvx_CUmemAllocationProp', {
  type: 'int', requestedHandleTypes: 'int', location: Location, win32HandleMetaData: 'void *',
  compressionType: 'uchar', gpuDirectRDMACapable: 'uchar', usage: 'ushort', reserved: koffi.array('uchar', 4),
});
const Access = koffi.struct('rwkvx_CUmemAccessDesc', { location: Location, flags: 'int' });

type Fn = (...args: unknown[]) => number;
const VMM_SIGS = {
  reserve: 'int cuMemAddressReserve(_Out_ uint64_t *ptr, size_t size, size_t align, uint64_t addr, unsigned long long flags)',
  free: 'int cuMemAddressFree(uint64_t ptr, size_t size)',
  create: 'int cuMemCreate(_Out_ uint64_t *handle, size_t size, const rwkvx_CUmemAllocationProp *prop, unsigned long long flags)',
  release: 'int cuMemRelease(uint64_t handle)',
  map: 'int cuMemMap(uint64_t ptr, size_t size, size_t offset, uint64_t handle, unsigned long long flags)',
  unmap: 'int cuMemUnmap(uint64_t ptr, size_t size)',
  setAccess: 'int cuMemSetAccess(uint64_t ptr, size_t size, const rwkvx_CUmemAccessDesc *desc, size_t count)',
  granularity: 'int cuMemGetAllocationGranularity(_Out_ size_t *gran, const rwkvx_CUmemAllocationProp *prop, int option)',
} as const;
type VmmApi = { [K in keyof typeof VMM_SIGS]: Fn };
let vmm: VmmApi | undefined;
/** The driver's virtual-memory functions (bound on first use, after cu() has loaded the driver). */
function api(): VmmApi {
  if (vmm) return vmm;
  cu();
  const lib = koffi.load('libcuda.so.1');
  const out: Record<string, Fn> = {};
  for (const [k, sig] of Object.entries(VMM_SIGS)) out[k] = lib.func(sig) as Fn;
  vmm = out as VmmApi;
  return vmm;
}

function prop(type: number, id: number) {
  return { type: 1 /* PINNED */, requestedHandleTypes: 0, location: { type, id }, win32HandleMetaData: null, compressionType: 0, gpuDirectRDMACapable: 0, usage: 0, reserved: [0, 0, 0, 0] };
}

interface Page { handle: unknown; host: boolean }

/** One paged buffer (a K or a V cache). `ptr` changes only when the reserved range has to grow. */
export class PagedBuffer {
  ptr = 0;
  private reserved = 0;
  readonly pages: Page[] = [];
  /** Index of the oldest page still on the device. */
  firstDevice = 0;
  constructor(private pager: KvPager, readonly what: string) {}

  get bytes(): number { return this.pages.length * this.pager.pageBytes; }
  get devicePages(): number { return this.pages.length - this.hostPages; }
  get hostPages(): number { return this.pages.reduce((s, p) => s + (p.host ? 1 : 0), 0); }

  /** Makes at least `bytes` addressable; returns true when `ptr` moved. */
  ensure(bytes: number): boolean {
    const pb = this.pager.pageBytes;
    const want = Math.ceil(bytes / pb);
    if (want <= this.pages.length) return false;
    let moved = false;
    if (want * pb > this.reserved) { this.rereserve(Math.max(want * pb * 2, 64 * pb)); moved = true; }
    while (this.pages.length < want) this.pager.addPage(this);
    return moved;
  }

  /** Maps `page` at its place in the range (read-write for the device). */
  mapAt(index: number, page: Page): void {
    const a = api(), pb = this.pager.pageBytes, at = this.ptr + index * pb;
    check('cuMemMap', a.map(at, pb, 0, page.handle, 0));
    check('cuMemSetAccess', a.setAccess(at, pb, { location: { type: LOC_DEVICE, id: this.pager.ctx.info.ordinal }, flags: 3 }, 1));
  }

  private rereserve(bytes: number): void {
    const a = api(), out = [0];
    check('cuMemAddressReserve', a.reserve(out, bytes, 0, 0, 0));
    const old = this.ptr, oldBytes = this.reserved;
    this.ptr = Number(out[0]); this.reserved = bytes;
    // the same physical pages, mapped again at the new range: no data moves
    this.pages.forEach((p, i) => this.mapAt(i, p));
    if (old) {
      this.pager.ctx.sync();
      check('cuMemUnmap', a.unmap(old, this.pages.length * this.pager.pageBytes));
      check('cuMemAddressFree', a.free(old, oldBytes));
    }
  }

  free(): void {
    const a = api(), pb = this.pager.pageBytes;
    if (!this.ptr) return;
    this.pager.ctx.sync();
    if (this.pages.length) check('cuMemUnmap', a.unmap(this.ptr, this.pages.length * pb));
    for (const p of this.pages) { check('cuMemRelease', a.release(p.handle)); this.pager.account(p.host, -1); }
    check('cuMemAddressFree', a.free(this.ptr, this.reserved));
    this.pages.length = 0; this.ptr = 0; this.reserved = 0;
    this.pager.forget(this);
  }
}

export interface KvPagerOptions {
  /** Most bytes of K/V pages kept on the device (default: no limit beyond `reserveBytes`). */
  deviceBytes?: number;
  /** Device memory left free for everything else when deciding to offload (default 3 GiB). */
  reserveBytes?: number;
}

export class KvPager {
  readonly pageBytes: number;
  private buffers = new Set<PagedBuffer>();
  deviceBytes: number;
  reserveBytes: number;
  deviceUsed = 0;
  hostUsed = 0;
  /** Pages moved to the host so far (for reports). */
  offloads = 0;
  private hostLoc: number | undefined;

  constructor(readonly ctx: CudaContext, rowBytes: number, chunkRows: number, opts: KvPagerOptions = {}) {
    const a = api(), dev = ctx.info.ordinal;
    const v = [0];
    check('cuDeviceGetAttribute', cu().cuDeviceGetAttribute(v, ATTR_VMM, dev));
    if (!v[0]) throw new UserError(`${ctx.info.name} does not support CUDA virtual memory management (needed for the paged K/V cache)`);
    const g = [0];
    check('cuMemGetAllocationGranularity', a.granularity(g, prop(LOC_DEVICE, dev), 0));
    let gran = Number(g[0]);
    this.hostLoc = this.findHostLocation(dev);
    if (this.hostLoc !== undefined) {
      const gh = [0];
      if (a.granularity(gh, prop(this.hostLoc, this.hostId(dev)), 0) === 0) gran = lcm(gran, Number(gh[0]));
    }
    // a page holds whole chunks (a chunk never straddles a device/host boundary) and whole granules
    const chunkBytes = rowBytes * chunkRows;
    this.pageBytes = lcm(chunkBytes, gran);
    while (this.pageBytes < 2 * MiB) this.pageBytes *= 2;
    this.deviceBytes = opts.deviceBytes ?? Infinity;
    this.reserveBytes = opts.reserveBytes ?? 3 * 1024 * MiB;
  }

  get canOffload(): boolean { return this.hostLoc !== undefined; }

  private findHostLocation(dev: number): number | undefined {
    const v = [0];
    if (cu().cuDeviceGetAttribute(v, ATTR_HOST_VMM, dev) === 0 && v[0]) return LOC_HOST;
    v[0] = 0;
    if (cu().cuDeviceGetAttribute(v, ATTR_HOST_NUMA_VMM, dev) === 0 && v[0]) return LOC_HOST_NUMA;
    return undefined;
  }

  private hostId(dev: number): number {
    if (this.hostLoc !== LOC_HOST_NUMA) return 0;
    const v = [0];
    return cu().cuDeviceGetAttribute(v, ATTR_HOST_NUMA_ID, dev) === 0 && v[0] >= 0 ? v[0] : 0;
  }

  buffer(what: string): PagedBuffer {
    const b = new PagedBuffer(this, what);
    this.buffers.add(b);
    return b;
  }

  forget(b: PagedBuffer): void { this.buffers.delete(b); }

  account(host: boolean, sign: number): void {
    if (host) this.hostUsed += sign * this.pageBytes;
    else { this.deviceUsed += sign * this.pageBytes; trackAllocation(sign * this.pageBytes); }
  }

  /** Appends one page to `b`, on the device (offloading older pages when over budget). */
  addPage(b: PagedBuffer): void {
    while (this.overBudget() && this.offloadOne()) { /* made room */ }
    const a = api(), h = [0];
    let r = a.create(h, this.pageBytes, prop(LOC_DEVICE, this.ctx.info.ordinal), 0);
    while (r === CUDA_ERROR_OUT_OF_MEMORY && this.offloadOne()) r = a.create(h, this.pageBytes, prop(LOC_DEVICE, this.ctx.info.ordinal), 0);
    if (r === CUDA_ERROR_OUT_OF_MEMORY) {
      const { free, total } = this.ctx.memInfo();
      throw new UserError(`CUDA out of memory growing the ${b.what} (${this.canOffload ? 'no device page left to move to the host' : 'this driver cannot map host pages, so no K/V offload'}): ${(free / MiB).toFixed(0)} MiB free of ${(total / MiB).toFixed(0)} MiB on ${this.ctx.info.name}`);
    }
    check('cuMemCreate', r);
    const page: Page = { handle: h[0], host: false };
    b.pages.push(page);
    b.mapAt(b.pages.length - 1, page);
    this.account(false, 1);
  }

  private overBudget(): boolean {
    if (!this.canOffload) return false;
    if (this.deviceUsed + this.pageBytes > this.deviceBytes) return true;
    return this.ctx.memInfo().free < this.reserveBytes + this.pageBytes;
  }

  /** Moves the oldest device page of the buffer with the most device pages to pinned host memory. */
  private offloadOne(): boolean {
    if (!this.canOffload) return false;
    let best: PagedBuffer | undefined;
    for (const b of this.buffers) {
      // the newest page stays: it holds the chunk being written
      if (b.firstDevice < b.pages.length - 1 && (!best || b.devicePages > best.devicePages)) best = b;
    }
    if (!best) return false;
    this.moveToHost(best, best.firstDevice);
    best.firstDevice++;
    return true;
  }

  private moveToHost(b: PagedBuffer, index: number): void {
    const a = api(), pb = this.pageBytes, dev = this.ctx.info.ordinal;
    const h = [0];
    const r = a.create(h, pb, prop(this.hostLoc!, this.hostId(dev)), 0);
    if (r === CUDA_ERROR_OUT_OF_MEMORY) throw new UserError(`out of pinned host memory moving K/V pages to the host (${(this.hostUsed / MiB).toFixed(0)} MiB already there)`);
    check('cuMemCreate(host)', r);
    // stage through a temporary mapping so the page keeps its address
    const tmp = [0];
    check('cuMemAddressReserve', a.reserve(tmp, pb, 0, 0, 0));
    const t = Number(tmp[0]);
    check('cuMemMap', a.map(t, pb, 0, h[0], 0));
    check('cuMemSetAccess', a.setAccess(t, pb, { location: { type: LOC_DEVICE, id: dev }, flags: 3 }, 1));
    const at = b.ptr + index * pb;
    copyDtoD(this.ctx, t, at, pb);
    this.ctx.sync();
    check('cuMemUnmap', a.unmap(t, pb));
    check('cuMemAddressFree', a.free(t, pb));
    const old = b.pages[index];
    check('cuMemUnmap', a.unmap(at, pb));
    check('cuMemRelease', a.release(old.handle));
    this.account(false, -1);
    const page: Page = { handle: h[0], host: true };
    b.pages[index] = page;
    b.mapAt(index, page);
    this.account(true, 1);
    this.offloads++;
  }
}

function gcd(a: number, b: number): number { while (b) [a, b] = [b, a % b]; return a; }
function lcm(a: number, b: number): number { return (a / gcd(a, b)) * b; }
