/** The NATS bus against real nats-server processes on free 127.0.0.1 ports. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ConfigError } from "../runtime/core/errors.ts";
import { tensorPixels } from "../runtime/core/byte-tensor.ts";
import type { Frame, Message } from "../runtime/core/message.ts";
import { pixelTensor } from "../runtime/inference/pixel-tensor.ts";
import { NatsBus, PayloadTooLargeError } from "../runtime/bus/nats.ts";
import { makeEvent, makeFrame } from "./support/frames.ts";
import { startNatsServer, stopAllNatsServers, type NatsServer } from "./support/nats.ts";
import { tempDir } from "./support/paths.ts";
import { freePort } from "./support/ports.ts";
import { startProcess } from "./support/process.ts";
import { loadRegistry } from "../runtime/spec/registry.ts";
import { captureLog, parse, parseError, type CapturedLog } from "./support/pipeline.ts";
import { until } from "./support/wait.ts";

let server: NatsServer;
const buses: NatsBus[] = [];
const logs = new WeakMap<NatsBus, CapturedLog>();
const logOf = (b: NatsBus) => logs.get(b)!;

/** A connected bus whose log the test reads (logOf), closed in afterAll. */
async function bus(url = server.url, extra: Partial<Parameters<typeof NatsBus.connect>[0]> = {}): Promise<NatsBus> {
  const log = captureLog("bus");
  const b = await NatsBus.connect({ url, log, ...extra });
  buses.push(b);
  logs.set(b, log);
  return b;
}

beforeAll(async () => {
  server = await startNatsServer();
});
afterAll(async () => {
  for (const b of buses) await b.close();
  await stopAllNatsServers();
});

const picture = (seq: number, o: { live?: boolean; width?: number } = {}) =>
  makeFrame(seq, { live: o.live, width: o.width ?? 100, height: 100, fill: (x, y) => [x * 2, y * 2, 128] });

