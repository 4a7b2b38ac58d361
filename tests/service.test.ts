/** Workers as NATS micro services (ADR-32): what `nats micro ls/info/stats` reads, from real processes. */
import { afterAll, expect, test } from "bun:test";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import * as v from "valibot";
import { connect } from "@nats-io/transport-node";
import { CLIP } from "./lifecycle-support.ts";
import { startNatsServer } from "./support/nats.ts";
import { repoRoot, tempDir } from "./support/paths.ts";
import { startProcess, type Child } from "./support/process.ts";

const children: Child[] = [];
afterAll(async () => {
  await Promise.all(children.map((c) => c.stop()));
});

const Base = { name: v.literal("framewire"), id: v.string(), version: v.pipe(v.string(), v.regex(/^\d+\.\d+\.\d+/)), metadata: v.object({ pipeline: v.string(), worker: v.string(), placement: v.string(), stages: v.string() }) };
const Ping = v.object({ type: v.literal("io.nats.micro.v1.ping_response"), ...Base });
const Info = v.object({ type: v.literal("io.nats.micro.v1.info_response"), ...Base, description: v.string(), endpoints: v.array(v.object({ name: v.string(), subject: v.string(), queue_group: v.string(), metadata: v.record(v.string(), v.string()) })) });
const Stats = v.object({
  type: v.literal("io.nats.micro.v1.stats_response"),
  ...Base,
  started: v.pipe(v.string(), v.isoTimestamp()),
  endpoints: v.array(v.object({ name: v.string(), subject: v.string(), queue_group: v.string(), num_requests: v.number(), num_errors: v.number(), last_error: v.string(), processing_time: v.number(), average_processing_time: v.number(), data: v.unknown() })),
});

test("two processes of one pipeline are two framewire service instances with unique ids, their stages as endpoints", async () => {
  const nats = await startNatsServer();
  const dir = await tempDir();
  try {
    const file = join(dir.path, "svc.yaml");
    await writeFile(file, `name: svc\nbus: ${nats.url}\nstages:\n  - id: cam\n    use: ingest\n    with: { url: "${CLIP}", width: 64, height: 48, realtime: true, loop: true, fps: 10 }\n  - id: prep\n    use: resize\n    with: { width: 32, height: 32 }\n  - id: out\n    use: sink-log\n`);
    for (let i = 0; i < 2; i++) {
      const c = startProcess([process.execPath, "runtime/cli.ts", "run", file], { cwd: repoRoot, env: { FRAMEWIRE_LOG: "info" } });
      children.push(c);
      await c.waitFor(/reading .* \(live\)/, 30_000);
    }
    const nc = await connect({ servers: nats.url });
    const ask = async (subject: string) => {
      const out: unknown[] = [];
      for await (const m of await nc.requestMany(subject, "", { strategy: "count", maxMessages: 2, maxWait: 5000 })) out.push(m.json());
      return out;
    };
    const pings = (await ask("$SRV.PING.framewire")).map((x) => v.parse(Ping, x));
    expect(pings).toHaveLength(2);
    expect(new Set(pings.map((p) => p.id)).size).toBe(2);
    expect(pings.every((p) => p.metadata.pipeline === "svc" && p.metadata.stages === "cam,prep,out")).toBe(true);
    const infos = (await ask("$SRV.INFO.framewire")).map((x) => v.parse(Info, x));
    expect(infos[0].endpoints.map((e) => e.name)).toEqual(["cam", "prep", "out"]);
    expect(infos[0].endpoints.find((e) => e.name === "prep")).toMatchObject({ subject: "fw.svc._q.prep", queue_group: "fw.svc.prep", metadata: { operator: "resize" } });
    // Stats of one instance by id; its stages have been working.
    await Bun.sleep(1500);
    const [one] = await ask(`$SRV.STATS.framewire.${pings[0].id}`).then((r) => r.map((x) => v.parse(Stats, x)));
    expect(one.id).toBe(pings[0].id);
    const prep = one.endpoints.find((e) => e.name === "prep")!;
    expect(prep.num_requests).toBeGreaterThan(0);
    expect(prep.processing_time).toBeGreaterThan(0);
    await nc.close();
  } finally {
    await Promise.all(children.splice(0).map((c) => c.stop()));
    await nats.dispose();
    await dir.remove();
  }
}, 90_000);
