/**
 * Runs the CUDA kernel sources of src/backend/cuda/kernels on the CPU (test/cuda-emu/emu.h: blocks one
 * after another, a block's threads as fibers; barriers, warp shuffles, cp.async, ldmatrix and mma.sync
 * modelled): the kernel file is compiled by g++ into a shared library with one launcher per extern "C"
 * kernel, loaded with koffi, and launched on host typed arrays. For tests of kernel arithmetic and data
 * flow without a GPU — not of timing, occupancy or the GPU's memory model.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import koffi from 'koffi';
import { kernelParams, kernelSource } from '../../src/backend/cuda/module-cache.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const CXX = process.env.CXX ?? 'g++';

/** Why emulated kernels can't run here ('' when they can). */
export function emuSkipReason(): string {
  try {
    execFileSync(CXX, ['--version'], { stdio: 'ignore' });
    return '';
  } catch {
    return `no C++ compiler (${CXX}) to build the CUDA emulator`;
  }
}

interface Param { decl: string; name: string; koffi: string }
function param(decl: string): Param {
  const name = decl.match(/(\w+)\s*$/)![1];
  const type = decl.slice(0, decl.length - name.length);
  const k = type.includes('*') ? 'void *' : /\bfloat\b/.test(type) ? 'float' : /\blong\b/.test(type) ? 'int64_t' : /\bunsigned\b/.test(type) ? 'uint32_t' : 'int';
  return { decl, name, koffi: k };
}

export type Arg = ArrayBufferView | number | null;
export interface Dim { grid: [number, number?, number?]; block: [number, number?, number?]; smem?: number }

export class EmuModule {
  private fns = new Map<string, (...a: unknown[]) => string>();
  constructor(lib: koffi.IKoffiLib, readonly kernels: Map<string, Param[]>) {
    for (const [name, ps] of kernels) {
      const proto = `const char *emu_launch_${name}(uint32_t gx, uint32_t gy, uint32_t gz, uint32_t bx, uint32_t by, uint32_t bz, int smem${ps.map((p) => `, ${p.koffi} ${p.name}`).join('')})`;
      this.fns.set(name, lib.func(proto) as (...a: unknown[]) => string);
    }
  }
  /** Launches kernel `name` over host arrays (pointers) and numbers; throws the emulator's error. */
  launch(name: string, d: Dim, ...args: Arg[]): void {
    const f = this.fns.get(name), ps = this.kernels.get(name);
    if (!f || !ps) throw new Error(`no kernel ${name}`);
    if (args.length !== ps.length) throw new Error(`${name}: ${args.length} arguments for ${ps.length} parameters`);
    args.forEach((a, i) => {
      const ptr = ps[i].koffi === 'void *';
      if (ptr !== (typeof a !== 'number')) throw new Error(`${name}: argument ${ps[i].name} should be ${ptr ? 'an array' : 'a number'}`);
    });
    const err = f(d.grid[0], d.grid[1] ?? 1, d.grid[2] ?? 1, d.block[0], d.block[1] ?? 1, d.block[2] ?? 1, d.smem ?? 0, ...args);
    if (err) throw new Error(`${name}: ${err}`);
  }
}

const loaded = new Map<string, EmuModule>();

/** Builds (once; cached by content in the temp folder) and loads kernels/<file> for the emulator. */
export function emuModule(file: string, defines: string[] = []): EmuModule {
  const key = `${file} ${defines.join(' ')}`;
  const have = loaded.get(key);
  if (have) return have;
  let src = kernelSource(file);
  // dynamic shared memory: one static buffer (emu.h)
  src = src.replace(/extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w ]+?)\s+(\w+)\[\];/g, '$1* $2 = ($1*)emu_dyn_smem();');
  const kernels = new Map([...kernelParams(src)].map(([name, decls]) => [name, decls.map(param)] as const));
  const launchers = [...kernels].map(([name, ps]) => `extern "C" const char* emu_launch_${name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, int smem${ps.map((p) => `, ${p.decl}`).join('')}) {
  static std::string err;
  if (smem > EMU_DYN_SMEM) { err = "dynamic shared memory over the limit"; return err.c_str(); }
  err = emu::run(dim3{gx, gy, gz}, dim3{bx, by, bz}, [=]() { ${name}(${ps.map((p) => p.name).join(', ')}); });
  return err.c_str();
}`).join('\n');
  const full = `${defines.map((d) => `#define ${d.replace('=', ' ')}`).join('\n')}\n#include "${join(HERE, 'emu.h')}"\n${src}\n${launchers}\n`;
  const hash = createHash('sha256').update(full).update(readFileSync(join(HERE, 'emu.h'))).digest('hex').slice(0, 16);
  const dir = join(tmpdir(), 'rwkvx-emu');
  mkdirSync(dir, { recursive: true });
  const so = join(dir, `${file.replace(/\W/g, '_')}-${hash}.so`);
  if (!existsSync(so)) {
    const cpp = join(dir, `${hash}.cpp`);
    writeFileSync(cpp, full);
    const tmp = `${so}.${process.pid}.tmp`;
    try {
      execFileSync(CXX, ['-std=c++17', '-O1', '-ffp-contract=off', '-U_FORTIFY_SOURCE', '-shared', '-fPIC', '-w', '-o', tmp, cpp], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (e) {
      const msg = (e as { stderr?: Buffer }).stderr?.toString() ?? String(e);
      throw new Error(`building the emulated ${file} failed:\n${msg.split('\n').slice(0, 30).join('\n')}`);
    }
    renameSync(tmp, so);
  }
  const mod = new EmuModule(koffi.load(so), kernels);
  loaded.set(key, mod);
  return mod;
}
