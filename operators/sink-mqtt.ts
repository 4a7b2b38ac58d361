import * as v from "valibot";
import type { IClientOptions, MqttClient } from "mqtt";
import { codedError } from "../runtime/core/errors.ts";
import type { Event, Message } from "../runtime/core/message.ts";
import { defineOperator, type OperatorMetric, type StageContext } from "../runtime/core/operator.ts";
import { Precision, toJsonLine } from "../runtime/core/record.ts";

/** The broker refused this client (bad credentials, not authorised) or the URL is unusable: retrying would not help. */
export const MqttError = codedError("MqttError", "E_MQTT");
export type MqttError = InstanceType<typeof MqttError>;

/** Topic levels separated by `/`: no wildcards, no empty levels, no spaces or dots (nats-server's MQTT refuses both). */
const TOPIC = /^[^/#+\s.$][^/#+\s.]*(\/[^/#+\s.]+)*$/;
const TopicPrefix = (what: string) =>
  v.pipe(v.string(), v.regex(TOPIC, `expected ${what} of topic levels separated by / (no leading /, wildcards, spaces or dots)`));
const HaId = v.pipe(v.string(), v.regex(/^[A-Za-z0-9_-]+$/, "expected letters, digits, _ and -"));

const Options = v.strictObject({
  url: v.pipe(
    v.string(),
    v.regex(/^(mqtt|mqtts|ws|wss):\/\/[^/?#]+/, "expected an mqtt://, mqtts://, ws:// or wss:// URL with a host"),
    v.description(
      "The MQTT broker: nats-server's MQTT listener (pipelines/nats/mqtt.conf) or any MQTT 3.1.1 broker (mosquitto, EMQX, Home Assistant's add-on); `user:password@` in the URL, or `username`/`password`.",
    ),
  ),
  username: v.optional(v.pipe(v.string(), v.minLength(1), v.description("User name for the broker (instead of the URL's)."))),
  password: v.optional(v.pipe(v.string(), v.description("Password for the broker, e.g. `${MQTT_PASSWORD}`."))),
  topic: v.optional(
    v.pipe(
      TopicPrefix("a prefix"),
      v.description(
        "Topic prefix: events on `<topic>/<stream>/events/<type>`, counts on `<topic>/<stream>/line/<line>/in|out` and `<topic>/<stream>/zone/<zone>/occupancy|entries`, availability on `<topic>/status`. Default `framewire/<pipeline>`.",
      ),
    ),
  ),
  events: v.optional(v.pipe(v.boolean(), v.description("Publish every event record (cross, enter, exit, counts, ...) as JSON, never retained.")), true),
  retain: v.optional(
    v.pipe(v.boolean(), v.description("Retain the counts, so that a subscriber (Home Assistant after a restart) gets the current totals at once.")),
    true,
  ),
  qos: v.optional(
    v.pipe(
      v.picklist([0, 1]),
      v.description("QoS of every publish: 1 waits for the broker's acknowledgement (events wait while it is away), 0 does not. nats-server supports 0 and 1."),
    ),
    1,
  ),
  discovery: v.optional(
    v.pipe(v.boolean(), v.description("Publish Home Assistant MQTT discovery configs (retained), one sensor per line direction and zone count, when first seen.")),
    true,
  ),
  discoveryPrefix: v.optional(v.pipe(TopicPrefix("a discovery prefix"), v.description("Home Assistant's discovery prefix.")), "homeassistant"),
  nodeId: v.optional(
    v.pipe(HaId, v.description("Node id in the discovery topics `<discoveryPrefix>/sensor/<nodeId>/<object>/config`. Default `framewire_<pipeline>`.")),
  ),
  unit: v.optional(v.pipe(v.string(), v.minLength(1), v.description("Unit Home Assistant shows the counts in (what the zones stage counts).")), "people"),
  clientId: v.optional(v.pipe(v.string(), v.minLength(1), v.maxLength(128), v.description("MQTT client id. Default `framewire-<pipeline>-<stage>-<random>`."))),
  precision: Precision,
});
type Options = v.InferOutput<typeof Options>;

/** A stream, line or zone id as one topic level (`/`, `+`, `#`, `.` and spaces become `_`). */
function level(s: string): string {
  return s.replace(/[\s/+#.]/g, "_") || "_";
}

/** An id as Home Assistant accepts it in discovery topics and unique ids. */
function haId(s: string): string {
  return s.replace(/[^A-Za-z0-9_-]/g, "_") || "_";
}

/** mqtt.js options from the URL (parsed with WHATWG URL: mqtt.js's own url.parse is deprecated). */
function clientOptions(o: Options, ctx: StageContext, willTopic: string): IClientOptions {
  let u: URL;
  try {
    u = new URL(o.url);
  } catch (err) {
    throw new MqttError(`${ctx.stage}: cannot read the MQTT URL ${o.url}: ${(err as Error).message}`, { cause: err });
  }
  const protocol = u.protocol.replace(/:$/, "") as "mqtt" | "mqtts" | "ws" | "wss";
  const defaultPort = { mqtt: 1883, mqtts: 8883, ws: 80, wss: 443 }[protocol];
  return {
    protocol,
    host: u.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: u.port ? Number(u.port) : defaultPort,
    ...(protocol.startsWith("ws") ? { path: u.pathname || "/" } : {}),
    username: o.username ?? (u.username ? decodeURIComponent(u.username) : undefined),
    password: o.password ?? (u.password ? decodeURIComponent(u.password) : undefined),
    clientId: o.clientId ?? `framewire-${ctx.pipeline}-${ctx.stage}-${Math.random().toString(36).slice(2, 10)}`,
    protocolVersion: 4,
    clean: true,
    reconnectPeriod: 1000,
    connectTimeout: 10_000,
    // The broker says "offline" for us if the connection dies without a goodbye.
    will: { topic: willTopic, payload: Buffer.from("offline"), qos: o.qos, retain: true },
  };
}

/** A URL without its password, for logs. */
function redact(url: string): string {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, "//$1:***@");
}

/** CONNACK codes (3.1.1: 4 bad user name or password, 5 not authorised; 5.0: 134, 135) after which retrying is pointless. */
const REFUSED = new Set([4, 5, 134, 135]);

/**
 * Connects and resolves once the broker accepted the connection; until then
 * it retries (each distinct failure logged once). Refused credentials, or the
 * pipeline shutting down, reject.
 */
function firstConnect(client: MqttClient, url: string, ctx: StageContext): Promise<void> {
  return new Promise((resolve, reject) => {
    const seen = new Set<string>();
    const done = (err?: Error) => {
      client.off("connect", onConnect);
      client.off("error", onError);
      ctx.signal.removeEventListener("abort", onAbort);
      if (err) {
        client.on("error", () => {}); // whatever the closing socket still reports: the error is thrown below
        client.end(true);
        reject(err);
      } else resolve();
    };
    const onConnect = () => done();
    const onError = (err: Error & { code?: unknown }) => {
      if (typeof err.code === "number" && REFUSED.has(err.code)) {
        done(new MqttError(`MQTT broker ${redact(url)} refused the connection: ${err.message} (check username and password)`, { cause: err }));
        return;
      }
      if (seen.has(err.message)) return;
      seen.add(err.message);
      ctx.log.warn(`MQTT broker ${redact(url)} unreachable (${err.message}); retrying every second`);
    };
    const onAbort = () => done(new MqttError(`stopped before the MQTT broker ${redact(url)} answered`));
    client.on("connect", onConnect);
    client.on("error", onError);
    if (ctx.signal.aborted) onAbort();
    else ctx.signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** Totals of one stream, once a `counts` event has given them. */
interface StreamCounts {
  lines: Map<string, { in: number; out: number }>;
  zones: Map<string, { occupancy: number; entries: number }>;
}

type CountsData = {
  lines?: Record<string, { in?: number; out?: number }>;
  zones?: Record<string, { occupancy?: number; entries?: number }>;
};

/**
 * Publishes the zones stage's results to an MQTT broker: each event as JSON,
 * the line and zone counts as retained plain numbers, and Home Assistant
 * discovery configs so that the counts appear there as sensors by themselves.
 */
export default defineOperator({
  name: "sink-mqtt",
  kind: "sink",
  description:
    "Publish events and line/zone counts to an MQTT broker (nats-server's MQTT listener or any other), with Home Assistant discovery configs (retained) for each count.",
  options: Options,
  async create(o, ctx) {
    const prefix = o.topic ?? `framewire/${level(ctx.pipeline)}`;
    const nodeId = o.nodeId ?? haId(`framewire_${ctx.pipeline}`);
    const status = `${prefix}/status`;
    // Loaded when a pipeline uses the sink, not whenever the registry is read.
    const { connect } = await import("mqtt");
    const client = connect(clientOptions(o, ctx, status));
    await firstConnect(client, o.url, ctx);
    ctx.log.info(`connected to ${redact(o.url)}: events on ${prefix}/<stream>/events/<type>, counts on ${prefix}/<stream>/line|zone/…${o.discovery ? `, Home Assistant discovery under ${o.discoveryPrefix}/sensor/${nodeId}/` : ""}`);

    let down = false;
    /** Errors already logged during this outage (the client retries every second). */
    const logged = new Set<string>();
    const published = { event: 0, state: 0, discovery: 0 };
    client.on("connect", () => {
      if (down) ctx.log.info(`MQTT broker ${redact(o.url)} is back`);
      down = false;
      logged.clear();
      // After a reconnect the broker may have published our will ("offline").
      client.publish(status, "online", { qos: o.qos, retain: true });
    });
    client.on("close", () => {
      if (!down && !client.disconnecting) ctx.log.warn(`MQTT link to ${redact(o.url)} down; results wait until it is back`);
      down = true;
    });
    client.on("error", (err) => {
      if (logged.has(err.message)) return;
      logged.add(err.message);
      ctx.log.warn(`MQTT broker ${redact(o.url)}: ${err.message}`);
    });
    await client.publishAsync(status, "online", { qos: o.qos, retain: true });

    const publish = async (kind: keyof typeof published, topic: string, payload: string, retain: boolean) => {
      await client.publishAsync(topic, payload, { qos: o.qos, retain });
      published[kind]++;
    };

    const counts = new Map<string, StreamCounts>();
    /** Lines and zones whose discovery configs are out, per stream. */
    const announced = new Set<string>();

    const stateTopic = (stream: string, what: "line" | "zone", id: string, value: string) => `${prefix}/${level(stream)}/${what}/${level(id)}/${value}`;

    /** Discovery configs for a line (in, out) or a zone (occupancy, entries), once per stream. */
    async function announce(stream: string, what: "line" | "zone", id: string): Promise<void> {
      const key = `${stream}\u0000${what}\u0000${id}`;
      if (!o.discovery || announced.has(key)) return;
      announced.add(key);
      const device = {
        identifiers: [`${nodeId}_${haId(stream)}`],
        name: `${ctx.pipeline} ${stream}`,
        manufacturer: "framewire",
        model: "zones",
      };
      const values = what === "line" ? (["in", "out"] as const) : (["occupancy", "entries"] as const);
      for (const value of values) {
        const object = haId(`${stream}_${what}_${id}_${value}`);
        const config = {
          name: `${id} ${value}`,
          unique_id: `${nodeId}_${object}`,
          state_topic: stateTopic(stream, what, id, value),
          availability_topic: status,
          unit_of_measurement: o.unit,
          // Totals only grow (a drop is a reset); occupancy goes up and down.
          state_class: value === "occupancy" ? "measurement" : "total_increasing",
          icon: value === "occupancy" ? "mdi:account-group" : value === "entries" ? "mdi:account-plus" : value === "in" ? "mdi:account-arrow-right" : "mdi:account-arrow-left",
          device,
          origin: { name: "framewire" },
        };
        await publish("discovery", `${o.discoveryPrefix}/sensor/${nodeId}/${object}/config`, JSON.stringify(config), true);
      }
    }

    const state = (stream: string, what: "line" | "zone", id: string, value: string, n: number) =>
      publish("state", stateTopic(stream, what, id, value), String(n), o.retain);

    /** Totals from a `counts` event: the whole set, authoritative. */
    async function onCounts(e: Event): Promise<void> {
      const data = e.data as CountsData;
      let c = counts.get(e.stream);
      if (!c) counts.set(e.stream, (c = { lines: new Map(), zones: new Map() }));
      for (const [id, t] of Object.entries(data.lines ?? {})) {
        await announce(e.stream, "line", id);
        const now = { in: Number(t.in ?? 0), out: Number(t.out ?? 0) };
        c.lines.set(id, now);
        await state(e.stream, "line", id, "in", now.in);
        await state(e.stream, "line", id, "out", now.out);
      }
      for (const [id, t] of Object.entries(data.zones ?? {})) {
        await announce(e.stream, "zone", id);
        const now = { occupancy: Number(t.occupancy ?? 0), entries: Number(t.entries ?? 0) };
        c.zones.set(id, now);
        await state(e.stream, "zone", id, "occupancy", now.occupancy);
        await state(e.stream, "zone", id, "entries", now.entries);
      }
    }

    /** A crossing, entry or exit moves the totals at once (between counts events), once they are known. */
    async function onChange(e: Event): Promise<void> {
      const c = counts.get(e.stream);
      if (e.type === "cross" && typeof e.data.line === "string") {
        const id = e.data.line;
        await announce(e.stream, "line", id);
        const t = c?.lines.get(id);
        if (!t) return;
        const dir = e.data.direction === "out" ? "out" : "in";
        t[dir]++;
        await state(e.stream, "line", id, dir, t[dir]);
      } else if ((e.type === "enter" || e.type === "exit") && typeof e.data.zone === "string") {
        const id = e.data.zone;
        await announce(e.stream, "zone", id);
        const t = c?.zones.get(id);
        if (!t) return;
        if (e.type === "enter") {
          t.occupancy++;
          t.entries++;
          await state(e.stream, "zone", id, "entries", t.entries);
        } else t.occupancy = Math.max(0, t.occupancy - 1);
        await state(e.stream, "zone", id, "occupancy", t.occupancy);
      }
    }

    const metrics = (): OperatorMetric[] => [
      ...(Object.keys(published) as (keyof typeof published)[]).map(
        (kind): OperatorMetric => ({ name: "mqtt_published_total", type: "counter", help: "MQTT messages published (acknowledged at QoS 1), by kind: event, state, discovery.", value: published[kind], labels: { kind } }),
      ),
      { name: "mqtt_connected", type: "gauge", help: "1 while the MQTT broker is connected.", value: client.connected ? 1 : 0 },
    ];

    return {
      metrics,
      async process(msg: Message) {
        if (msg.kind !== "event") return;
        if (o.events) await publish("event", `${prefix}/${level(msg.stream)}/events/${level(msg.type)}`, toJsonLine(msg, o.precision), false);
        if (msg.type === "counts") await onCounts(msg);
        else await onChange(msg);
      },
      async close() {
        ctx.log.info(`published ${published.event} events, ${published.state} count updates, ${published.discovery} discovery configs`);
        if (client.connected) {
          await client.publishAsync(status, "offline", { qos: o.qos, retain: true });
          await client.endAsync();
        } else {
          // Nothing is in flight (each result waited for its ack); the will has said offline.
          await client.endAsync(true);
        }
      },
    };
  },
});
