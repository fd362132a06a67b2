// BullMQ's side of `benches/jobs.rs`: the same scenarios on the same Redis.
// Run: npm install bullmq@5 (in this folder or a scratch one), then
//      REDIS_URL=redis://127.0.0.1:6379/ node bench.mjs
import { Queue, Worker } from 'bullmq';

const JOBS = 20000, IN_FLIGHT = 64, CONCURRENCY = 64;
const url = new URL(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379/');
const connection = { host: url.hostname, port: Number(url.port || 6379) };
const prefix = `bullbench-${Date.now()}`;
const queue = new Queue('bench', { connection, prefix });
const data = { repository: 42, config: { depth: 3 } };

let next = 0;
let started = performance.now();
await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
  while (next < JOBS) { next += 1; await queue.add('bench', data); }
}));
const add = (performance.now() - started) / 1000;

started = performance.now();
const worker = new Worker('bench', async () => null, { connection, prefix, concurrency: CONCURRENCY });
while ((await queue.getJobCounts('completed')).completed < JOBS) {
  await new Promise((r) => setTimeout(r, 5));
}
const processed = (performance.now() - started) / 1000;
await worker.close();

console.log(`| add ${JOBS} jobs, ${IN_FLIGHT} in flight | ${Math.round(JOBS / add)} jobs/s |`);
console.log(`| process ${JOBS} no-op jobs, concurrency ${CONCURRENCY} | ${Math.round(JOBS / processed)} jobs/s |`);
await queue.obliterate({ force: true });
await queue.close();
