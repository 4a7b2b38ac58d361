/**
 * `bun run status` against a real nats-server: a pipeline split over two
 * processes (camera side and detector side) shows up with its stages,
 * workers, load and model version; an empty cluster says so.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { modelVersion } from "../runtime/inference/onnx-model.ts";
import type { ClusterStatus } from "../runtime/observe/cluster.ts";
import { CLIP, scaledModel } from "./lifecycle-support.ts";
import { scrape, startPipelineProcess, type PipelineProcess } from "./support/http.ts";
import { startNatsServer, stopAllNatsServers, type NatsServer } from "./support/nats.ts";
import { repoRoot, tempDir } from "./support/paths.ts";
import { startProcess } from "./support/process.ts";
import { until } from "./support/wait.ts";

setDefaultTimeout(60_000);

let dir: Awaited<ReturnType<typeof tempDir>>;
let nats: NatsServer;
let model: string;
const procs: PipelineProcess[] = [];

beforeAll(async () => {
  dir = await tempDir();
  model = join(dir.path, "tiny.onnx");
  await writeFile(model, scaledModel(1));
  nats = await startNatsServer();
});
afterAll(async () => {
  await Promise.all(procs.map((p) => p.child.stop()));
  await stopAllNatsServers();
  await dir.remove();
});

/** `bun runtime/cli.ts status ...args`: exit code and stdout. */
async function status(args: string[]): Promise<{ code: number; out: string }> {
  const child = startProcess([process.execPath, "runtime/cli.ts", "status", ...args], { cwd: repoRoot });
  const code = await child.exited;
  return { code, out: child.stdout() };
}

describe("bun run status", () => {
  test("an empty cluster: nothing answers, and it says so", async () => {
    const r = await status(["--nats", nats.url, "--wait", "0.3"]);
    expect(r.code).toBe(0);
    expect(r.out.trim()).toBe(`no running framewire pipelines answered on ${nats.url}`);
  });

  test("a pipeline split over two processes: stages, workers, load and versions", async () => {
    const file = join(dir.path, "split.yaml");
    await writeFile(
      file,
      `
name: split
stages:
  - id: cam
    use: ingest
    with: { url: "${CLIP}", width: 64, height: 48, loop: true }
    placement: edge
  - id: prep
    use: resize
    with: { width: 32, height: 32, mode: letterbox }
    placement: edge
  - id: detect
    use: infer-onnx
    with: { model: "${model}" }
    route: least-loaded
    placement: cloud
  - id: nms
    use: nms
    placement: cloud
  - id: out
    use: sink-jsonl
    with: { path: "${join(dir.path, "split.jsonl")}" }
    placement: cloud
`,
    );
    const cloud = await startPipelineProcess(file, ["--nats", nats.url, "--placement", "cloud", "--stages", "detect,nms,out", "--worker-id", "cloud-1"]);
    procs.push(cloud);
    const edge = await startPipelineProcess(file, ["--nats", nats.url, "--placement", "edge", "--stages", "cam,prep", "--worker-id", "edge-1"]);
    procs.push(edge);
    await until(() => edge.child.stderr().includes("worker cloud-1 (cloud) joined stage detect"), "the edge to see the detector");

    const r = await status(["--nats", nats.url, "--json"]);
    expect(r.code).toBe(0);
    const s = JSON.parse(r.out) as ClusterStatus;
    expect(s.processes.map((p) => `${p.pipeline}@${p.worker}`)).toEqual(["split@cloud-1", "split@edge-1"]);
    const version = await modelVersion(model);
    const cloudStatus = s.processes[0];
    expect(cloudStatus.stages.map((x) => x.id)).toEqual(["detect", "nms", "out"]);
    expect(cloudStatus.models).toMatchObject([{ stage: "detect", active: { model: "tiny.onnx", version }, canary: null }]);
    const detect = s.adverts.find((a) => a.stage === "detect" && a.worker === "cloud-1")!;
    expect(detect).toMatchObject({ pipeline: "split", placement: "cloud" });
    expect(detect.capacity).toBeGreaterThan(0);
    expect(s.adverts.map((a) => `${a.stage}@${a.worker}`).sort()).toEqual(["cam@edge-1", "detect@cloud-1", "nms@cloud-1", "out@cloud-1", "prep@edge-1"]);

    const text = await status(["--nats", nats.url]);
    const lines = text.out.trim().split("\n");
    expect(lines[0]).toMatch(/^2 process\(es\) on nats:\/\/127\.0\.0\.1:\d+: split@cloud-1 \(\S+\) ready, split@edge-1 \(\S+\) ready$/);
    expect(lines[1].split(/\s{2,}/)).toEqual(["PIPELINE", "STAGE", "WORKER", "PLACEMENT", "LOAD", "LATENCY", "CPU", "FPS", "MODEL VERSIONS"]);
    const row = lines.find((l) => /^split\s+detect\s+cloud-1/.test(l));
    expect(row).toBeDefined();
    expect(row).toMatch(new RegExp(`cloud\\s+\\d+/\\d+ \\(\\d+ %\\)\\s+[\\d.]+ ms\\s+\\d+ %\\s+[\\d.]+\\s+tiny\\.onnx ${version}$`));

    // The same processes' metrics show the NATS connection.
    const m = await scrape(cloud.url);
    expect(m.value("framewire_nats_connected")).toBe(1);
    expect(m.value("framewire_info", { bus: "nats", worker: "cloud-1" })).toBe(1);
  });
});
