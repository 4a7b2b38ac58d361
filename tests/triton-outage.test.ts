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
  }
});
