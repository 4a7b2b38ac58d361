/**
 * One pipeline file, several `bun run pipeline` processes on real
 * nats-server processes: the same detections as one process, a hub + leaf
 * topology, a worker killed mid-stream, oversized messages, NATS down at
 * start, and the example consumer reading results.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { startNatsServer, stopAllNatsServers, type NatsServer } from "./support/nats.ts";
import { repoRoot, tempDir } from "./support/paths.ts";
import { freePort } from "./support/ports.ts";
import { startProcess, type Child } from "./support/process.ts";
import { until } from "./support/wait.ts";

const CLIP = join(repoRoot, "pipelines/media/vtest.mp4");

/** The demo chain with placements: camera side on the edge, inference in the cloud. */
const PIPELINE = (out: string, extra = "") => `
name: split
stages:
  - id: cam
    use: ingest
    with: { url: "${CLIP}" }
    placement: edge
  - id: prep
    use: resize
    with: { width: 640, height: 640, mode: letterbox }
    placement: edge
  - id: detect
    use: infer-onnx
    with: { model: yolov5n.onnx, threads: 1 }
    route: least-loaded
    placement: cloud
  - id: nms
    use: nms
    with: { conf: 0.25, iou: 0.45 }
    placement: cloud
  - id: results
    use: sink-jsonl
    with: { path: "${out}", flushInterval: 0.05 }
    placement: edge
${extra}`;

let dir: { path: string; remove(): Promise<void> };
let server: NatsServer;
const children: Child[] = [];
/** Results of the single-process run on the memory bus, the reference for every split run. */
let reference: string[];

function framewire(args: string[]): Child {
  const child = startProcess(["bun", "runtime/cli.ts", "run", ...args], { cwd: repoRoot, env: { FRAMEWIRE_LOG: "info" } });
  children.push(child);
  return child;
}

/** Exits with 0, or fails the test with the process's output. */
async function succeeds(child: Child, what: string): Promise<void> {
  const code = await child.exited;
  if (code !== 0) throw new Error(`${what} exited with ${code}\nstderr: ${child.stderr()}\nstdout: ${child.stdout()}`);
}

async function pipelineFile(name: string, extra = ""): Promise<{ file: string; out: string }> {
  const out = join(dir.path, `${name}.jsonl`);
  const file = join(dir.path, `${name}.yaml`);
  await writeFile(file, PIPELINE(out, extra));
  return { file, out };
}

const lines = async (file: string) => (await readFile(file, "utf8").catch(() => "")).split("\n").filter(Boolean);
/** Result lines without the capture time (it differs between runs), in frame order. */
const results = async (file: string) =>
  (await lines(file))
    .map((l) => JSON.parse(l))
    .sort((a, b) => a.seq - b.seq)
    .map(({ ts: _ts, ...r }) => JSON.stringify(r));

beforeAll(async () => {
  dir = await tempDir("framewire-distributed-");
  server = await startNatsServer();
  const { file, out } = await pipelineFile("single");
  await succeeds(framewire([file, "--frames", "12"]), "the single-process run");
  reference = await results(out);
  expect(reference).toHaveLength(12);
}, 60_000);

afterAll(async () => {
  await Promise.all(children.map((c) => c.stop(1000)));
  await stopAllNatsServers();
  await dir.remove();
});

