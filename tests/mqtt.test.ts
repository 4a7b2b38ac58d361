/**
 * MQTT with real servers and a real MQTT client: the shipped
 * pipelines/nats/mqtt.conf (nats-server's MQTT listener, JetStream) on free
 * 127.0.0.1 ports, sink-mqtt publishing to it, and mosquitto_sub (Debian's
 * mosquitto-clients) reading what a Home Assistant would: the retained
 * discovery configs, the counts on the state topics they name, the events.
 * Servers and subscribers are stopped by PID.
 */
import { afterAll, expect, test } from "bun:test";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import * as v from "valibot";
import type { NatsConnection } from "@nats-io/transport-node";
import { connect } from "@nats-io/transport-node";
import sinkMqtt from "../operators/sink-mqtt.ts";
import sinkNats from "../operators/sink-nats.ts";
import { NatsBus } from "../runtime/bus/nats.ts";
import { FramewireError } from "../runtime/core/errors.ts";
import type { Event, Frame } from "../runtime/core/message.ts";
import { defineOperator, type SinkInstance, type StageContext } from "../runtime/core/operator.ts";
import { toJsonLine } from "../runtime/core/record.ts";
import { startNatsServer, stopAllNatsServers, type NatsServer } from "./support/nats.ts";
import { makeSink } from "./support/operators.ts";
import { captureLog, parse, registryWith, runPipeline } from "./support/pipeline.ts";
import { repoRoot, tempDir } from "./support/paths.ts";
import { freePort } from "./support/ports.ts";
import { startProcess, type Child } from "./support/process.ts";
import { until } from "./support/wait.ts";

const cleanups: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await stopAllNatsServers();
});

interface MqttServer {
  nats: NatsServer;
  mqttPort: number;
  mqttUrl: string;
}

/**
 * pipelines/nats/mqtt.conf as shipped, its NATS and MQTT listeners moved to
 * free ports and its JetStream store to a temp folder; `mqttExtra` goes into
 * the mqtt block (authorization); `port` sets the MQTT port.
 */
