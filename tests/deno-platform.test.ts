/**
 * runtime/platform/index.ts under whichever runtime runs this file: `bun test`
 * checks the Bun adapter, `deno test` (deno.json's test.include) the Deno one.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { Hono } from "hono";
import { join } from "node:path";
import { ConfigError } from "../runtime/core/errors.ts";
import { NatsBus } from "../runtime/bus/nats.ts";
import { exists, existsSync, openWriter, readBytes, readText, runtimeName, serve, spawn, which } from "../runtime/platform/index.ts";
import { startNatsServer, stopAllNatsServers } from "./support/nats.ts";
import { tempDir } from "./support/paths.ts";
import { captureLog } from "./support/pipeline.ts";

const isDeno = "Deno" in globalThis;

afterAll(async () => {
  await stopAllNatsServers();
});

describe(`platform adapter (${isDeno ? "deno" : "bun"})`, () => {
  test("names the runtime it runs on", () => {
    expect(runtimeName).toMatch(isDeno ? /^deno \d+\.\d+\.\d+/ : /^bun \d+\.\d+\.\d+/);
  });

  test("spawn: piped stdout and stderr, extra env, the exit code; a killed child exits with null", async () => {
    const p = spawn("sh", ["-c", 'echo "out $FW_TEST_VAR"; echo err >&2; exit 3'], { env: { FW_TEST_VAR: "x" } });
    const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    expect([out, err, code]).toEqual(["out x\n", "err\n", 3]);

    const sleeper = spawn("sleep", ["30"]);
    sleeper.kill("SIGTERM");
    expect(await sleeper.exited).toBeNull();
  });

  test("files: a truncating writer, an appending one, text and bytes back", async () => {
    const dir = await tempDir();
    try {
      const file = join(dir.path, "nested", "out.txt");
      expect(await exists(file)).toBe(false);
      const w = await openWriter(file);
      w.write("a\n");
      w.write(new TextEncoder().encode("b\n"));
      await w.close();
      const more = await openWriter(file, true);
      more.write("c\n");
      await more.close();
      expect(existsSync(file)).toBe(true);
      expect(await readText(file)).toBe("a\nb\nc\n");
      expect(await readBytes(file)).toEqual(new TextEncoder().encode("a\nb\nc\n"));
      const again = await openWriter(file);
      again.write("d\n");
      await again.close();
      expect(await readText(file)).toBe("d\n");
    } finally {
      await dir.remove();
    }
  });

  test("which finds executables on PATH and says undefined for the rest", () => {
    expect(which("sh")).toMatch(/\/sh$/);
    expect(which("framewire-no-such-command")).toBeUndefined();
  });

  test("serve: a hono app on port 0 answers; a taken port is a ConfigError naming it; stop closes it", async () => {
    const app = new Hono().post("/echo", async (c) => c.text(`${runtimeName}: ${await c.req.text()}`));
    const server = serve(app.fetch, { hostname: "127.0.0.1", port: 0, maxRequestBodySize: 1 << 20 });
    const url = `http://127.0.0.1:${server.port}/echo`;
    try {
      expect(server.port).toBeGreaterThan(0);
      const res = await fetch(url, { method: "POST", body: "hi" });
      expect(await res.text()).toBe(`${runtimeName}: hi`);
      let taken: unknown;
      try {
        serve(app.fetch, { hostname: "127.0.0.1", port: server.port }).stop();
      } catch (err) {
        taken = err;
      }
      expect(taken).toBeInstanceOf(ConfigError);
      expect((taken as Error).message).toContain(`cannot listen on 127.0.0.1:${server.port}`);
    } finally {
      await server.stop();
    }
    await expect(fetch(url, { method: "POST", body: "again" })).rejects.toThrow();
  });

  test("a NATS server refusing the credentials again and again: a ConfigError each time, never a crash", async () => {
    // Under Deno the refused connection's reset used to arrive after nats.js had destroyed the socket, as an uncaught error.
    const nats = await startNatsServer({ extra: "authorization { users: [ { user: cam, password: s3cret } ] }" });
    for (let i = 0; i < 30; i++) {
      const err = await NatsBus.connect({ url: nats.url, user: "cam", password: "wrong", log: captureLog("bus") }).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err).toBeInstanceOf(ConfigError);
    }
    const ok = await NatsBus.connect({ url: nats.url, user: "cam", password: "s3cret", log: captureLog("bus") });
    expect(ok.stats.connected).toBe(true);
    await ok.drain(1000);
    await nats.dispose();
  });
});