describe("a pipeline split across processes", () => {
  test("three processes (--stages) give the same detections as one", async () => {
    const { file, out } = await pipelineFile("three");
    const nats = ["--nats", server.url];
    const infer = framewire([file, ...nats, "--stages", "detect,nms"]);
    const sink = framewire([file, ...nats, "--stages", "results"]);
    const camera = framewire([file, ...nats, "--stages", "cam,prep", "--frames", "12"]);
    await succeeds(camera, "cam,prep");
    // Downstream processes finish what is in flight and exit by themselves.
    await succeeds(infer, "detect,nms");
    await succeeds(sink, "results");
    expect(await results(out)).toEqual(reference);
    expect(infer.stdout()).toContain("stopped (upstream stages finished)");
  }, 60_000);

  test("hub and leaf node: ingest on the edge server, inference on the hub (--placement)", async () => {
    const hub = await startNatsServer({ leafListen: true });
    const edge = await startNatsServer({ leafRemotes: [hub.leafPort!] });
    await hub.waitFor(/Leafnode connection created/);
    const { file, out } = await pipelineFile("leaf");
    const cloud = framewire([file, "--nats", hub.url, "--placement", "cloud"]);
    const store = framewire([file, "--nats", edge.url, "--placement", "edge", "--frames", "12"]);
    await succeeds(store, "the edge process");
    await succeeds(cloud, "the cloud process");
    expect(await results(out)).toEqual(reference);
    expect(store.stderr()).toMatch(/worker \S+ \(cloud\) joined stage detect/);
    await hub.dispose();
    await edge.dispose();
  }, 60_000);

  test("one of two inference workers killed mid-stream: the stream goes on, no frame is lost", async () => {
    const { file, out } = await pipelineFile("kill");
    const nats = ["--nats", server.url];
    const b1 = framewire([file, ...nats, "--placement", "cloud", "--worker-id", "b1"]);
    const b2 = framewire([file, ...nats, "--placement", "cloud", "--worker-id", "b2"]);
    const edge = framewire([file, ...nats, "--placement", "edge", "--frames", "30"]);
    await edge.waitFor(/worker b2 \(cloud\) joined stage detect/, 30_000);
    await until(() => readFileSync(out, "utf8").split("\n").length > 6, "6 results", 30_000);
    b2.signal("SIGKILL");
    await succeeds(edge, "the edge process");
    await succeeds(b1, "the surviving worker");
    const seqs = new Set((await lines(out)).map((l) => JSON.parse(l).seq));
    expect([...seqs].sort((a, b) => a - b)).toEqual(Array.from({ length: 30 }, (_, i) => i));
    // Frames b2 had taken (or was being sent) went to b1.
    expect(edge.stderr()).toMatch(/worker b2 of stage detect left|no responders: 'fw\.split\._w\.detect\.b2'/);
    expect(edge.stderr()).toContain("retrying on another worker");
  }, 90_000);

  test("bus: as an object with credentials, and a JPEG link from the camera side", async () => {
    const auth = await startNatsServer({ extra: "authorization { users: [ { user: cam, password: s3cret } ] }" });
    const out = join(dir.path, "jpeg.jsonl");
    const file = join(dir.path, "jpeg.yaml");
    const text = PIPELINE(out)
      .replace("name: split\n", `name: split\nbus: { url: "${auth.url}", user: cam, password: "\${PW}" }\n`)
      .replace("    placement: edge\n", "    placement: edge\n    link: { encoding: jpeg, quality: 90 }\n");
    await writeFile(file, text);
    const env = { PW: "s3cret" };
    const cloud = startProcess(["bun", "runtime/cli.ts", "run", file, "--stages", "prep,detect,nms"], { cwd: repoRoot, env });
    const edge = startProcess(["bun", "runtime/cli.ts", "run", file, "--stages", "cam,results", "--frames", "12"], { cwd: repoRoot, env });
    children.push(cloud, edge);
    await succeeds(edge, "the camera process");
    await succeeds(cloud, "the inference process");
    const got = (await results(out)).map((l) => JSON.parse(l));
    const want = reference.map((l) => JSON.parse(l));
    expect(got.map((r) => r.seq)).toEqual(want.map((r) => r.seq));
    // JPEG q90 moves scores and boxes a little; the detections stay about the same.
    const count = (rs: { detections: unknown[] }[]) => rs.reduce((a, r) => a + r.detections.length, 0);
    expect(Math.abs(count(got) - count(want))).toBeLessThanOrEqual(count(want) * 0.15);
    await auth.dispose();
  }, 60_000);

  test("a message over the server's max_payload: a clear error naming the limit and the fix, then exit", async () => {
    const small = await startNatsServer({ maxPayload: "1MB" });
    const { file } = await pipelineFile("big");
    const camera = framewire([file, "--nats", small.url, "--stages", "cam,prep", "--frames", "3"]);
    await camera.exited;
    expect(camera.stderr()).toContain("max_payload is 1048576: raise max_payload in the server config");
    // in, out, dropped, failed: a frame that could not be sent on is failed, not also counted out (in = out + dropped + failed).
    expect(camera.stdout()).toMatch(/prep\s+resize\s+3\s+0\s+0\s+3/);
    await small.dispose();
  }, 60_000);

  test("NATS down at start: the process says so, retries, and runs once the server is up", async () => {
    const port = await freePort();
    const { file, out } = await pipelineFile("late");
    const run = framewire([file, "--nats", `nats://127.0.0.1:${port}`, "--frames", "3"]);
    await run.waitFor(new RegExp(`NATS nats://127\\.0\\.0\\.1:${port} unreachable .*retry #1`), 20_000);
    const late = await startNatsServer({ port });
    await succeeds(run, "the pipeline");
    expect(await results(out)).toEqual(reference.slice(0, 3));
    await late.dispose();
  }, 60_000);
});

describe("examples/consumer.ts", () => {
  test("receives each frame's detections as plain JSON from a sink-nats stage", async () => {
    const { file } = await pipelineFile("consumer", ["  - id: publish", "    use: sink-nats", "    in: nms", "    with: { subject: shop.results }"].join("\n"));
    const consumer = startProcess(["bun", "examples/consumer.ts", "--nats", server.url, "--subject", "shop.results", "--count", "5"], { cwd: repoRoot });
    children.push(consumer);
    await consumer.waitFor(/listening on shop\.results\.>/);
    await succeeds(framewire([file, "--nats", server.url, "--frames", "5"]), "the pipeline");
    await succeeds(consumer, "the consumer");
    const got = consumer.stdout().trim().split("\n").map((l) => JSON.parse(l));
    const expected = reference.slice(0, 5).map((l) => JSON.parse(l));
    expect(got.map((r) => r.seq)).toEqual([0, 1, 2, 3, 4]);
    expect(got.map((r) => r.detections)).toEqual(expected.map((r) => r.detections.length));
    expect(got[0].subject).toBe(`shop.results.${expected[0].stream}.frames`);
  }, 60_000);
});
