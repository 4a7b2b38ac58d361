/**
 * NATS over TLS with a self-signed CA made by openssl: NatsBus connects with
 * `tls: { ca }` and messages flow; without the CA it refuses with a clear
 * ConfigError instead of retrying forever.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { ConfigError } from "../runtime/core/errors.ts";
import type { Message } from "../runtime/core/message.ts";
import { NatsBus } from "../runtime/bus/nats.ts";
import { tempDir } from "./support/paths.ts";
import { captureLog } from "./support/pipeline.ts";
import { startNatsServer, stopAllNatsServers, type NatsServer } from "./support/nats.ts";
import { startProcess } from "./support/process.ts";
import { until } from "./support/wait.ts";

setDefaultTimeout(60_000);

let tmp: Awaited<ReturnType<typeof tempDir>>;
let server: NatsServer;
let ca: string;

async function openssl(...args: string[]) {
  const p = startProcess(["openssl", ...args], { cwd: tmp.path });
  expect(await p.exited).toBe(0);
}

beforeAll(async () => {
  tmp = await tempDir("framewire-tls-");
  ca = join(tmp.path, "ca.pem");
  // A CA, and a server certificate for 127.0.0.1 signed by it.
  await openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=framewire test CA", "-keyout", "ca.key", "-out", "ca.pem");
  await openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr");
  await Bun.write(join(tmp.path, "san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  await openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "server.pem");
  server = await startNatsServer({ extra: `tls { cert_file: "${join(tmp.path, "server.pem")}", key_file: "${join(tmp.path, "server.key")}" }` });
});
afterAll(async () => {
  await stopAllNatsServers();
  await tmp?.remove();
});

describe("NATS over TLS", () => {
  test("NatsBus with bus: { url: tls://..., tls: { ca } } connects and carries messages", async () => {
    const url = `tls://127.0.0.1:${server.port}`;
    const [a, b] = await Promise.all([NatsBus.connect({ url, tls: { ca }, log: captureLog("a") }), NatsBus.connect({ url, tls: { ca }, log: captureLog("b") })]);
    try {
      const got: Message[] = [];
      b.subscribe("sec.tls", (m) => void got.push(m));
      const event: Message = { kind: "event", stream: "cam", seq: 1, ts: 1, type: "cross", data: { line: "door" } };
      await until(() => {
        void a.publish("sec.tls", event);
        return got.length > 0;
      }, "a message over TLS", 10_000, 100);
      expect(got[0]).toMatchObject({ kind: "event", type: "cross" });
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  test("a client that does not trust the server's certificate is refused with a ConfigError", async () => {
    const err = await NatsBus.connect({ url: `tls://127.0.0.1:${server.port}`, log: captureLog("c"), signal: AbortSignal.timeout(5000) }).catch((e) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect(err.message).toMatch(/certificate|tls|ssl/i);
  });
});
