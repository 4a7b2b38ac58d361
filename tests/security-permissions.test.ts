/**
 * The shipped server configs keep a pipeline's subjects (fw.>: frames,
 * requests, load adverts, end of stream) to the pipeline's own processes:
 * any other client (on local.conf: whoever connects without credentials; on
 * hub.conf: the `reader` user) can neither read a worker id from an advert
 * nor publish a forged end of stream or frame, while it still reads results.
 * Each refusal is waited for as the server's own answer (its permissions
 * error), never by sleeping.
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { connect, errors, type NatsConnection } from "@nats-io/transport-node";
import { NatsBus } from "../runtime/bus/nats.ts";
import { eosSubject, loadSubject, queueSubject } from "../runtime/bus/routing.ts";
import { encodeMessage } from "../runtime/bus/wire.ts";
import type { Message } from "../runtime/core/message.ts";
import { makeFrame } from "./support/frames.ts";
import { disposeAllNatsServers, startHubAndEdge } from "./support/jetstream.ts";
import { startNatsServer, stopAllNatsServers, type NatsServer } from "./support/nats.ts";
import { repoRoot, tempDir } from "./support/paths.ts";
import { captureLog } from "./support/pipeline.ts";
import { until } from "./support/wait.ts";

setDefaultTimeout(60_000);

const conns: NatsConnection[] = [];
const buses: NatsBus[] = [];
const dirs: { remove(): Promise<void> }[] = [];
afterAll(async () => {
  for (const c of conns) await c.close();
  for (const b of buses) await b.close();
  await stopAllNatsServers();
  await disposeAllNatsServers();
  for (const d of dirs) await d.remove();
});

/** pipelines/nats/local.conf as shipped, on a free port with its JetStream store in a temp folder. */
async function startLocalConf(): Promise<NatsServer> {
  const text = await readFile(join(repoRoot, "pipelines/nats/local.conf"), "utf8");
  const dir = await tempDir("framewire-localconf-");
  dirs.push(dir);
  for (const re of [/^listen: .*$/m, /^max_payload: .*$/m, /store_dir: .*/]) if (!re.test(text)) throw new Error(`local.conf: no match for ${re}`);
  // The helper writes listen and max_payload itself; the rest of the file is the shipped config.
  const body = text.replace(/^listen: .*$/m, "").replace(/^max_payload: .*$/m, "").replace(/store_dir: .*/, `store_dir: "${join(dir.path, "js")}"`);
  return startNatsServer({ extra: body });
}

/** A plain client; `denied` collects the server's refusals of its publishes, as they arrive. */
async function client(url: string, user?: string, pass?: string): Promise<{ nc: NatsConnection; denied: string[] }> {
  const u = new URL(url);
  const nc = await connect({ servers: `${u.hostname}:${u.port}`, user, pass });
  conns.push(nc);
  const denied: string[] = [];
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === "error" && s.error instanceof errors.PermissionViolationError && s.error.operation === "publish") denied.push(`publish ${s.error.subject}`);
    }
  })();
  return { nc, denied };
}

/** Subscribes and keeps the subjects received; `refused` is set when the server refuses the subscription. */
function watch(nc: NatsConnection, subject: string): { got: string[]; refused: () => boolean } {
  const got: string[] = [];
  let refused = false;
  nc.subscribe(subject, {
    callback: (err, m) => {
      if (err) refused = err instanceof errors.PermissionViolationError;
      else got.push(m.subject);
    },
  });
  return { got, refused: () => refused };
}

const forgedEos = JSON.stringify({ stage: "cam", worker: "worker-from-the-advert" });
const forgedFrame = encodeMessage(makeFrame(1, { stream: "cam" }));

