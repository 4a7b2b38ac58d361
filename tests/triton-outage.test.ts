import { afterAll, expect, setDefaultTimeout, test } from "bun:test";
import { Executor } from "../runtime/engine/executor.ts";
import { MemoryBus } from "../runtime/bus/memory.ts";
import { captureLog, parse, registryWith } from "./support/pipeline.ts";
import { modelFile, sampleVideo } from "./support/paths.ts";
import { startServe, type ServeProcess } from "./support/serve.ts";
import { collected, testOperators } from "./support/test-operators.ts";
import { until } from "./support/wait.ts";

setDefaultTimeout(120_000);

let server: ServeProcess | undefined;
afterAll(async () => {
  await server?.stop();
});

test("server killed: retries, then frames count as failed while the pipeline runs on; it recovers when the server returns", async () => {
  server = await startServe(["--model", modelFile]);
  const port = server.port;
  const spec = parse(
    `name: outage
stages:
  - { id: cam, use: ingest, with: { url: "${sampleVideo}", realtime: true, loop: true, fps: 4, width: 320, height: 240 } }
  - { id: prep, use: resize, with: { width: 640, height: 640 } }
  - { id: detect, use: infer-triton, with: { url: "${server.url}", model: yolov5n, retries: 2, retryDelay: 0.05, timeout: 5 } }
  - { id: nms, use: nms }
  - { id: out, use: test-collect, with: { key: outage } }
`,
    await registryWith(...testOperators),
  );
  const log = captureLog("outage");
  const bus = new MemoryBus();
  const exec = new Executor(spec, bus, { log });
  await exec.start();
  const stage = (id: string) => exec.live().find((s) => s.id === id)!.stats;
  const out = () => collected.get("outage")!.length;
  try {
    await until(() => out() >= 3, "detections before the outage");

    await server.kill();
    const sentAtKill = stage("cam").sent;
    await until(() => stage("detect").failed >= 3, "failed frames during the outage");
    // Each failed frame was tried three times.
    expect(log.text()).toMatch(/infer yolov5n: http:\/\/127\.0\.0\.1:\d+ failed after 3 attempt\(s\): ECONN/);
    expect(log.text()).toContain("frames fail until it answers again");
    // The source kept going: the pipeline did not stall on the dead server.
    expect(stage("cam").sent).toBeGreaterThan(sentAtKill);

    server = await startServe(["--model", modelFile], port);
    const before = out();
    await until(() => out() >= before + 3, "detections after the server came back");
    expect(log.text()).toContain(`${server.url} answers again`);
    const last = collected.get("outage")!.at(-1)!;
    expect(last.kind === "frame" && last.detections!.some((d) => d.class === "person")).toBe(true);
  } finally {
    exec.stop("test done");
    await exec.done;
    await bus.close();
    // The restarted server is this test's: stopped here, not left to the next test's `server =`.
    await server?.stop();
    server = undefined;
  }
});

test("server down at start: after startTimeout the stage runs, frames fail (counted, one warning), and it works once the server comes up", async () => {
  const { freePort } = await import("./support/ports.ts");
  const port = await freePort();
  const spec = parse(
    `name: late
stages:
  - { id: cam, use: ingest, with: { url: "${sampleVideo}", realtime: true, loop: true, fps: 4, width: 320, height: 240 } }
  - { id: prep, use: resize, with: { width: 640, height: 640 } }
  - { id: detect, use: infer-triton, with: { url: "http://127.0.0.1:${port}", model: yolov5n, retries: 0, retryDelay: 0.05, retryMaxDelay: 0.5, timeout: 5, startTimeout: 0.3 } }
  - { id: nms, use: nms }
  - { id: out, use: test-collect, with: { key: late } }
`,
    await registryWith(...testOperators),
  );
  const log = captureLog("late");
  const bus = new MemoryBus();
  const exec = new Executor(spec, bus, { log });
  // Starting does not fail on the dead server.
  await exec.start();
  const stage = (id: string) => exec.live().find((s) => s.id === id)!.stats;
  const out = () => collected.get("late")?.filter((m) => m.kind === "frame").length ?? 0;
  try {
    expect(log.text()).toMatch(new RegExp(`waiting up to 0.3 s for model yolov5n on http://127.0.0.1:${port} \\(`));
    await until(() => stage("detect").failed >= 3, "failed frames while the server is down");
    expect(log.lines.filter((l) => l.includes("the stage runs: frames fail (counted) until it answers"))).toHaveLength(1);
    expect(out()).toBe(0);
    server = await startServe(["--model", modelFile], port);
    await until(() => out() >= 3, "detections once the server is up");
    expect(log.text()).toContain(`http://127.0.0.1:${port} answers again`);
    expect(log.text()).toContain(`yolov5n ready on http://127.0.0.1:${port}`);
  } finally {
    exec.stop("test done");
    await exec.done;
    await bus.close();
    await server?.stop();
    server = undefined;
  }
});

test("bun run pipeline against a dead server: a one-line warning, failed frames in the summary, exit 1, no stack trace", async () => {
  const { freePort } = await import("./support/ports.ts");
  const { repoRoot, tempDir } = await import("./support/paths.ts");
  const { startProcess } = await import("./support/process.ts");
  const { join } = await import("node:path");
  const { writeFile } = await import("node:fs/promises");
  const dir = await tempDir("framewire-triton-down-");
  const file = join(dir.path, "down.yaml");
  await writeFile(
    file,
    `name: down
stages:
  - { id: cam, use: ingest, with: { url: "${sampleVideo}", fps: 4, width: 320, height: 240 } }
  - { id: prep, use: resize, with: { width: 640, height: 640 } }
  - { id: detect, use: infer-triton, with: { url: "http://127.0.0.1:${await freePort()}", model: yolov5n, retries: 0, startTimeout: 0.2 } }
  - { id: nms, use: nms }
  - { id: results, use: sink-jsonl, with: { path: "${join(dir.path, "out.jsonl")}" } }
`,
  );
  const c = startProcess([process.execPath, "runtime/cli.ts", "run", file, "--frames", "5"], { cwd: repoRoot });
  try {
    expect(await c.exited).toBe(1);
    const all = c.stdout() + c.stderr();
    expect(all).not.toContain("TritonUnavailableError");
    expect(all).not.toMatch(/^\s+at /m);
    expect(all).toContain("the stage runs: frames fail (counted) until it answers");
    // The summary's detect row: 5 in, 0 out, 5 failed.
    expect(c.stdout()).toMatch(/^detect\s+infer-triton\s+5\s+0\s+0\s+5\s/m);
  } finally {
    await c.stop();
    await dir.remove();
  }
});
