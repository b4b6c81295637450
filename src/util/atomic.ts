/**
 * Writing files so that readers see either the old content or the complete new one, never a torn
 * file: write to a temp name in the same directory (same filesystem, so rename is atomic), fsync,
 * then rename over the target. A crash or error leaves the target untouched and the temp removed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { UserError } from './errors.js';

export interface AtomicFile {
  /** Descriptor of the temp file; write to it with fs.writeSync. */
  readonly fd: number;
  readonly tempPath: string;
  readonly path: string;
  /** fsync, close and rename onto `path`. */
  commit(): void;
  /** Close and delete the temp file; safe to call more than once and after a failed commit. */
  abort(): void;
}

/** Errors that mean the user asked for something impossible (bad directory, no permission, full disk). */
const USER_CODES = new Set(['ENOENT', 'ENOTDIR', 'EACCES', 'EPERM', 'EROFS', 'ENOSPC', 'EISDIR', 'EDQUOT', 'ENAMETOOLONG']);

function wrap(target: string, e: unknown): unknown {
  const code = (e as NodeJS.ErrnoException)?.code;
  if (code !== undefined && USER_CODES.has(code)) return new UserError(`${target}: cannot write (${code})`);
  return e;
}

export function openAtomic(target: string): AtomicFile {
  const dir = path.dirname(target);
  const tempPath = path.join(dir, `.${path.basename(target)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  let fd: number;
  try {
    fd = fs.openSync(tempPath, 'wx', 0o644);
  } catch (e) {
    throw wrap(target, e);
  }
  let open = true;
  let done = false;
  const closeQuietly = (): void => {
    if (open) {
      open = false;
      try {
        fs.closeSync(fd);
      } catch {
        // already unusable; the unlink below is what matters
      }
    }
  };
  return {
    fd, tempPath, path: target,
    commit(): void {
      if (done) throw new Error(`openAtomic(${target}): already committed or aborted`);
      try {
        fs.fsyncSync(fd);
        open = false;
        fs.closeSync(fd);
        fs.renameSync(tempPath, target);
        done = true;
      } catch (e) {
        this.abort();
        throw wrap(target, e);
      }
      syncDir(dir);
    },
    abort(): void {
      closeQuietly();
      if (!done) {
        done = true;
        try {
          fs.unlinkSync(tempPath);
        } catch {
          // it may never have been created, or is already gone
        }
      }
    },
  };
}

/** Write `data` in full to `fd`, in pieces (writeSync takes at most 2 GiB at a time). */
export function writeAll(fd: number, data: ArrayBufferView, target = 'file'): void {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const piece = 64 * 1024 * 1024;
  let done = 0;
  try {
    while (done < bytes.length) done += fs.writeSync(fd, bytes, done, Math.min(piece, bytes.length - done));
  } catch (e) {
    throw wrap(target, e);
  }
}

export function writeFileAtomic(target: string, data: string | ArrayBufferView): void {
  const f = openAtomic(target);
  try {
    writeAll(f.fd, typeof data === 'string' ? Buffer.from(data, 'utf8') : data, target);
    f.commit();
  } catch (e) {
    f.abort();
    throw e;
  }
}

/** Make the rename itself durable. Not possible on every platform/filesystem, hence best effort. */
function syncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // e.g. Windows cannot open directories
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}
