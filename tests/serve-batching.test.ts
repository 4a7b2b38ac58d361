import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { decodeInferResponse, encodeInferRequest, HEADER_LENGTH } from "../runtime/inference/kserve.ts";
import { Batcher, BatchTooLargeError, OverloadedError, ShuttingDownError, type BatcherOptions, type Runner } from "../runtime/serve/batcher.ts";
import { tempDir } from "./support/paths.ts";
import { json, startServe, writeIdentityModel, type ServeProcess } from "./support/serve.ts";

setDefaultTimeout(60_000);

/** A runner that records each call's batch and waits until the test releases it; output = input × 10. */
function gatedRunner() {
  const calls: { batch: number; input: Float32Array; release(): void }[] = [];
  const run: Runner = (input, batch) =>
    new Promise((resolve) => {
      calls.push({ batch, input: input.slice(), release: () => resolve({ data: input.map((x) => x * 10), dims: [batch, input.length / batch] }) });
    });
  return { run, calls };
}

const opts = (o: Partial<BatcherOptions>): BatcherOptions => ({ itemSize: 2, dynamic: true, maxBatch: 8, preferred: [], maxQueueDelayMs: 10, maxQueue: 64, ...o });
const item = (k: number) => new Float32Array([k, k + 0.5]);
const settle = () => new Promise((r) => setTimeout(r, 0));

describe("Batcher", () => {
  test("fixed batch: one request per call, as many at once as there are instances", async () => {
    const a = gatedRunner();
    const b = gatedRunner();
    const batcher = new Batcher([a.run, b.run], opts({ dynamic: false, maxBatch: 1 }));
    const results = [1, 2, 3].map((k) => batcher.submit(item(k), 1));
    await settle();
    expect([a.calls.length, b.calls.length, batcher.queued, batcher.busy]).toEqual([0, 1, 1, 2].slice(0, 0).concat([1, 1, 1, 2]));
    b.calls[0].release();
    await settle();
    // The freed instance takes the waiting request.
    expect(b.calls.length).toBe(2);
    a.calls[0].release();
    b.calls[1].release();
    const out = await Promise.all(results);
    expect(out.map((r) => [...r.data])).toEqual([
      [10, 15],
      [20, 25],
      [30, 35],
    ]);
    expect(out.every((r) => r.batchSize === 1 && r.dims.join() === "1,2")).toBe(true);
  });

  test("dynamic: a preferred size goes at once, and each request gets its own slice back", async () => {
    const r = gatedRunner();
    const batcher = new Batcher([r.run], opts({ preferred: [4], maxQueueDelayMs: 60_000 }));
    const results = [1, 2, 3, 4].map((k) => batcher.submit(item(k), 1));
    await settle();
    expect(r.calls.map((c) => c.batch)).toEqual([4]);
    expect([...r.calls[0].input]).toEqual([1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5]);
    r.calls[0].release();
    const out = await Promise.all(results);
    expect(out.map((x) => [...x.data])).toEqual([
      [10, 15],
      [20, 25],
      [30, 35],
      [40, 45],
    ]);
    expect(out.map((x) => x.batchSize)).toEqual([4, 4, 4, 4]);
  });

  test("dynamic: full batches while the instance is busy, the rest after the queue delay", async () => {
    const r = gatedRunner();
    const batcher = new Batcher([r.run], opts({ maxBatch: 2, preferred: [2], maxQueueDelayMs: 5 }));
    const results = [1, 2, 3, 4, 5].map((k) => batcher.submit(item(k), 1));
    await settle();
    expect(r.calls.map((c) => c.batch)).toEqual([2]);
    r.calls[0].release();
    await settle();
    expect(r.calls.map((c) => c.batch)).toEqual([2, 2]);
    r.calls[1].release();
    // One request left, below every preferred size: it goes once it has waited maxQueueDelayMs.
    while (r.calls.length < 3) await new Promise((res) => setTimeout(res, 5));
    r.calls[2].release();
    expect((await Promise.all(results)).map((x) => x.batchSize)).toEqual([2, 2, 2, 2, 1]);
  });

  test("a request carrying several items counts them all, and never splits", async () => {
    const r = gatedRunner();
    const batcher = new Batcher([r.run], opts({ maxBatch: 4, preferred: [3, 4], maxQueueDelayMs: 60_000 }));
    const two = batcher.submit(new Float32Array([1, 1, 2, 2]), 2);
    const three = batcher.submit(new Float32Array([3, 3, 4, 4, 5, 5]), 3);
    await settle();
    // 2 + 3 > 4: the first goes alone rather than splitting the second.
    expect(r.calls.map((c) => c.batch)).toEqual([2]);
    r.calls[0].release();
    await settle();
    expect(r.calls.map((c) => c.batch)).toEqual([2, 3]);
    r.calls[1].release();
    expect((await two).dims).toEqual([2, 2]);
    expect([...(await three).data]).toEqual([30, 30, 40, 40, 50, 50]);
  });

  test("a full queue refuses with OverloadedError; close() runs what waits, then refuses", async () => {
    const r = gatedRunner();
    const batcher = new Batcher([r.run], opts({ dynamic: false, maxBatch: 1, maxQueue: 2 }));
    const running = batcher.submit(item(1), 1);
    await settle();
    const queued = [batcher.submit(item(2), 1), batcher.submit(item(3), 1)];
    await expect(batcher.submit(item(4), 1)).rejects.toBeInstanceOf(OverloadedError);
    const closed = batcher.close();
    await expect(batcher.submit(item(5), 1)).rejects.toBeInstanceOf(ShuttingDownError);
    for (let i = 0; i < 3; i++) {
      while (r.calls.length <= i) await settle();
      r.calls[i].release();
    }
    await closed;
    expect((await Promise.all([running, ...queued])).map((x) => x.data[0])).toEqual([10, 20, 30]);
  });

  test("a request over maxBatch is refused at once (it used to sit in the queue forever and hold back every request behind it)", async () => {
    const r = gatedRunner();
    const batcher = new Batcher([r.run], opts({ maxBatch: 8, preferred: [], maxQueueDelayMs: 1 }));
    const big = new Float32Array(10 * 2).fill(1);
    const err = await batcher.submit(big, 10).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(BatchTooLargeError);
    expect(err!.message).toBe("a request of 10 items exceeds the model's max_batch_size 8; split it into requests of at most 8");
    expect(batcher.queued).toBe(0);
    // The request after it runs: nothing was left blocking the queue.
    const next = batcher.submit(item(3), 1);
    while (!r.calls.length) await settle();
    expect(r.calls[0].batch).toBe(1);
    r.calls[0].release();
    expect([...(await next).data]).toEqual([30, 35]);
    // Exactly maxBatch items fit.
    const full = batcher.submit(new Float32Array(8 * 2).fill(2), 8);
    while (r.calls.length < 2) await settle();
    expect(r.calls[1].batch).toBe(8);
    r.calls[1].release();
    expect((await full).batchSize).toBe(8);
  });

  test("a failing batch rejects every request in it", async () => {
    const batcher = new Batcher([() => Promise.reject(new Error("session died"))], opts({ preferred: [2], maxQueueDelayMs: 60_000 }));
    const out = await Promise.allSettled([batcher.submit(item(1), 1), batcher.submit(item(2), 1)]);
    expect(out.map((o) => (o.status === "rejected" ? (o.reason as Error).message : "ok"))).toEqual(["session died", "session died"]);
  });
});

