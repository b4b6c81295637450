#!/usr/bin/env node
/** The `rwkvx` command. User errors print one line and exit 1; anything else is a bug, shown in full. */
import { Command, CommanderError } from 'commander';
import { UserError } from '../util/errors.js';
import { shutdownPool } from '../backend/cpu/matmul.js';
import * as info from './commands/info.js';
import * as tokenize from './commands/tokenize.js';
import * as forward from './commands/forward.js';
import * as generate from './commands/generate.js';
import * as convert from './commands/convert.js';
import * as grad from './commands/grad.js';
import * as data from './commands/data.js';
import * as trainCmd from './commands/train.js';
import { VERSION } from '../version.js';

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('rwkvx')
    .description('RWKV-7 and RWKV-X language models in TypeScript')
    .version(VERSION)
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  for (const m of [info, tokenize, forward, generate, convert, data, grad, trainCmd]) m.register(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (e instanceof UserError) {
      process.stderr.write(`rwkvx: error: ${e.message}\n`);
      return 1;
    }
    // a failed CUDA or cuBLAS call (a kernel fault, a driver error): one line naming the call, not a stack
    if (e instanceof Error && (e.name === 'CudaError' || e.message.startsWith('cuBLAS '))) {
      process.stderr.write(`rwkvx: error: ${e.message.split('\n')[0]}\n`);
      return 1;
    }
    throw e;
  } finally {
    shutdownPool();
  }
}

// `rwkvx generate … | head` closes stdout early: that is the reader's choice, not an error.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});
process.exitCode = await main(process.argv.slice(2));