describe("pipelines/nats/local.conf", () => {
  test("a client without credentials cannot read adverts or publish on fw.>, and reads results; the pipeline user can do both", async () => {
    const server = await startLocalConf();
    const pipeline = await client(server.url, "pipeline", "pipeline-secret");
    const outsider = await client(server.url);
    const adverts = watch(outsider.nc, loadSubject("demo", ">"));
    const everything = watch(outsider.nc, ">");
    const atPipeline = watch(pipeline.nc, "fw.demo.>");
    await Promise.all([outsider.nc.flush(), pipeline.nc.flush()]);
    await until(() => adverts.refused(), "the server refusing the outsider's subscription to the adverts");

    // The pipeline's own traffic: an advert (fw.>), then a result (not fw.>).
    pipeline.nc.publish(loadSubject("demo", "detect"), JSON.stringify({ worker: "w1" }));
    pipeline.nc.publish("demo.results.cam.frames", "{}");
    await until(() => everything.got.length === 1 && atPipeline.got.length === 1, "the result at the outsider, the advert at the pipeline");
    // In order from one publisher: had the advert reached the outsider's ">", it would have come first.
    expect(everything.got).toEqual(["demo.results.cam.frames"]);
    expect(adverts.got).toEqual([]);

    // The outsider forges an end of stream and a frame: the server refuses both.
    outsider.nc.publish(eosSubject("demo"), forgedEos);
    outsider.nc.publish(queueSubject("demo", "nms"), forgedFrame);
    outsider.nc.publish("demo.results.cam.frames", "{}");
    await until(() => outsider.denied.length === 3, "three refusals");
    expect(outsider.denied).toEqual([`publish ${eosSubject("demo")}`, `publish ${queueSubject("demo", "nms")}`, "publish demo.results.cam.frames"]);
    // Anything the server had sent to the pipeline before its refusals would arrive before this round trip ends.
    await pipeline.nc.flush();
    expect(atPipeline.got).toEqual([loadSubject("demo", "detect")]);
    expect(everything.got).toEqual(["demo.results.cam.frames"]);
  });

  test("a NatsBus connected as a reader says once that the server refuses its publishes on fw.>, and counts them", async () => {
    const server = await startLocalConf();
    const log = captureLog("bus");
    const bus = await NatsBus.connect({ url: server.url, log });
    buses.push(bus);
    for (let i = 0; i < 20; i++) bus.publishJson(loadSubject("demo", "detect"), { worker: "w1" });
    await until(() => bus.stats.deniedByServer === 20, "20 refusals");
    const lines = log.lines.filter((l) => l.includes("refuses this connection's publishes on fw.demo._ctl.load.detect"));
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.length).toBeLessThanOrEqual(5);
    expect(lines[0]).toContain("connect as a user allowed to use the pipeline's subjects");
  });
});

describe("pipelines/nats/hub.conf", () => {
  test("the reader user reads results but cannot read or publish the pipeline's subjects; the cloud user can", async () => {
    const { hub, dispose } = await startHubAndEdge();
    try {
      const cloud = await client(hub.url, "cloud", "cloud-secret");
      const reader = await client(hub.url, "reader", "reader-secret");
      const atCloud = watch(cloud.nc, "fw.retail.>");
      const adverts = watch(reader.nc, loadSubject("retail", ">"));
      const results = watch(reader.nc, "retail.>");
      await Promise.all([cloud.nc.flush(), reader.nc.flush()]);
      await until(() => adverts.refused(), "the server refusing the reader's subscription to the adverts");

      reader.nc.publish(eosSubject("retail"), forgedEos);
      reader.nc.publish(queueSubject("retail", "zones"), forgedFrame);
      await until(() => reader.denied.length === 2, "two refusals");
      expect(reader.denied).toEqual([`publish ${eosSubject("retail")}`, `publish ${queueSubject("retail", "zones")}`]);

      cloud.nc.publish(eosSubject("retail"), JSON.stringify({ stage: "cam", worker: "w1" }));
      cloud.nc.publish("retail.store1.cam.events.cross", "{}");
      await until(() => results.got.length === 1 && atCloud.got.length === 1, "the cloud user's end of stream and result");
      expect(atCloud.got).toEqual([eosSubject("retail")]);
      expect(results.got).toEqual(["retail.store1.cam.events.cross"]);
    } finally {
      await dispose();
    }
  });
});

describe("what a reader still does", () => {
  test("a reader's NatsBus subscription gets the results the pipeline's NatsBus publishes", async () => {
    const server = await startLocalConf();
    const [pipeline, reader] = await Promise.all([
      NatsBus.connect({ url: `nats://pipeline:pipeline-secret@127.0.0.1:${server.port}`, log: captureLog("p") }),
      NatsBus.connect({ url: server.url, log: captureLog("r") }),
    ]);
    buses.push(pipeline, reader);
    const got: Message[] = [];
    reader.subscribe("demo.out", (m) => void got.push(m));
    await reader.nc.flush();
    await pipeline.publish("demo.out", makeFrame(3));
    await until(() => got.length === 1, "the frame at the reader");
    expect(got[0].seq).toBe(3);
  });
});