async function startMqttServer(mqttExtra = "", port?: number): Promise<MqttServer> {
  const shipped = await readFile(join(repoRoot, "pipelines/nats/mqtt.conf"), "utf8");
  const mqttPort = port ?? (await freePort());
  const store = await tempDir("fw-mqtt-js-");
  cleanups.push(store.remove);
  const edits: [RegExp, string][] = [
    // startNatsServer writes the client listen and max_payload lines itself.
    [/^listen: .*\n/m, ""],
    [/^max_payload: .*\n/m, ""],
    [/store_dir: .*/, `store_dir: "${store.path}"`],
    [/(mqtt\s*\{\s*listen: )\S+/, `$1127.0.0.1:${mqttPort}${mqttExtra ? `\n  ${mqttExtra}` : ""}`],
  ];
  let extra = shipped;
  for (const [re, to] of edits) {
    if (!re.test(extra)) throw new Error(`mqtt.conf: no match for ${re} (the test rewrites it to free ports and a temp store)`);
    extra = extra.replace(re, to);
  }
  expect(extra).toContain("server_name:");
  const nats = await startNatsServer({ extra });
  await nats.waitFor(/Listening for MQTT clients on mqtt:\/\/127\.0\.0\.1:\d+/);
  return { nats, mqttPort, mqttUrl: `mqtt://127.0.0.1:${mqttPort}` };
}

interface Received {
  retained: boolean;
  topic: string;
  payload: string;
}

interface Subscriber {
  child: Child;
  /** Messages so far, in arrival order. */
  messages(): Received[];
  /** Resolves once a line of its output (`MSG <retain flag> <topic> <payload>`) matches. */
  waitFor(line: RegExp): Promise<void>;
  stop(): Promise<void>;
}

/**
 * mosquitto_sub on `topics`, printing `<retain flag> <topic> <payload>`;
 * resolves once the broker acknowledged the subscription (SUBACK), so nothing
 * published after it is missed. `count` makes it exit after that many messages.
 */
async function subscribe(port: number, topics: string[], o: { count?: number; user?: string; password?: string } = {}): Promise<Subscriber> {
  // Line-buffered (stdbuf): mosquitto_sub's debug lines and messages go to a pipe, which stdio would hold back.
  const args = ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", String(port), "-q", "1", "-d", "-F", "MSG %r %t %p"];
  for (const t of topics) args.push("-t", t);
  // -W only ends a subscriber that would wait forever for messages that never come (the test then fails on its exit code).
  if (o.count) args.push("-C", String(o.count), "-W", "30");
  if (o.user) args.push("-u", o.user, "-P", o.password ?? "");
  const child = startProcess(args);
  cleanups.push(async () => void (await child.stop(1000)));
  await child.waitFor(/received SUBACK/);
  const messages = () =>
    child
      .stdout()
      .split("\n")
      .filter((l) => l.startsWith("MSG "))
      .map((l) => {
        const [, flag, topic, ...rest] = l.split(" ");
        return { retained: flag === "1", topic, payload: rest.join(" ") };
      });
  return {
    child,
    messages,
    waitFor: (line) => child.waitFor(line).then(() => undefined),
    async stop() {
      await child.stop(1000);
    },
  };
}

const T0 = 1_700_000_000_000;
const event = (stream: string, seq: number, type: string, data: Record<string, unknown>): Event => ({ kind: "event", stream, seq, ts: T0 + seq * 100, type, data });
const counts = (stream: string, seq: number, lines: Record<string, { in: number; out: number }>, zones: Record<string, { occupancy: number; entries: number }>) =>
  event(stream, seq, "counts", { lines, zones });

async function mqttSink(url: string, options: Record<string, unknown>) {
  const made = await makeSink("sink-mqtt", { url, ...options }, "mqtt");
  return { sink: made.instance, log: made.log };
}

async function feed(sink: SinkInstance, events: Event[]): Promise<void> {
  for (const e of events) await sink.process(e);
}

test("after the sink has closed, a new subscriber gets a retained Home Assistant config per line direction and zone count, and the totals on the state topics they name", async () => {
  const srv = await startMqttServer();
  const { sink, log } = await mqttSink(srv.mqttUrl, { topic: "shop/a", nodeId: "shop_a" });
  await feed(sink, [
    counts("cam", 10, { door: { in: 2, out: 1 } }, { shelf: { occupancy: 1, entries: 3 } }),
    event("cam", 11, "cross", { line: "door", direction: "in", trackId: 7, class: "person" }),
    event("cam", 12, "enter", { zone: "shelf", trackId: 7, class: "person" }),
    event("cam", 13, "exit", { zone: "shelf", trackId: 4, class: "person", dwellMs: 900 }),
    counts("cam2", 10, { till: { in: 0, out: 5 } }, {}),
  ]);
  await sink.close!();
  expect(log.text()).toContain("published 5 events, 10 count updates, 6 discovery configs");

  // 6 configs, 6 totals, 1 availability: all retained, so a late subscriber gets exactly these.
  const sub = await subscribe(srv.mqttPort, ["homeassistant/sensor/shop_a/#", "shop/a/#"], { count: 13 });
  expect(await sub.child.exited).toBe(0);
  const got = sub.messages();
  expect(got.every((m) => m.retained)).toBe(true);
  const byTopic = new Map(got.map((m) => [m.topic, m.payload]));
  expect(byTopic.get("shop/a/status")).toBe("offline");

  const configs = got.filter((m) => m.topic.startsWith("homeassistant/")).map((m) => ({ topic: m.topic, config: JSON.parse(m.payload) }));
  expect(configs.map((c) => c.topic).sort()).toEqual(
    [
      "homeassistant/sensor/shop_a/cam_line_door_in/config",
      "homeassistant/sensor/shop_a/cam_line_door_out/config",
      "homeassistant/sensor/shop_a/cam_zone_shelf_occupancy/config",
      "homeassistant/sensor/shop_a/cam_zone_shelf_entries/config",
      "homeassistant/sensor/shop_a/cam2_line_till_in/config",
      "homeassistant/sensor/shop_a/cam2_line_till_out/config",
    ].sort(),
  );
  const door = configs.find((c) => c.topic.includes("cam_line_door_in"))!.config;
  expect(door).toEqual({
    name: "door in",
    unique_id: "shop_a_cam_line_door_in",
    state_topic: "shop/a/cam/line/door/in",
    availability_topic: "shop/a/status",
    unit_of_measurement: "people",
    state_class: "total_increasing",
    icon: "mdi:account-arrow-right",
    device: { identifiers: ["shop_a_cam"], name: "test cam", manufacturer: "framewire", model: "zones" },
    origin: { name: "framewire" },
  });
  expect(configs.find((c) => c.topic.includes("shelf_occupancy"))!.config.state_class).toBe("measurement");
  expect(new Set(configs.map((c) => c.config.unique_id)).size).toBe(6);

  // Each config's state topic holds the current total: the counts event's, moved by the events after it.
  const states = Object.fromEntries(configs.map((c) => [c.config.name + " " + c.config.device.identifiers[0], byTopic.get(c.config.state_topic)]));
  expect(states).toEqual({
    "door in shop_a_cam": "3",
    "door out shop_a_cam": "1",
    "shelf occupancy shop_a_cam": "1",
    "shelf entries shop_a_cam": "4",
    "till in shop_a_cam2": "0",
    "till out shop_a_cam2": "5",
  });
}, 60_000);

test("a live subscriber gets every event as JSON and every count change as it happens; discovery configs go out once per stream, line and zone", async () => {
  const srv = await startMqttServer();
  const sub = await subscribe(srv.mqttPort, ["homeassistant/sensor/shop_b/#", "shop/b/#"]);
  const { sink } = await mqttSink(srv.mqttUrl, { topic: "shop/b", nodeId: "shop_b", retain: false, unit: "visitors" });
  const cross = event("cam", 21, "cross", { line: "door", direction: "in", trackId: 3, class: "person" });
  const early = event("cam", 1, "cross", { line: "door", direction: "out", trackId: 1, class: "person" });
  await feed(sink, [
    early, // before any counts event: the sensor is announced, but its total is not known yet
    counts("cam", 10, { door: { in: 0, out: 1 } }, { shelf: { occupancy: 0, entries: 0 } }),
    counts("cam", 20, { door: { in: 1, out: 1 } }, { shelf: { occupancy: 0, entries: 0 } }),
    cross,
    event("cam", 22, "enter", { zone: "shelf", trackId: 3, class: "person" }),
  ]);
  const metrics = sink.metrics!();
  await sink.close!();
  // The sink's goodbye comes last: everything before it has arrived.
  await sub.waitFor(/^MSG 0 shop\/b\/status offline$/m);
  await sub.stop();
  const got = sub.messages();

  const configs = got.filter((m) => m.topic.startsWith("homeassistant/"));
  expect(configs.map((m) => m.topic)).toEqual([
    "homeassistant/sensor/shop_b/cam_line_door_in/config",
    "homeassistant/sensor/shop_b/cam_line_door_out/config",
    "homeassistant/sensor/shop_b/cam_zone_shelf_occupancy/config",
    "homeassistant/sensor/shop_b/cam_zone_shelf_entries/config",
  ]);
  expect(JSON.parse(configs[0].payload).unit_of_measurement).toBe("visitors");
  expect(metrics.find((m) => m.name === "mqtt_published_total" && m.labels?.kind === "discovery")).toMatchObject({ value: 4 });
  expect(metrics.find((m) => m.name === "mqtt_connected")).toMatchObject({ value: 1 });

  // The events, as the sink-jsonl record, on <topic>/<stream>/events/<type>; never retained.
  const events = got.filter((m) => m.topic.includes("/events/"));
  expect(events.map((m) => m.topic)).toEqual(["shop/b/cam/events/cross", "shop/b/cam/events/counts", "shop/b/cam/events/counts", "shop/b/cam/events/cross", "shop/b/cam/events/enter"]);
  expect(JSON.parse(events[3].payload)).toEqual(JSON.parse(toJsonLine(cross, 2)));
  expect(got.some((m) => m.retained)).toBe(false);

  // Each total in order: the counts events' values, then the crossing and the entry at once.
  const series = (topic: string) => got.filter((m) => m.topic === topic).map((m) => m.payload);
  expect(series("shop/b/cam/line/door/in")).toEqual(["0", "1", "2"]);
  expect(series("shop/b/cam/line/door/out")).toEqual(["1", "1"]);
  expect(series("shop/b/cam/zone/shelf/entries")).toEqual(["0", "0", "1"]);
  expect(series("shop/b/cam/zone/shelf/occupancy")).toEqual(["0", "0", "1"]);
  expect(series("shop/b/status")).toEqual(["online", "offline"]);
}, 60_000);

test("nats-server's MQTT listener: sink-nats's subjects are MQTT topics with / for ., and sink-mqtt's topics are NATS subjects", async () => {
  const srv = await startMqttServer();
  const log = captureLog("bus");
  const bus = await NatsBus.connect({ url: srv.nats.url, log });
  cleanups.push(() => bus.close());
  const nc: NatsConnection = await connect({ servers: srv.nats.url });
  cleanups.push(() => nc.close());

  // NATS → MQTT: `+` is one level (NATS `*`), `#` the rest (NATS `>`).
  const sub = await subscribe(srv.mqttPort, ["shop/c/+/events/#"], { count: 2 });
  const ctx: StageContext = { stage: "out", pipeline: "shop", log: captureLog("sink-nats"), signal: new AbortController().signal, nats: bus };
  const nats = await sinkNats.create(v.parse(sinkNats.options, { subject: "shop.c" }), ctx);
  const frame: Frame = { kind: "frame", stream: "cam", seq: 30, ts: T0, live: false, image: { width: 4, height: 4, format: "rgb24", data: new Uint8Array(48) }, detections: [], timings: {} };
  const cross = event("cam", 30, "cross", { line: "door", direction: "out", trackId: 9 });
  const enter = event("cam", 31, "enter", { zone: "shelf", trackId: 9 });
  await nats.process(frame); // shop/c/cam/frames: not under events/, not delivered to this subscriber
  await nats.process(cross);
  await nats.process(enter);
  expect(await sub.child.exited).toBe(0);
  expect(sub.messages()).toEqual([
    { retained: false, topic: "shop/c/cam/events/cross", payload: toJsonLine(cross, 2) },
    { retained: false, topic: "shop/c/cam/events/enter", payload: toJsonLine(enter, 2) },
  ]);

  // MQTT → NATS: a NATS subscriber reads sink-mqtt's counts on subjects with . for /.
  const got: { subject: string; data: string }[] = [];
  const natsSub = nc.subscribe("shop.d.>", { callback: (_e, m) => void got.push({ subject: m.subject, data: m.string() }) });
  await nc.flush();
  const { sink } = await mqttSink(srv.mqttUrl, { topic: "shop/d", discovery: false });
  await sink.process(counts("cam", 40, { door: { in: 4, out: 2 } }, {}));
  await sink.close!();
  await until(() => got.some((m) => m.subject === "shop.d.status" && m.data === "offline"), "sink-mqtt's goodbye on shop.d.status");
  natsSub.unsubscribe();
  expect(got).toContainEqual({ subject: "shop.d.cam.line.door.in", data: "4" });
  expect(got).toContainEqual({ subject: "shop.d.cam.line.door.out", data: "2" });
  expect(got.find((m) => m.subject === "shop.d.cam.events.counts")?.data).toBe(toJsonLine(counts("cam", 40, { door: { in: 4, out: 2 } }, {}), 2));
  expect(got.map((m) => m.subject)).not.toContain("homeassistant.sensor.framewire_test.cam_line_door_in.config");
}, 60_000);

test("a pipeline file: zones counting a track that walks through a door and into a zone, sink-mqtt publishing; Home Assistant's retained view has the sensors and totals", async () => {
  const srv = await startMqttServer();
  // One person walking down the middle of the picture: across the door (y = 0.5), into the hall (the lower half), and staying there.
  const walker = defineOperator({
    name: "test-walker",
    kind: "source",
    description: "Test source: one tracked person walking down through a door.",
    options: v.strictObject({ frames: v.number() }),
    create: ({ frames }) => ({
      async run(emit) {
        for (let seq = 0; seq < frames; seq++) {
          const y = Math.min(0.9, 0.2 + seq * 0.03);
          await emit({
            kind: "frame",
            stream: "lobby",
            seq,
            ts: T0 + seq * 100,
            live: false,
            image: { width: 1000, height: 1000, format: "rgb24", data: new Uint8Array(0) },
            detections: [{ class: "person", classId: 0, score: 0.9, box: [480, y * 1000 - 80, 520, y * 1000], trackId: 1 }],
            timings: {},
          });
        }
      },
    }),
  });
  const text = `
name: store
stages:
  - id: cam
    use: test-walker
    with: { frames: 40 }
  - id: count
    use: zones
    with:
      lines: [{ id: door, from: [0.1, 0.5], to: [0.9, 0.5] }]
      zones: [{ id: hall, polygon: [[0, 0.55], [1, 0.55], [1, 1], [0, 1]] }]
      fps: 10
      countsInterval: 1
  - id: mqtt
    use: sink-mqtt
    with: { url: "${srv.mqttUrl}", topic: shop/e }
`;
  const run = await runPipeline(parse(text, await registryWith(walker)));
  expect(run.stage("mqtt").failed).toBe(0);
  expect(run.log.text()).toContain("4 discovery configs");

  const sub = await subscribe(srv.mqttPort, ["homeassistant/sensor/framewire_store/#", "shop/e/+/line/#", "shop/e/+/zone/#"], { count: 8 });
  expect(await sub.child.exited).toBe(0);
  const byTopic = new Map(sub.messages().map((m) => [m.topic, m]));
  const sensors = [...byTopic.values()].filter((m) => m.topic.startsWith("homeassistant/")).map((m) => JSON.parse(m.payload));
  expect(sensors.map((s) => s.name).sort()).toEqual(["door in", "door out", "hall entries", "hall occupancy"]);
  const value = (name: string) => byTopic.get(sensors.find((s) => s.name === name).state_topic)?.payload;
  expect({ in: value("door in"), out: value("door out"), entries: value("hall entries"), occupancy: value("hall occupancy") }).toEqual({ in: "1", out: "0", entries: "1", occupancy: "1" });
  expect(sensors[0].device).toMatchObject({ identifiers: ["framewire_store_lobby"], name: "store lobby" });
}, 60_000);

test("while nats-server restarts, events wait (QoS 1) and arrive once it is back; the retained configs and totals survive the restart in JetStream", async () => {
  const srv = await startMqttServer();
  const { sink, log } = await mqttSink(srv.mqttUrl, { topic: "shop/g", nodeId: "shop_g" });
  await feed(sink, [counts("cam", 10, { door: { in: 5, out: 0 } }, {})]);
  await srv.nats.stop();
  await until(() => log.text().includes("MQTT link to"), "the sink to notice the broker is gone");
  const rest = feed(sink, [
    event("cam", 11, "cross", { line: "door", direction: "in", trackId: 1 }),
    event("cam", 12, "cross", { line: "door", direction: "out", trackId: 2 }),
  ]);
  await srv.nats.start();
  await rest;
  await sink.close!();
  expect(log.text()).toContain("is back");

  const sub = await subscribe(srv.mqttPort, ["homeassistant/sensor/shop_g/#", "shop/g/cam/line/#"], { count: 4 });
  expect(await sub.child.exited).toBe(0);
  const byTopic = Object.fromEntries(sub.messages().map((m) => [m.topic, m.payload]));
  expect(Object.keys(byTopic).filter((t) => t.startsWith("homeassistant/")).sort()).toEqual([
    "homeassistant/sensor/shop_g/cam_line_door_in/config",
    "homeassistant/sensor/shop_g/cam_line_door_out/config",
  ]);
  expect(byTopic["shop/g/cam/line/door/in"]).toBe("6");
  expect(byTopic["shop/g/cam/line/door/out"]).toBe("1");
}, 60_000);

test("a broker that is not up yet: the sink waits, says why once, and connects when it comes; shutting down while it waits is E_MQTT", async () => {
  const port = await freePort();
  const log = captureLog("mqtt");
  const ctx: StageContext = { stage: "mqtt", pipeline: "shop", log, signal: new AbortController().signal };
  const starting = Promise.resolve(sinkMqtt.create(v.parse(sinkMqtt.options, { url: `mqtt://127.0.0.1:${port}`, topic: "shop/h", nodeId: "shop_h" }), ctx));
  await until(() => log.text().includes("unreachable"), "the sink to say the broker is unreachable");
  await startMqttServer("", port);
  const sink = await starting;
  await sink.process(counts("cam", 1, { door: { in: 2, out: 0 } }, {}));
  await sink.close!();
  expect(log.lines.filter((l) => l.includes("unreachable"))).toHaveLength(1);
  const sub = await subscribe(port, ["shop/h/cam/line/door/in"], { count: 1 });
  expect(await sub.child.exited).toBe(0);
  expect(sub.messages()).toEqual([{ retained: true, topic: "shop/h/cam/line/door/in", payload: "2" }]);

  const nowhere = await freePort();
  const stop = new AbortController();
  const waitLog = captureLog("mqtt");
  const waiting = Promise.resolve(sinkMqtt.create(v.parse(sinkMqtt.options, { url: `mqtt://127.0.0.1:${nowhere}` }), { ...ctx, log: waitLog, signal: stop.signal })).then(
    () => undefined,
    (e: unknown) => e,
  );
  await until(() => waitLog.text().includes("unreachable"), "the second sink to say the broker is unreachable");
  stop.abort();
  const err = await waiting;
  expect((err as FramewireError).code).toBe("E_MQTT");
  expect((err as Error).message).toContain("stopped before the MQTT broker");
}, 60_000);

test("a broker that refuses the credentials is an E_MQTT error at start; the right ones connect", async () => {
  const srv = await startMqttServer('authorization { username: "shop", password: "shop-secret-1" }');
  const err = await mqttSink(`mqtt://shop:wrong@127.0.0.1:${srv.mqttPort}`, { topic: "shop/f" }).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(FramewireError);
  expect((err as FramewireError).code).toBe("E_MQTT");
  expect((err as Error).message).toContain("refused the connection");
  expect((err as Error).message).not.toContain("wrong");

  const { sink } = await mqttSink(`mqtt://127.0.0.1:${srv.mqttPort}`, { topic: "shop/f", username: "shop", password: "shop-secret-1", discovery: false });
  await sink.process(counts("cam", 1, { door: { in: 1, out: 0 } }, {}));
  await sink.close!();
  const sub = await subscribe(srv.mqttPort, ["shop/f/cam/line/door/in"], { count: 1, user: "shop", password: "shop-secret-1" });
  expect(await sub.child.exited).toBe(0);
  expect(sub.messages()).toEqual([{ retained: true, topic: "shop/f/cam/line/door/in", payload: "1" }]);
}, 60_000);

test("options: topics with wildcards, dots or a leading / and QoS 2 are refused by the schema", () => {
  const bad = [
    { url: "mqtt://127.0.0.1:1883", topic: "shop/#" },
    { url: "mqtt://127.0.0.1:1883", topic: "shop.a" },
    { url: "mqtt://127.0.0.1:1883", topic: "/shop" },
    { url: "mqtt://127.0.0.1:1883", qos: 2 },
    { url: "nats://127.0.0.1:4222" },
    { url: "mqtt://127.0.0.1:1883", nodeId: "shop a" },
  ];
  for (const o of bad) expect(v.safeParse(sinkMqtt.options, o).success).toBe(false);
  expect(v.parse(sinkMqtt.options, { url: "mqtt://127.0.0.1:1883" })).toMatchObject({ discoveryPrefix: "homeassistant", qos: 1, retain: true, events: true, discovery: true });
});