describe("NatsBus", () => {
  test("frames and events cross NATS intact; a JPEG link puts a fraction of the bytes on the wire", async () => {
    const a = await bus();
    const b = await bus();
    const got: Message[] = [];
    b.subscribe("fw.t.frames", (m) => void got.push(m));
    await b.nc.flush();
    const f = picture(1);
    const e = makeEvent(2);
    await a.publish("fw.t.frames", f);
    await a.publish("fw.t.frames", e);
    await until(() => got.length === 2, "2 messages");
    expect(got).toEqual([f, e]);

    const rawBytes = a.nc.stats().outBytes;
    await a.publish("fw.t.frames", picture(3), { encoding: "jpeg", quality: 80 });
    await a.nc.flush();
    const jpegBytes = a.nc.stats().outBytes - rawBytes;
    await until(() => got.length === 3, "the JPEG frame");
    expect(jpegBytes * 5).toBeLessThan(f.image.data.length);
    expect((got[2] as Frame).image).toMatchObject({ width: 100, height: 100, format: "rgb24" });
    expect((got[2] as Frame).image.data.length).toBe(100 * 100 * 3);
  });

  test("JPEG frames decode concurrently (sharp) and reach the handler in the order they were sent", async () => {
    const a = await bus();
    const b = await bus();
    const got: Frame[] = [];
    b.subscribe("fw.t.order", (m) => void got.push(m as Frame));
    await b.nc.flush();
    // Big and small frames alternate: a small one decodes faster than the big one sent before it.
    for (let seq = 0; seq < 20; seq++) a.publish("fw.t.order", picture(seq, { width: seq % 2 ? 16 : 640 }), { encoding: "jpeg", quality: 80 });
    await until(() => got.length === 20, "20 JPEG frames");
    expect(got.map((f) => f.seq)).toEqual(Array.from({ length: 20 }, (_, i) => i));
    expect(got.map((f) => f.image.data.length)).toEqual(Array.from({ length: 20 }, (_, i) => (i % 2 ? 16 : 640) * 100 * 3));
  });

  test("a handler that throws is logged and the messages after it still arrive in order", async () => {
    const a = await bus();
    const b = await bus();
    const got: number[] = [];
    b.subscribe("fw.t.throw", (m) => {
      if (m.seq === 1) throw new Error("boom");
      got.push(m.seq);
    });
    await b.nc.flush();
    for (let seq = 0; seq < 4; seq++) await a.publish("fw.t.throw", picture(seq, { width: 8 }));
    await until(() => got.length === 3, "the 3 other frames");
    expect(got).toEqual([0, 2, 3]);
    expect(logOf(b).lines.some((l) => l.includes("handler for fw.t.throw: boom"))).toBe(true);
  });

  test("uint8 tensors and float32 predictions arrive intact whatever their byte offset in the message (unaligned blobs are copied)", async () => {
    const a = await bus();
    const b = await bus();
    const got: Frame[] = [];
    b.subscribe("fw.t.tensors", (m) => void got.push(m as Frame));
    await b.nc.flush();
    const sent: Frame[] = [];
    // Stream ids of 1..4 characters shift the blobs after the meta through every alignment.
    for (const stream of ["a", "ab", "abc", "abcd"]) {
      const f = makeFrame(1, { stream, width: 2, height: 2 });
      const values = Float32Array.from({ length: 12 }, (_, i) => i + stream.length / 10);
      const bytes = Uint8Array.from({ length: 12 }, (_, i) => i * 20 + stream.length);
      const frame: Frame = {
        ...f,
        tensor: pixelTensor([1, 3, 2, 2], bytes, { scaleX: 1, scaleY: 1, padX: 0, padY: 0 }),
        predictions: { layout: "yolov5", dims: [1, 2, 6], data: values.map((x) => -x), classNames: ["person"], model: "m.onnx" },
      };
      sent.push(frame);
      await a.publish("fw.t.tensors", frame);
    }
    await until(() => got.length === 4, "4 frames with tensors");
    for (const [i, f] of got.entries()) {
      expect(tensorPixels(f.tensor!)).toEqual(tensorPixels(sent[i].tensor!)!);
      expect([...f.tensor!.data]).toEqual([...sent[i].tensor!.data]);
      expect([...f.predictions!.data]).toEqual([...sent[i].predictions!.data]);
    }
  });

  test("a message over max_payload fails at once with the limit and the fix, and the bus keeps working", async () => {
    const small = await startNatsServer({ maxPayload: "64KB" });
    const b = await bus(small.url);
    let err: unknown;
    try {
      await b.publish("fw.t.big", picture(1, { width: 300 })); // 90 KB of pixels
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PayloadTooLargeError);
    const msg = (err as Error).message;
    expect(msg).toContain("message on fw.t.big is 90");
    expect(msg).toContain("max_payload is 65536");
    expect(msg).toContain("raise max_payload in the server config");
    expect(() => b.publishRaw("fw.t.big", new Uint8Array(70_000))).toThrow(PayloadTooLargeError);
    const got: Message[] = [];
    b.subscribe("fw.t.small", (m) => void got.push(m));
    await b.publish("fw.t.small", picture(2, { width: 10 }));
    await until(() => got.length === 1, "a small frame after the big one");
    await small.dispose();
  });

  test("foreign and malformed messages are rejected, counted and logged with their subject; good ones still flow", async () => {
    const b = await bus();
    const got: Message[] = [];
    b.subscribe("fw.t.in", (m) => void got.push(m));
    b.serve("fw.t.req", async () => "done");
    await b.nc.flush();
    const raw = (await bus()).nc;
    raw.publish("fw.t.in", "hello");
    raw.publish("fw.t.in", new Uint8Array([0x46, 0x57, 0x4d, 0x32, 0xff, 0xff, 0xff, 0xff]));
    raw.publish("fw.t.in", new Uint8Array([0x46, 0x57, 0x4d, 0x31, 0, 0, 0, 2, 0x7b, 0x7d])); // a v1 sender's frame
    raw.publish("fw.t.in", JSON.stringify({ kind: "event", stream: 3 }));
    const reply = await raw.request("fw.t.req", "{}", { timeout: 5000 });
    expect(reply.string()).toBe("rejected");
    await b.publish("fw.t.in", makeEvent(9));
    await until(() => got.length === 1, "the valid event");
    expect(got[0]).toMatchObject({ kind: "event", seq: 9 });
    expect(b.stats.rejected).toBe(5);
    expect(b.stats.rejectedBy.malformed).toBe(5);
    const warnings = logOf(b).lines.filter((l) => l.startsWith("warn"));
    expect(warnings.filter((l) => l.includes("rejected message on fw.t.in"))).toHaveLength(4);
    expect(warnings.some((l) => l.includes("frame is wire format v1 (FWM1); this framewire reads v2: upgrade the sender"))).toBe(true);
    expect(warnings.some((l) => l.includes("rejected message on fw.t.req") && l.includes("not a framewire event"))).toBe(true);
    expect(warnings.some((l) => l.includes("meta length"))).toBe(true);
  });

  test("flow control: the handler's promise is awaited before the next message; past maxPendingBytes live frames drop and others are lost loudly, both counted", async () => {
    const a = await bus();
    const b = await bus();
    // Honoured promises: a slow handler is never entered twice at once, and every message arrives in order.
    let inside = 0;
    let most = 0;
    const seen: number[] = [];
    b.subscribe("fw.t.flow", async (m) => {
      most = Math.max(most, ++inside);
      await new Promise((r) => setTimeout(r, 5));
      seen.push(m.seq);
      inside--;
    });
    await b.nc.flush();
    for (let i = 0; i < 20; i++) await a.publish("fw.t.flow", picture(i));
    await until(() => seen.length === 20, "20 frames through the slow handler");
    expect(most).toBe(1);
    expect(seen).toEqual(Array.from({ length: 20 }, (_, i) => i));

    // A handler that does not take anything until released, and room for about three frames waiting.
    const frameBytes = a.encode("fw.t.behind", picture(0)).length;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const taken: Message[] = [];
    b.subscribe("fw.t.behind", async (m) => {
      await gate;
      taken.push(m);
    }, { maxPendingBytes: 3 * frameBytes });
    await b.nc.flush();
    for (let i = 0; i < 10; i++) await a.publish("fw.t.behind", picture(i, { live: true }));
    for (let i = 10; i < 14; i++) await a.publish("fw.t.behind", picture(i));
    await a.nc.flush();
    await until(() => b.stats.droppedBehind + b.stats.refusedBehind === 11, "11 messages past the limit");
    release();
    await until(() => taken.length === 3, "the 3 that waited");
    expect(taken.map((m) => m.seq)).toEqual([0, 1, 2]);
    expect([b.stats.droppedBehind, b.stats.refusedBehind]).toEqual([7, 4]);
    expect(logOf(b).text()).toContain("subscription fw.t.behind falls behind");
    expect(logOf(b).text()).toContain("LOST frame s#10, which the publisher sent as not droppable");
  });

  test("NATS down at start: says so, retries, and connects once the server is up", async () => {
    const port = await freePort();
    const log = captureLog("bus");
    const connecting = NatsBus.connect({ url: `nats://127.0.0.1:${port}`, log });
    await until(() => log.text().includes("retry #2"), "two connect retries");
    expect(log.text()).toMatch(new RegExp(`NATS nats://127\\.0\\.0\\.1:${port} unreachable \\(.+\\); retry #1 in 0\\.3 s`));
    const late = await startNatsServer({ port });
    const b = await connecting;
    buses.push(b);
    expect(b.stats.connected).toBe(true);
    expect(log.text()).toContain(`connected to NATS 127.0.0.1:${port}`);
    await late.dispose();
  });

  test("NATS down at start and shutdown asked: a clear error instead of retrying forever", async () => {
    const port = await freePort();
    const stop = new AbortController();
    const log = captureLog("bus");
    const connecting = NatsBus.connect({ url: `nats://user:secret@127.0.0.1:${port}`, log, signal: stop.signal });
    await until(() => log.text().includes("retry #1"), "a retry");
    stop.abort();
    const err = await connecting.then(() => undefined, (e: Error) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect(err!.message).toContain(`NATS nats://***@127.0.0.1:${port} unreachable`); // the password is not logged
  });

  test("restart: live frames past the reconnect buffer are dropped and counted, the rest arrive after the reconnect", async () => {
    const own = await startNatsServer();
    // One connection publishes and subscribes: on reconnect nats.js re-subscribes before it flushes, so nothing races.
    const b = await bus(own.url, { reconnectBuffer: 100_000 });
    const got: Message[] = [];
    b.subscribe("fw.t.buf", (m) => void got.push(m));
    await b.nc.flush();
    await own.stop();
    await until(() => !b.stats.connected, "the disconnect");
    for (let i = 0; i < 10; i++) await b.publish("fw.t.buf", picture(i, { live: true })); // ~30 KB each: 3 fit
    expect(b.stats.droppedOffline).toBe(7);
    // A file frame must not be lost: it waits for the reconnect.
    let sent = false;
    const waiting = b.publish("fw.t.buf", picture(99)).then(() => (sent = true));
    await new Promise((r) => setTimeout(r, 200));
    expect(sent).toBe(false);
    await own.start();
    await waiting;
    await until(() => got.length === 4, "the buffered frames and the file frame");
    expect(got.map((m) => m.seq)).toEqual([0, 1, 2, 99]);
    expect(b.stats.reconnects).toBe(1);
    expect(logOf(b).text()).toContain("NATS reconnected");
    expect(logOf(b).text()).toContain("dropped a live frame (1 so far)");
    await own.dispose();
  });

  test("drain is bounded when the server is gone", async () => {
    const own = await startNatsServer();
    const b = await bus(own.url);
    await own.stop();
    await until(() => !b.stats.connected, "the disconnect");
    await b.publish("fw.t.lost", makeEvent(1));
    await b.drain(300);
    expect(b.nc.isClosed()).toBe(true);
    expect(logOf(b).text()).toContain("NATS drain did not finish in 300 ms; closing");
  });
});

describe("NatsBus credentials and TLS", () => {
  test("user and password from options; a wrong password is a clear error, not endless retries", async () => {
    const own = await startNatsServer({ extra: "authorization { users: [ { user: cam, password: s3cret } ] }" });
    const ok = await bus(own.url, { user: "cam", password: "s3cret" });
    expect(ok.stats.connected).toBe(true);
    const err = await NatsBus.connect({ url: own.url, user: "cam", password: "wrong", log: captureLog("bus") }).then(() => undefined, (e: Error) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect(err!.message).toMatch(/authorization/i);
    await own.dispose();
  });

  test("a token in the URL", async () => {
    const own = await startNatsServer({ extra: 'authorization { token: "t0ken" }' });
    const ok = await bus(`nats://t0ken@127.0.0.1:${own.port}`);
    expect(ok.stats.connected).toBe(true);
    await own.dispose();
  });

  // Deno's node:tls, like Node's, checks the certificate against "localhost" when nats.js upgrades a socket to an IP address (README, Deno).
  test.skipIf("Deno" in globalThis)("TLS with a private CA: tls:// and the CA file connect; without the CA the certificate is refused", async () => {
    const dir = await tempDir("framewire-tls-");
    try {
      await makeCertificates(dir.path);
      const own = await startNatsServer({ extra: `tls { cert_file: "${join(dir.path, "server.pem")}", key_file: "${join(dir.path, "server.key")}" }` });
      const ok = await bus(`tls://127.0.0.1:${own.port}`, { tls: { ca: join(dir.path, "ca.pem") } });
      const got: Message[] = [];
      ok.subscribe("fw.t.tls", (m) => void got.push(m));
      await ok.publish("fw.t.tls", makeEvent(1));
      await until(() => got.length === 1, "a message over TLS");
      const err = await NatsBus.connect({ url: `tls://127.0.0.1:${own.port}`, log: captureLog("bus") }).then(() => undefined, (e: Error) => e);
      expect(err).toBeInstanceOf(ConfigError);
      expect(err!.message).toMatch(/certificate/i);
      await own.dispose();
    } finally {
      await dir.remove();
    }
  });
});

/** A CA and a server certificate for 127.0.0.1 (EC keys: quick to make). */
async function makeCertificates(dir: string): Promise<void> {
  await writeFile(join(dir, "san.ext"), "subjectAltName=IP:127.0.0.1\n");
  const key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  const steps = [
    ["openssl", "req", "-x509", ...key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=framewire test CA"],
    ["openssl", "req", ...key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
    ["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.ext"],
  ];
  for (const cmd of steps) {
    const p = startProcess(cmd, { cwd: dir });
    if ((await p.exited) !== 0) throw new Error(`${cmd.join(" ")} failed: ${p.stderr()}`);
  }
}

describe("bus: in the pipeline file", () => {
  const stages = `
stages:
  - id: cam
    use: ingest
    with: { url: "rtsp://cam/1" }
    link: { encoding: jpeg, quality: 70 }
  - id: out
    use: sink-log`;

  test("an object gives the URL, credentials, TLS files and the reconnect buffer; link sets a stage's wire encoding", async () => {
    const spec = parse(
      `name: b
bus:
  url: \${NATS_URL}
  user: cam
  password: \${NATS_PASSWORD}
  tls: { ca: /etc/nats/ca.pem }
  reconnectBufferMB: 16${stages}`,
      await loadRegistry(),
      { NATS_URL: "tls://hub:4222", NATS_PASSWORD: "s3cret" },
    );
    expect(spec.bus).toBe("tls://hub:4222");
    expect(spec.nats).toEqual({ user: "cam", password: "s3cret", tls: { ca: "/etc/nats/ca.pem" }, reconnectBufferMB: 16 });
    expect(spec.stages[0].link).toEqual({ encoding: "jpeg", quality: 70 });
    expect(spec.stages[1].link).toBeUndefined();
  });

  test("mistakes inside the object are reported at their line and path", async () => {
    const err = parseError(
      `name: b
bus:
  url: http://hub
  tls: { ca: ca.pem, pem: x }${stages}`,
      await loadRegistry(),
    );
    expect(err.message).toContain("test.yaml:3:8: bus.url: expected a nats:// or tls:// URL");
    expect(err.message).toContain("bus.tls.pem: unknown key (allowed: ca, cert, key)");
  });
});
