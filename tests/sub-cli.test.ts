/**
 * `bun run sub SUBJECT` (the NATS CLI's `nats sub`, for machines without it)
 * against a real nats-server, and the line a pipeline logs while no NATS
 * server answers at its URL.
 */
import { afterAll, expect, test } from "bun:test";
import { connect } from "@nats-io/transport-node";
import { formatPayload } from "../runtime/observe/sub-cli.ts";
import { startNatsServer, stopAllNatsServers } from "./support/nats.ts";
import { repoRoot } from "./support/paths.ts";
import { freePort } from "./support/ports.ts";
import { startProcess } from "./support/process.ts";

afterAll(stopAllNatsServers);

test("formatPayload: JSON pretty (or compact), text as is, binary as its size", () => {
  const enc = (s: string) => new TextEncoder().encode(s);
  expect(formatPayload(enc('{"a":[1,2]}'), false)).toBe('{\n  "a": [\n    1,\n    2\n  ]\n}');
  expect(formatPayload(enc('{"a":[1,2]}'), true)).toBe('{"a":[1,2]}');
  expect(formatPayload(enc("hello"), false)).toBe("hello");
  expect(formatPayload(new Uint8Array([0xff, 0x00, 0x01]), false)).toBe("<3 bytes, binary>");
  expect(formatPayload(new Uint8Array([0x46, 0x57, 0x00, 0x01]), false)).toBe("<4 bytes, binary>");
});

test("bun run sub prints each message's subject and payload, with wildcards, and stops after --count", async () => {
  const server = await startNatsServer();
  const c = startProcess(["bun", "run", "sub", "shop.>", "--nats", server.url, "--count", "3"], { cwd: repoRoot });
  await c.waitFor(/listening on "shop\.>"/);
  const nc = await connect({ servers: server.url });
  nc.publish("shop.results.cam.frames", JSON.stringify({ stream: "cam", seq: 0, detections: [] }));
  nc.publish("other.subject", "not for us");
  nc.publish("shop.results.cam.events", new Uint8Array([1, 2, 3, 0]));
  nc.publish("shop.text", "plain");
  await nc.flush();
  expect(await c.exited).toBe(0);
  await nc.close();
  expect(c.stdout()).toBe(
    [
      '[#1] Received on "shop.results.cam.frames"',
      '{\n  "stream": "cam",\n  "seq": 0,\n  "detections": []\n}',
      "",
      '[#2] Received on "shop.results.cam.events"',
      "<4 bytes, binary>",
      "",
      '[#3] Received on "shop.text"',
      "plain",
      "",
      "",
    ].join("\n"),
  );
});

test("bun run sub without a subject is a usage error (exit 2)", async () => {
  const c = startProcess(["bun", "runtime/cli.ts", "sub"], { cwd: repoRoot });
  expect(await c.exited).toBe(2);
  expect(c.stderr()).toContain("error: no subject given");
  expect(c.stderr()).toContain("bun run sub SUBJECT");
});

test("NATS_URL with no server there: the pipeline says which server to start, again with backoff, and connects once one is up", async () => {
  const port = await freePort();
  const c = startProcess(["bun", "runtime/cli.ts", "run", "retail.yaml", "--frames", "2"], {
    cwd: repoRoot,
    env: { NATS_URL: `nats://127.0.0.1:${port}`, STORE_ID: "hint", FRAMEWIRE_CONTROL_KEY: undefined },
  });
  try {
    const hint = `no NATS server answers at nats://127.0.0.1:${port} yet; start one: nats-server -js -a 127.0.0.1 -p ${port}`;
    await c.waitFor(new RegExp(hint.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")));
    // Said again while it keeps retrying (after 1 s, then 4 s more).
    await c.waitFor(new RegExp(`(${hint.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}[^\\n]*\\n[\\s\\S]*){2}`), 30_000);
    const server = await startNatsServer({ port, extra: "jetstream { store_dir: " + JSON.stringify(`${repoRoot}out/nats-hint-${port}`) + " }" });
    await c.waitFor(new RegExp(`connected to NATS 127\\.0\\.0\\.1:${port}`), 30_000);
    expect(await c.exited).toBe(0);
    await server.dispose();
  } finally {
    await c.stop();
    const { rm } = await import("node:fs/promises");
    await rm(`${repoRoot}out/nats-hint-${port}`, { recursive: true, force: true });
  }
}, 90_000);
