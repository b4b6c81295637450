/**
 * Worker thread entry for the matmul pool (pool.ts). Started by the pool with this file's own
 * extension (.ts under tsx, .js when compiled); runs job shares until the pool shuts down.
 */
import { workerData } from 'node:worker_threads';
import { workerLoop, type WorkerInit } from './pool.js';
import { initWorker, runShare } from './matmul.js';
import { heapView } from './shared.js';

const init = workerData as WorkerInit;
initWorker(init.extra);
workerLoop(init, heapView, runShare);