describe("framewire serve with a dynamic-batch model", () => {
  let server: ServeProcess;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  beforeAll(async () => {
    dir = await tempDir();
    const model = await writeIdentityModel(dir.path, 4);
    // A long queue delay: the batch below can only form through the preferred size.
    server = await startServe(["--model", model, "--max-batch", "8", "--preferred-batch", "4", "--max-queue-delay-us", "10000000"]);
  });
  afterAll(async () => {
    await server?.stop();
    await dir?.remove();
  });

  const infer = async (rows: number[][], binary: boolean) => {
    const req = encodeInferRequest([{ name: "x", datatype: "FP32", shape: [rows.length, 4], data: new Float32Array(rows.flat()) }], ["y"], binary);
    const res = await fetch(`${server.url}/v2/models/identity/infer`, { method: "POST", body: req.body, headers: req.headers });
    if (res.status !== 200) return { status: res.status, error: (await json(res)).error as string };
    const [y] = decodeInferResponse(new Uint8Array(await res.arrayBuffer()), res.headers.get(HEADER_LENGTH));
    return { status: 200, shape: y.shape, rows: Array.from({ length: y.shape[0] }, (_, i) => [...y.data.subarray(i * 4, i * 4 + 4)]) };
  };

  test("announces dynamic batching; metadata has a -1 batch axis; /detect is not offered", async () => {
    expect(server.child.stderr()).toContain("identity version 1: dynamic batching on (max batch 8, preferred 4, max queue delay 10000000 µs)");
    const meta = await json(await fetch(`${server.url}/v2/models/identity`));
    expect(meta.inputs).toEqual([{ name: "x", datatype: "FP32", shape: [-1, 4] }]);
    expect(meta.outputs).toEqual([{ name: "y", datatype: "FP32", shape: [-1, 4] }]);
    const detect = await fetch(`${server.url}/detect`, { method: "POST", body: "x", headers: { "content-type": "image/jpeg" } });
    expect(detect.status).toBe(404);
    expect((await json(detect)).error).toContain("POST /detect needs an image detector");
  });

  test("four concurrent requests run as one batch of four, each answered with its own rows", async () => {
    const sent = [1, 2, 3, 4].map((k) => [[k, k + 0.25, k + 0.5, k + 0.75]]);
    const answers = await Promise.all(sent.map((rows, i) => infer(rows, i % 2 === 0)));
    expect(answers.map((a) => a.rows)).toEqual(sent);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    // Warm-up runs outside the batcher: the only batch is the one of four.
    expect(metrics).toContain('framewire_serve_batch_size_bucket{le="2",model="identity",version="1"} 0');
    expect(metrics).toContain('framewire_serve_batch_size_bucket{le="4",model="identity",version="1"} 1');
    expect(metrics).toContain('framewire_serve_batch_size_count{model="identity",version="1"} 1');
  });

  test("a request of 4 rows is a preferred batch by itself; more than max batch is a 400", async () => {
    const rows = [0, 1, 2, 3].map((k) => [k, k, k, k]);
    expect(await infer(rows, true)).toEqual({ status: 200, shape: [4, 4], rows });
    const tooMany = await infer(Array.from({ length: 9 }, () => [0, 0, 0, 0]), true);
    expect(tooMany).toEqual({ status: 400, error: "input x has shape [-1,4] (a batch of 1..8), got [9,4]" });
  });
});
