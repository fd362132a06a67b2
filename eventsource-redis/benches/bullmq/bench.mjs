// BullMQ's side of `benches/jobs.rs`: the same scenarios on the same Redis, run by that bench
// (it copies this file next to a node_modules with bullmq and reads the JSON it prints).
// By hand: npm install bullmq@5 (in this folder or a scratch one), then
//      REDIS_URL=redis://127.0.0.1:6379/ node bench.mjs
import { loadavg } from 'node:os';
import { Queue, Worker } from 'bullmq';

const env = (name, fallback) => Number(process.env[name] ?? fallback);
const JOBS = env('JOBS', 10000), RATE = env('RATE', 1000), PACED_MS = env('PACED_MS', 5000);
const LATENCY_CONCURRENCY = env('LATENCY_CONCURRENCY', 16);
const url = new URL(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379/');
const connection = { host: url.hostname, port: Number(url.port || 6379) };
const prefix = `bullbench-${Date.now()}`;
// The seed's options (ADR-005).
const defaultJobOptions = {
  attempts: 3, backoff: { type: 'exponential', delay: 1000 }, removeOnComplete: 100,
};
const data = { repository: 42, config: { depth: 3 } };
const now = () => (performance.timeOrigin + performance.now()) * 1000; // epoch µs
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const out = {};
const load = () => Number(loadavg()[0].toFixed(2));

async function add(queue, producers) {
  let next = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: producers }, async () => {
    while (next < JOBS) { next += 1; await queue.add('bench', data); }
  }));
  return JOBS / ((performance.now() - started) / 1000);
}

async function processAll(name, concurrency) {
  let done = 0;
  const started = performance.now();
  const worker = new Worker(name, async () => null, { connection, prefix, concurrency });
  worker.on('completed', () => { done += 1; });
  while (done < JOBS) await sleep(2);
  const rate = JOBS / ((performance.now() - started) / 1000);
  await worker.close();
  return rate;
}

const queues = ['p1', 'p16', 'lat'].map((name) => new Queue(name, { connection, prefix, defaultJobOptions }));
out.add1 = await add(queues[0], 1); out.load_add1 = load();
out.add16 = await add(queues[1], 16); out.load_add16 = load();
out.process1 = await processAll('p1', 1); out.load_process1 = load();
out.process16 = await processAll('p16', 16); out.load_process16 = load();

// add → start at a paced RATE jobs/s.
const lags = [];
const worker = new Worker('lat', async (job) => { lags.push((now() - job.data.t) / 1000); return null; },
  { connection, prefix, concurrency: LATENCY_CONCURRENCY });
await worker.waitUntilReady();
await sleep(300);
const total = RATE * PACED_MS / 1000;
let sent = 0;
const started = performance.now();
while (sent < total) {
  await sleep(1);
  const due = Math.min(total, Math.floor((performance.now() - started) / 1000 * RATE));
  for (; sent < due; sent += 1) queues[2].add('bench', { repository: 42, t: now() });
}
while (lags.length < total) await sleep(5);
await worker.close();
lags.sort((a, b) => a - b);
const pct = (p) => lags[Math.round((lags.length - 1) * p)];
out.p50 = pct(0.5); out.p99 = pct(0.99); out.load_p50 = out.load_p99 = load();

for (const queue of queues) { await queue.obliterate({ force: true }); await queue.close(); }
console.log(JSON.stringify(out));
