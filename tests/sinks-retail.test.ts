/**
 * pipelines/retail.yaml with its sinks on the shipped clip: on the memory bus
 * (the no-server default) and on a NATS bus with JetStream, where its events
 * land in the RETAIL stream. Outputs are redirected to a temp dir.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Bus } from "../runtime/core/bus.ts";
import { Executor } from "../runtime/engine/executor.ts";
import { loadPipeline, type PipelineSpec } from "../runtime/spec/loader.ts";
import { MemoryBus } from "../runtime/bus/memory.ts";
import { NatsBus } from "../runtime/bus/nats.ts";
import { pipelinesDir } from "../runtime/platform/paths.ts";
import { loadRegistry } from "../runtime/spec/registry.ts";
import { client, disposeAllNatsServers, readStream, startJetStreamServer } from "./support/jetstream.ts";
import { captureLog, type CapturedLog } from "./support/pipeline.ts";

const tmp = mkdtempSync(join(tmpdir(), "fw-retail-sinks-"));
afterAll(async () => {
  await disposeAllNatsServers();
  rmSync(tmp, { recursive: true, force: true });
});

/** retail.yaml with `env` only, its files under `dir`. */
async function retail(dir: string, env: Record<string, string>): Promise<PipelineSpec> {
  // One camera (the shipped clip) unless the test's env lists more.
  const spec = await loadPipeline(join(pipelinesDir, "retail.yaml"), await loadRegistry(), (k) => ({ CAMERAS: "cam=pipelines/media/vtest.mp4", ...env })[k]);
  for (const s of spec.stages) {
    const o = s.options as Record<string, unknown>;
    if (s.def.name === "sink-jsonl") o.path = join(dir, "retail.jsonl");
    if (s.def.name === "zones") o.state = join(dir, "counts.json");
    if (s.def.name === "sink-snapshot") o.dir = join(dir, "snapshots");
    // A stream set changed at runtime by an earlier run in out/ must not replace CAMERAS here.
    if (s.def.name === "ingest") o.state = join(dir, "streams.json");
  }
  return spec;
}

async function run(spec: PipelineSpec, bus: Bus, frames: number): Promise<CapturedLog> {
  const log = captureLog("retail");
  const exec = new Executor(spec, bus, { frames, log, context: bus instanceof NatsBus ? { nats: bus } : {} });
  await exec.start();
  const summary = await exec.done;
  expect(summary.stages.filter((s) => s.failed > 0)).toEqual([]);
  return log;
}

type Line = { stream: string; seq: number; type?: string; line?: string; zone?: string; trackId?: number };
const results = (dir: string): Line[] => readFileSync(join(dir, "retail.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));

test("on the memory bus: JSONL and a snapshot per crossing/entry/exit; the NATS sink says it is idle", async () => {
  const dir = join(tmp, "memory");
  const spec = await retail(dir, {});
  expect(spec.bus).toBe("memory");
  expect(spec.stages.map((s) => s.def.name).slice(-4)).toEqual(["sink-jsonl", "sink-log", "sink-snapshot", "sink-jetstream"]);
  const log = await run(spec, new MemoryBus(), 60);

  const events = results(dir).filter((l) => l.type);
  const shots = events.filter((e) => ["cross", "enter", "exit"].includes(e.type!));
  expect(shots.length).toBeGreaterThan(0);
  const names = shots.map((e) => `${e.stream}-${String(e.seq).padStart(6, "0")}-${e.type}-${e.line ?? e.zone}-${e.trackId}.jpg`);
  expect(readdirSync(join(dir, "snapshots")).sort()).toEqual(names.sort());
  const jpg = readFileSync(join(dir, "snapshots", names[0]));
  expect([jpg[0], jpg[1], jpg[2]]).toEqual([0xff, 0xd8, 0xff]);
  expect(log.lines.filter((l) => l.includes("[retail/publish] sink-jetstream is idle"))).toHaveLength(1);
}, 120_000);

test("on a NATS bus: every event of the run is stored in the RETAIL stream, in order, under retail.<STORE_ID>", async () => {
  const server = await startJetStreamServer();
  const dir = join(tmp, "nats");
  const spec = await retail(dir, { NATS_URL: server.url, STORE_ID: "s42" });
  expect(spec.bus).toBe(server.url);
  const bus = await NatsBus.connect({ url: server.url, log: captureLog("bus") });
  const log = await run(spec, bus, 60);
  await bus.drain();

  const events = results(dir).filter((l) => l.type);
  expect(events.length).toBeGreaterThan(0);
  const nc = await client(server.url);
  const stored = await readStream(nc, "RETAIL");
  expect(stored.map((m) => m.data)).toEqual(events);
  expect(new Set(stored.map((m) => m.subject))).toEqual(new Set(events.map((e) => `retail.s42.cam.events.${e.type}`)));
  expect(log.text()).toContain("created stream RETAIL (retail.s42.>");
  await nc.close();
}, 120_000);
