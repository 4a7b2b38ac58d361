/**
 * Docs that run: every fenced shell block (```sh, bash, shell, console) in
 * README.md and docs/*.md is either run here, or marked as not runnable with
 * the reason, by an HTML comment on the line right before the fence:
 *
 *     <!-- not-run: needs a real camera at rtsp://10.0.0.5 -->
 *
 * A block is run as written, through bash in the repository, with only
 * these substitutions (each runner below lists its own):
 * - `bun run NAME` becomes the package.json script it names (`bun runtime/cli.ts ...`),
 *   so a process started in the background is the one stopped by PID;
 * - fixed ports (4222, 4223, 8000, 9464, 1883, ...) become free 127.0.0.1 ports,
 *   with servers the test starts there (nats-server from the shipped configs,
 *   `bun run serve`, the GStreamer RTSP server for camera URLs), and `localhost` becomes 127.0.0.1;
 * - /tmp paths become a temp folder, `DIR` placeholders real folders, `--frames N` a few frames
 *   (a pipeline over the whole 80 s clip would take minutes here);
 * - a command that runs until stopped gets `&` and a wait until it answers; background jobs are
 *   stopped by PID when the block ends.
 * Output a block shows next to a command — `# {...}`, `# [...]`, `# error: ...` lines right after
 * it, or a fenced block that follows — is checked against what the command printed (`...` stands
 * for anything). A block that is neither marked nor known here fails the first test, so new docs
 * must decide.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { copyFile, mkdir, readFile, symlink, writeFile } from "node:fs/promises";
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { dataDir, repoRoot, tempDir } from "./support/paths.ts";
import { freePort } from "./support/ports.ts";
import { startProcess } from "./support/process.ts";
import { until } from "./support/wait.ts";
import { startRtspServer, stopAllRtspServers, type RtspServer } from "./support/rtsp.ts";
import { startServe, type ServeProcess } from "./support/serve.ts";
import { disposeAllNatsServers, startHubAndEdge, startJetStreamServer } from "./support/jetstream.ts";

setDefaultTimeout(120_000);

const SHELL = /^```(sh|bash|shell|console)\s*$/;
const NOT_RUN = /^<!--\s*not-run:(.*?)-->\s*$/;

interface ShellBlock {
  file: string;
  /** 1-based line of the opening fence. */
  line: number;
  text: string;
  /** The reason given by a `<!-- not-run: ... -->` line before the fence ("" when marked without one). */
  notRun?: string;
}

/** The fenced shell blocks of a markdown file. */
function shellBlocks(file: string, text = readFileSync(join(repoRoot, file), "utf8")): ShellBlock[] {
  const lines = text.split("\n");
  const out: ShellBlock[] = [];
  for (let i = 0; i < lines.length; i++) {
    const fence = /^(\s*)```(\S*)/.exec(lines[i]);
    if (!fence) continue;
    let j = i + 1;
    while (j < lines.length && lines[j].trim() !== "```") j++;
    if (SHELL.test(lines[i].trim())) {
      let k = i - 1;
      while (k >= 0 && lines[k].trim() === "") k--;
      const mark = k >= 0 ? NOT_RUN.exec(lines[k].trim()) : null;
      out.push({
        file,
        line: i + 1,
        text: lines
          .slice(i + 1, j)
          .map((l) => l.slice(fence[1].length))
          .join("\n"),
        ...(mark ? { notRun: mark[1].trim() } : {}),
      });
    }
    i = j;
  }
  return out;
}

const docFiles = ["README.md", ...readdirSync(join(repoRoot, "docs")).filter((f) => f.endsWith(".md")).sort().map((f) => `docs/${f}`)];
const firstLine = (text: string) => text.split("\n").find((l) => l.trim() !== "")!.trim();

interface Step {
  command: string;
  /** Output the doc shows for it (`# ` lines right after it). */
  shown: string[];
}

/** Commands of a block (continuation lines joined) with the output shown under each. */
function steps(text: string): Step[] {
  const out: Step[] = [];
  let lastWasCommandOrOutput = false;
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.trim() === "") {
      lastWasCommandOrOutput = false;
      continue;
    }
    const m = /^#( .*)?$/.exec(line.trim());
    if (m) {
      const body = (m[1] ?? "").slice(1);
      const cur = out.at(-1);
      const continues = cur && cur.shown.length > 0 && /^\s/.test(body);
      if (cur && lastWasCommandOrOutput && (continues || /^(\{|\[|error:)/.test(body) || (cur.shown.length > 0 && /^\//.test(body)))) {
        // A continued line: JSON goes on where it broke, prose after a space.
        if (continues) cur.shown[cur.shown.length - 1] += (/[,{[]$/.test(cur.shown.at(-1)!) ? "" : " ") + body.trim();
        else cur.shown.push(body);
        continue;
      }
      lastWasCommandOrOutput = false;
      continue;
    }
    let command = line;
    while (command.endsWith("\\") && i + 1 < lines.length) command = command + "\n" + lines[++i];
    out.push({ command, shown: [] });
    lastWasCommandOrOutput = true;
  }
  return out;
}

/** `expected` (with `...` for anything) matches one of the `actual` lines. */
function shownMatches(expected: string, actual: string[]): boolean {
  const e = expected.trim();
  if (!e.includes("...")) return actual.some((a) => a.trim() === e);
  const re = new RegExp("^" + e.split("...").map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join(".*") + "$");
  return actual.some((a) => re.test(a.trim()));
}

const scripts = (JSON.parse(readFileSync(join(repoRoot, "package.json"), "utf8")) as { scripts: Record<string, string> }).scripts;

/** `bun run NAME` → the script's own command (the process stopped by PID is then the one that runs). */
function expandScripts(text: string): string {
  return text.replace(/\bbun run ([a-z][\w-]*)/g, (all, name: string) => scripts[name] ?? all);
}

interface RunResult {
  code: number;
  /** stdout + stderr of each step, in order. */
  outputs: string[];
  stdout: string;
  stderr: string;
}

/**
 * Runs a block's steps in one bash, `set -e`, background jobs stopped by PID at the end.
 * `subs` are applied to the text first; `ready` maps a step index to shell run right after it
 * (a wait until a server started in the background answers).
 */
async function runBlock(
  text: string,
  o: { subs?: [RegExp | string, string][]; env?: Record<string, string | undefined>; background?: RegExp[]; ready?: Record<number, string>; limitMs?: number } = {},
): Promise<RunResult & { steps: Step[] }> {
  let t = text;
  for (const [a, b] of o.subs ?? []) {
    const before = t;
    t = typeof a === "string" ? t.replaceAll(a, b) : t.replace(a, b);
    if (t === before) throw new Error(`substitution ${a} matched nothing in:\n${text}`);
  }
  t = t.replaceAll("localhost:", "127.0.0.1:");
  const list = steps(expandScripts(t));
  const body = list
    .map((s, i) => {
      const bg = (o.background ?? []).some((re) => re.test(s.command)) && !/&\s*(#.*)?$/.test(s.command);
      const cmd = bg ? s.command.replace(/\s*(#.*)?$/, " &") : s.command;
      return `printf '\\n@@@ ${i}\\n'; printf '\\n@@@ ${i}\\n' >&2\n${cmd}\n${o.ready?.[i] ?? ""}`;
    })
    .join("\n");
  const script = `set -eo pipefail\ncleanup() { for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }\ntrap cleanup EXIT\ntrap 'exit 143' TERM INT\n${body}\n`;
  if (process.env.FRAMEWIRE_TEST_LOG === "1") console.error(`--- block script ---\n${script}`);
  const c = startProcess(["bash", "-c", script], {
    cwd: repoRoot,
    env: { PATH: `${dirname(process.execPath)}:${process.env.PATH}`, NO_COLOR: "1", FRAMEWIRE_CONTROL_KEY: undefined, FRAMEWIRE_HTTP_TOKEN: undefined, NATS_URL: undefined, ...o.env },
  });
  const limit = setTimeout(() => void c.stop(5000), o.limitMs ?? 90_000);
  const code = await c.exited;
  clearTimeout(limit);
  const split = (s: string) => {
    const parts: string[] = [];
    for (const chunk of s.split(/^@@@ (\d+)\n/m).slice(1).reduce<[number, string][]>((acc, x, i, all) => (i % 2 === 0 ? [...acc, [Number(x), all[i + 1] ?? ""]] : acc), [])) parts[chunk[0]] = chunk[1];
    return parts;
  };
  const so = split(c.stdout());
  const se = split(c.stderr());
  const outputs = list.map((_, i) => (so[i] ?? "") + (se[i] ?? ""));
  return { code, outputs, stdout: c.stdout(), stderr: c.stderr(), steps: list };
}

/** Every step's shown output appears in what it printed. */
function expectShown(r: RunResult & { steps: Step[] }): number {
  let n = 0;
  r.steps.forEach((s, i) => {
    const actual = r.outputs[i].split("\n");
    for (const e of s.shown) {
      n++;
      if (!shownMatches(e, actual)) throw new Error(`step "${s.command}": shown output\n  ${e}\nnot in what it printed:\n${r.outputs[i]}`);
    }
  });
  return n;
}

function expectOk(r: RunResult): void {
  if (r.code !== 0) throw new Error(`exit ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
}

/** Waits (in the block's bash) until `url` answers 2xx. */
const waitHttp = (url: string) => `for i in $(seq 1 600); do curl -sf -o /dev/null "${url}" && break; sleep 0.1; done; curl -sf -o /dev/null "${url}"`;

let rtsp: RtspServer;
const shared: { serve?: ServeProcess } = {};
/** Processes started for several blocks, stopped by PID at the end. */
const background: { stop(): Promise<number> }[] = [];
let tmp: { path: string; remove(): Promise<void> };

/** Stream sets the blocks' runtime changes leave in out/ (e.g. docs/retail.md adds a camera): removed after, so later runs get their file's cameras. */
const outDir = join(repoRoot, "out");
const streamSets = () => (existsSync(outDir) ? readdirSync(outDir).filter((f) => f.endsWith(".streams.json")) : []);
let streamSetsBefore: string[] = [];

beforeAll(async () => {
  streamSetsBefore = streamSets();
  tmp = await tempDir("framewire-docs-blocks-");
  rtsp = await startRtspServer(join(repoRoot, "pipelines/media/vtest.mp4"));
});
afterAll(async () => {
  await shared.serve?.stop();
  await Promise.all(background.map((p) => p.stop()));
  await stopAllRtspServers();
  await disposeAllNatsServers();
  await tmp?.remove();
  for (const f of streamSets()) if (!streamSetsBefore.includes(f)) rmSync(join(outDir, f), { force: true });
});

/** A runner per block, keyed by file and the block's first line. */
const runners: { file: string; first: string; run: (b: ShellBlock) => Promise<void> }[] = [
  {
    file: "README.md",
    first: "bun run pipeline demo.yaml                 # bare names resolve under pipelines/",
    // The whole clip (795 frames) and the camera as given would take minutes / need a camera: 3 frames, the test's RTSP server.
    run: async (b) => {
      const r = await runBlock(b.text, {
        subs: [
          [/^bun run pipeline demo\.yaml(\s+#)/m, "bun run pipeline demo.yaml --frames 3$1"],
          ["--frames 100", "--frames 3"],
          ["CAMERA_URL=rtsp://user:pass@10.0.0.5/stream1 bun run pipeline demo.yaml", `CAMERA_URL=${rtsp.url} bun run pipeline demo.yaml --frames 3`],
        ],
      });
      expectOk(r);
      // The summary the README shows (its figures are one run's): same first line shape, header and stages.
      const readme = readFileSync(join(repoRoot, "README.md"), "utf8");
      const shown = /```\n(framewire: demo stopped[\s\S]*?)```/.exec(readme)![1].trimEnd().split("\n");
      for (const i of [0, 1, 2]) {
        const out = r.outputs[i];
        expect(out).toMatch(/^framewire: demo stopped \(--frames 3 reached\) after [\d.]+ s on the memory bus$/m);
        expect(shown[0]).toMatch(/^framewire: demo stopped \(--frames \d+ reached\) after [\d.]+ s on the memory bus$/);
        expect(out).toMatch(/^frames: 3 in, 3 out, 0 dropped, 0 failed, [\d.]+ fps; end-to-end p50 \d+ ms, p99 \d+ ms$/m);
        expect(shown[1]).toMatch(/^frames: \d+ in, \d+ out, 0 dropped, 0 failed, [\d.]+ fps; end-to-end p50 \d+ ms, p99 \d+ ms$/);
        const table = (lines: string[]) => lines.slice(lines.findIndex((l) => l.startsWith("stage "))).slice(0, 7).map((l) => l.split(/\s+/).slice(0, 2).join(" "));
        expect(table(out.split("\n"))).toEqual(table(shown));
      }
      expect(r.outputs[3]).toContain("pipelines/demo.yaml: valid — 6 stages");
    },
  },
  {
    file: "README.md",
    first: "bun run eval coco --images DIR --labels DIR [--model yolov5n.onnx]",
    // Three COCO images with their labels from ../shared/data/coco128 (the test's data), the optional flag given.
    run: async (b) => {
      const images = join(tmp.path, "eval/images");
      const labels = join(tmp.path, "eval/labels");
      await mkdir(images, { recursive: true });
      await mkdir(labels, { recursive: true });
      const names = readdirSync(join(dataDir, "coco128/images")).filter((f) => f.endsWith(".jpg")).sort().slice(0, 3);
      for (const n of names) {
        await symlink(join(dataDir, "coco128/images", n), join(images, n));
        await copyFile(join(dataDir, "coco128/labels", n.replace(/\.jpg$/, ".txt")), join(labels, n.replace(/\.jpg$/, ".txt")));
      }
      const r = await runBlock(b.text, { subs: [["--images DIR --labels DIR [--model yolov5n.onnx]", `--images ${images} --labels ${labels} --model yolov5n.onnx`]] });
      expectOk(r);
      const last = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
      expect(Object.keys(last)).toEqual(["images", "map50", "map50_95"]);
      expect(last.images).toBe(3);
      expect(r.stdout).toMatch(/^\s+class\s+images\s+instances\s+P\s+R\s+mAP50\s+mAP50-95$/m);
    },
  },
  {
    file: "docs/browser.md",
    first: "bun run pipeline phones.yaml --http-port 9464      # then open http://127.0.0.1:9464/browser",
    // Runs until stopped: in the background on a free port until GET /browser answers, then stopped by PID.
    run: async (b) => {
      const port = await freePort();
      const r = await runBlock(b.text, {
        subs: [[/9464/g, String(port)]],
        background: [/phones\.yaml/],
        ready: { 0: `${waitHttp(`http://127.0.0.1:${port}/browser`)}\ncurl -s http://127.0.0.1:${port}/browser | head -c 200` },
        env: { FRAMEWIRE_HTTP_TOKEN: "docs-test-token-0123456789" },
      });
      expectOk(r);
      expect(r.stdout).toContain("<!doctype html>".slice(0, 2));
    },
  },
  {
    file: "docs/distributed.md",
    first: "nats-server -c pipelines/nats/local.conf             # max_payload 8MB (a 640x640 uint8 tensor is 1.2 MB)",
    // local.conf as shipped on a free port with its store in a temp folder; 5 frames, not 300.
    run: async (b) => {
      const port = await freePort();
      const conf = (await readFile(join(repoRoot, "pipelines/nats/local.conf"), "utf8"))
        .replace(/^listen: .*$/m, `listen: 127.0.0.1:${port}`)
        .replace(/store_dir: .*/, `store_dir: "${join(tmp.path, "nats-local")}"`);
      await writeFile(join(tmp.path, "local.conf"), conf);
      const r = await runBlock(b.text, {
        subs: [
          ["-c pipelines/nats/local.conf", `-c ${join(tmp.path, "local.conf")}`],
          ["@127.0.0.1:4222", `@127.0.0.1:${port}`],
          ["--frames 300", "--frames 5"],
        ],
        background: [/nats-server/, /--stages detect,nms/],
        ready: { 0: `${waitHttpNats(port)}` },
      });
      expectOk(r);
      const camera = r.outputs.at(-1)!;
      expect(camera).toMatch(/frames: 5 in, 5 out/);
      expect(camera).toContain("control messages signed");
    },
  },
  {
    file: "docs/distributed.md",
    first: "export FRAMEWIRE_CONTROL_KEY=$(openssl rand -base64 32)   # at least 16 characters",
    run: async (b) => {
      const r = await runBlock(b.text + '\necho "${#FRAMEWIRE_CONTROL_KEY}"');
      expectOk(r);
      expect(Number(r.stdout.trim().split("\n").at(-1))).toBeGreaterThanOrEqual(16);
    },
  },
  {
    file: "docs/retail.md",
    first: "bun run pipeline retail.yaml                        # no server: memory bus",
    // 3 frames per camera; the NATS run against a JetStream server the test starts on a free port.
    run: async (b) => {
      const js = await startJetStreamServer();
      const r = await runBlock(b.text, {
        subs: [
          [/^bun run pipeline retail\.yaml(\s+#)/m, "bun run pipeline retail.yaml --frames 6$1"],
          ["nats://127.0.0.1:4223", js.url],
          [/^(\s+bun run pipeline retail\.yaml)(\s+#)/m, "$1 --frames 6$2"],
        ],
      });
      expectOk(r);
      expect(r.outputs[0]).toMatch(/retail stopped \(--frames 6 reached\) .* on the memory bus/);
      expect(r.outputs[1]).toMatch(new RegExp(`connected to NATS 127\\.0\\.0\\.1:${js.port}`));
      expect(r.outputs[1]).toMatch(/retail stopped \(--frames 6 reached\)/);
    },
  },
  {
    file: "docs/retail.md",
    first: "CAMERAS=door=rtsp://user:pass@10.0.0.5/live,till=rtsp://10.0.0.6/live bun run pipeline retail.yaml",
    // Both cameras are the test's RTSP server (with the doc's user:pass for the first); 6 frames.
    run: async (b) => {
      const r = await runBlock(b.text, {
        subs: [
          ["rtsp://user:pass@10.0.0.5/live", rtsp.url.replace("rtsp://", "rtsp://user:pass@")],
          ["rtsp://10.0.0.6/live", rtsp.url],
          [/retail\.yaml$/m, "retail.yaml --frames 6"],
        ],
      });
      expectOk(r);
      expect(r.stdout).toMatch(/retail stopped \(--frames 6 reached\)/);
      // The password is not logged.
      expect(r.stdout + r.stderr).not.toContain("user:pass@");
    },
  },
  {
    file: "docs/retail.md",
    first: "export FRAMEWIRE_HTTP_TOKEN=store-secret-0123456789",
    // The added camera is the test's RTSP server; port 9464 a free one.
    run: async (b) => {
      const port = await freePort();
      const r = await runBlock(b.text, {
        subs: [
          [/9464/g, String(port)],
          ["rtsp://10.0.0.7/live", rtsp.url],
        ],
      });
      expectOk(r);
      // The answers, as JSON: the list (both cameras), the added camera, the changed one, the list without it.
      const json = r.outputs.slice(3).map((o) => o.trim().split("\n")[0]);
      // The last answer has the pipeline's summary right after it (the background job stopped at the end).
      for (const j of json.slice(0, 3)) JSON.parse(j);
      expect(json[0]).toContain('"id":"cam"');
      expect(json[0]).toContain('"id":"cam2"');
      expect(json[1]).toContain('"id":"stockroom"');
      expect(json[2]).toContain('"fps":2');
      expect(json[3]).not.toContain('"id":"stockroom"');
    },
  },
  {
    file: "docs/retail.md",
    first: "bun run streams ls --nats nats://127.0.0.1:4223 --pipeline retail",
    // Needs the retail pipeline running on that server: the test starts it (JetStream server on a free port, HTTP on another).
    run: async (b) => {
      const env = await retailOnNats();
      const r = await runBlock(b.text, {
        subs: [
          [/nats:\/\/127\.0\.0\.1:4223/g, env.url],
          ["rtsp://10.0.0.7/live", rtsp.url],
        ],
        env: { FRAMEWIRE_HTTP_TOKEN: env.token },
      });
      expectOk(r);
      expect(r.outputs[0]).toMatch(/^stream\s+stage\s+connected/m);
      expect(r.outputs[0]).toMatch(/^cam2?\s+cam\s/m);
      expect(r.outputs[1]).toMatch(/^stockroom\s+cam\s/m);
      expect(r.outputs[2]).toMatch(/^stockroom\s+cam\s/m);
      expect(r.outputs[3]).not.toContain("stockroom");
    },
  },
  {
    file: "docs/retail.md",
    first: "curl -s localhost:9464/api/zones/count/streams/door                      # { stage, stream, lines, zones, counts }",
    // The retail pipeline the test runs (above), whose cameras are cam and cam2: the doc's "door" is cam2 there.
    run: async (b) => {
      const env = await retailOnNats();
      const r = await runBlock(b.text, { subs: [[/9464/g, String(env.httpPort)], [/streams\/door/g, "streams/cam2"]], env: { FRAMEWIRE_HTTP_TOKEN: env.token } });
      expectOk(r);
      const got = JSON.parse(r.outputs[0].trim());
      expect(Object.keys(got)).toEqual(expect.arrayContaining(["stage", "stream", "lines", "zones", "counts"]));
      expect(r.outputs[1]).toContain('"entrance"');
    },
  },
  {
    file: "docs/retail.md",
    first: "nats-server -c pipelines/nats/hub.conf      # clients :4222 (user cloud), leaf nodes :7422 (user leaf)",
    // hub.conf and edge-leaf.conf as shipped on free ports (tests/support/jetstream.ts): the hub comes up and takes the edge's leaf link.
    run: async () => {
      const pair = await hubAndEdge();
      expect(pair.hub.log()).toContain("Listening for client connections on 127.0.0.1:");
      expect(pair.hub.log()).toMatch(/Listening for leafnode connections on 127\.0\.0\.1:/);
    },
  },
  {
    file: "docs/retail.md",
    first: "nats-server -c pipelines/nats/edge-leaf.conf                 # 127.0.0.1:4223, stream data in out/nats-edge",
    // The edge server is the one started from edge-leaf.conf above; the pipeline runs 6 frames against it.
    run: async (b) => {
      const pair = await hubAndEdge();
      const r = await runBlock(b.text, { subs: [[/^nats-server -c pipelines\/nats\/edge-leaf\.conf.*\n/m, ""], ["nats://127.0.0.1:4223", pair.edge.url], [/retail\.yaml$/m, "retail.yaml --frames 6"]] });
      expectOk(r);
      expect(r.stdout + r.stderr).toMatch(/stream RETAIL/);
    },
  },
  {
    file: "docs/retail.md",
    first: "bun run sub 'retail.>' --nats nats://127.0.0.1:4223         # or: nats sub 'retail.>' --server nats://127.0.0.1:4223",
    // On the edge server from edge-leaf.conf, stopped after --count 1; the test publishes an event there as the pipeline would.
    // The hub's reader, as the doc says, gets nothing: a marker published after the event on a subject the leaf may send arrives alone.
    run: async (b) => {
      const pair = await hubAndEdge();
      const { connect } = await import("@nats-io/transport-node");
      const hub = await connect({ servers: pair.hub.url, user: "reader", pass: "reader-secret" });
      const onHub: string[] = [];
      const markers: string[] = [];
      hub.subscribe("retail.>", { callback: (_e, m) => void onHub.push(m.subject) });
      hub.subscribe("docs.marker", { callback: (_e, m) => void markers.push(m.string()) });
      await hub.flush();
      const edge = await connect({ servers: pair.edge.url });
      // The hub's interest has crossed the leaf link once a marker from the edge arrives.
      await until(() => (edge.publish("docs.marker", "before"), markers.length > 0), "the hub's subscriptions across the leaf link", 30_000, 100);
      const line = expandScripts(b.text.trim().split("\n")[0]).replace("nats://127.0.0.1:4223 ", `${pair.edge.url} --count 1 `);
      const sub = startProcess(["bash", "-c", line], { cwd: repoRoot, env: { PATH: `${dirname(process.execPath)}:${process.env.PATH}` } });
      await sub.waitFor(/listening on "retail\.>"/);
      edge.publish("retail.store1.cam.events.cross", JSON.stringify({ stream: "cam", seq: 1, type: "cross", line: "entrance", direction: "in" }));
      edge.publish("docs.marker", "after");
      await edge.flush();
      expect(await sub.exited).toBe(0);
      expect(sub.stdout()).toContain('[#1] Received on "retail.store1.cam.events.cross"\n{\n  "stream": "cam"');
      await until(() => markers.includes("after"), "the marker published after the event");
      expect(onHub).toEqual([]);
      await edge.close();
      await hub.close();
    },
  },
  {
    file: "docs/serve.md",
    first: "bun run serve --model-repository examples/model_repository            # 127.0.0.1:8000; every model loaded",
    // Each server runs until stopped: started in the background on a free port until it is ready, then stopped by PID.
    run: async (b) => {
      const ports = [await freePort(), await freePort(), await freePort()];
      const r = await runBlock(b.text, {
        subs: [
          [/(examples\/model_repository)(\s+#)/, `$1 --port ${ports[0]}$2`],
          ["--load-model yolov5", `--load-model yolov5 --port ${ports[1]}`],
          ["--port 8000", `--port ${ports[2]}`],
        ],
        background: [/cli\.ts serve/],
        // All three start together (they load in parallel), then each must answer ready.
        ready: { 2: ports.map((p) => waitHttp(`http://127.0.0.1:${p}/v2/health/ready`)).join("\n") },
      });
      expectOk(r);
      expect(r.stderr).toMatch(/yolov5: loaded version 1/);
    },
  },
  ...["mkdir -p /tmp/repo && cp -rL examples/model_repository/yolov5 /tmp/repo/", "sed -i 's/TYPE_FLOAT32/TYPE_FP32/; s/max_queue_delay_us/max_queue_delay_microseconds/; s/platform: \"onnxruntime_onnx\"/platform: \"tensorrt_plan\"/' /tmp/repo/yolov5/config.pbtxt"].map(
    (first, i) => ({
      file: "docs/serve.md",
      first,
      // /tmp/repo is a temp folder; the second block edits what the first made. Each ends with serve's exit 2.
      run: async (b: ShellBlock) => {
        const repo = join(tmp.path, "repo");
        const r = await runBlock(b.text.replace(/^(bun run serve --model-repository \/tmp\/repo)$/m, "$1 || test $? -eq 2"), { subs: [[/\/tmp\/repo/g, repo]] });
        expectOk(r);
        expect(expectShown(r)).toBe(i === 0 ? 3 : 1);
      },
    }),
  ),
  ...[
    "curl -s localhost:8000/v2/models/yolov5 | jq -c .inputs",
    "curl -s localhost:8000/v2/models/yolov5/config | jq -c '{max_batch_size, dims: .input[0].dims, dynamic_batching}'",
    "curl -s -o /dev/null -H 'content-type: image/jpeg' --data-binary @examples/street.jpg 'localhost:8000/detect?model=yolov5'",
  ].map((first) => ({
    file: "docs/serve.md",
    first,
    // Against `bun run serve --model-repository examples/model_repository` (the first block's server), on a free port.
    run: async (b: ShellBlock) => {
      shared.serve ??= await startServe(["--model-repository", "examples/model_repository"]);
      const r = await runBlock(b.text, { subs: [[/localhost:8000/g, `127.0.0.1:${shared.serve.port}`]] });
      expectOk(r);
      expectShown(r);
    },
  })),
  {
    file: "docs/serve.md",
    first: "curl -s -H 'content-type: image/jpeg' --data-binary @examples/street.jpg localhost:8000/detect",
    // Against `bun run serve --model yolov5n.onnx`, as the doc says, on a free port.
    run: async (b) => {
      const s = await startServe(["--model", "yolov5n.onnx"]);
      try {
        const r = await runBlock(b.text, { subs: [[/localhost:8000/g, `127.0.0.1:${s.port}`]] });
        expectOk(r);
        // The JSON block after it shows the answer for examples/street.jpg: model, size, the top detections, the timing keys.
        const doc = readFileSync(join(repoRoot, "docs/serve.md"), "utf8");
        const shown = /```sh\ncurl -s -H 'content-type: image\/jpeg' --data-binary @examples\/street\.jpg[\s\S]*?```\n\n```json\n([\s\S]*?)```/.exec(doc)![1];
        const got = JSON.parse(r.outputs[0].trim());
        expect([got.model, got.width, got.height]).toEqual([/"model":"(\w+)"/.exec(shown)![1], Number(/"width":(\d+)/.exec(shown)![1]), Number(/"height":(\d+)/.exec(shown)![1])]);
        const top = JSON.parse(`[${/"detections":\[(.*), \.\.\.\]/.exec(shown)![1]}]`);
        expect(got.detections.slice(0, top.length)).toEqual(top);
        expect(Object.keys(got.timings)).toEqual(["decode", "preprocess", "queue", "infer", "nms"]);
        const filtered = JSON.parse(r.outputs[1].trim()).detections as { class: string; score: number }[];
        expect(filtered.length).toBeGreaterThan(0);
        expect(filtered.every((d) => ["person", "bus"].includes(d.class) && d.score >= 0.4)).toBe(true);
      } finally {
        await s.stop();
      }
    },
  },
  {
    file: "docs/serve.md",
    first: "curl -s -X POST localhost:8000/v2/repository/index",
    // Against the server the doc names, started by the test on a free port: --model-control-mode explicit --load-model yolov5.
    run: async (b) => {
      const s = await startServe(["--model-repository", "examples/model_repository", "--model-control-mode", "explicit", "--load-model", "yolov5"]);
      try {
        const r = await runBlock(b.text, { subs: [[/localhost:8000/g, `127.0.0.1:${s.port}`]] });
        expectOk(r);
        expect(expectShown(r)).toBe(2);
      } finally {
        await s.stop();
      }
    },
  },
  {
    file: "docs/wire-format.md",
    first: "bun examples/consumer.ts --nats nats://127.0.0.1:4222 --subject shop.results",
    // pipelines/shop.yaml (sink-nats, in: count) publishes to a nats-server the test starts on a free port; the consumer stops after 3 results.
    run: async (b) => {
      const { startNatsServer } = await import("./support/nats.ts");
      const nats = await startNatsServer();
      const shop = startProcess(["bun", "runtime/cli.ts", "run", "shop.yaml"], { cwd: repoRoot, env: { NATS_URL: nats.url } });
      try {
        await shop.waitFor(/\[shop\/publish\] publishing frames and events on shop\.results/, 60_000);
        const r = await runBlock(b.text.split("\n")[0], { subs: [["nats://127.0.0.1:4222", nats.url], ["--subject shop.results", "--subject shop.results --count 3"]] });
        expectOk(r);
        const shown = JSON.parse(b.text.split("\n")[1]);
        const got = r.stdout.trim().split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
        expect(got.length).toBe(3);
        for (const g of got) expect(Object.keys(g)).toEqual(Object.keys(shown));
        expect(got[0].subject).toBe(shown.subject);
      } finally {
        await shop.stop();
        await nats.dispose();
      }
    },
  },
  {
    file: "docs/observability.md",
    first: `curl -s -X POST -H "Authorization: Bearer $FRAMEWIRE_HTTP_TOKEN" -H 'content-type: application/json' \\`,
    // Against demo.yaml on the test's RTSP camera with --http-port (a free port) and a token.
    run: async (b) => {
      const port = await freePort();
      const token = "docs-test-token-0123456789";
      const demo = startProcess(["bun", "runtime/cli.ts", "run", "demo.yaml", "--http-port", String(port)], { cwd: repoRoot, env: { CAMERA_URL: rtsp.url, FRAMEWIRE_HTTP_TOKEN: token } });
      try {
        await demo.waitFor(/version [0-9a-f]{12} active/, 60_000);
        const r = await runBlock(b.text, { subs: [[/9464/g, String(port)]], env: { FRAMEWIRE_HTTP_TOKEN: token } });
        expectOk(r);
        expect(expectShown(r)).toBe(1);
      } finally {
        await demo.stop();
      }
    },
  },
];

/** The NATS port the block's nats-server listens on answers (bash). */
function waitHttpNats(port: number): string {
  return `for i in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/${port}) 2>/dev/null && break; sleep 0.1; done`;
}

let retail: Promise<{ url: string; httpPort: number; token: string }> | undefined;
/** One retail pipeline on NATS (a JetStream server on a free port) with its HTTP server, for the blocks that need it running. */
function retailOnNats() {
  retail ??= (async () => {
    const js = await startJetStreamServer();
    const httpPort = await freePort();
    const token = "docs-test-token-0123456789";
    const p = startProcess(["bun", "runtime/cli.ts", "run", "retail.yaml", "--http-port", String(httpPort)], {
      cwd: repoRoot,
      env: { NATS_URL: js.url, FRAMEWIRE_HTTP_TOKEN: token, STORE_ID: "docs", CAMERAS: `cam=${rtsp.url},cam2=${rtsp.url}` },
    });
    background.push(p);
    await p.waitFor(/\[retail\/cam\/cam2\] /, 60_000);
    await p.waitFor(/\[retail\/detect\] .*active/, 60_000);
    return { url: js.url, httpPort, token };
  })();
  return retail;
}

let pairP: ReturnType<typeof startHubAndEdge> | undefined;
const hubAndEdge = () => (pairP ??= startHubAndEdge());

describe("shell blocks in README.md and docs/", () => {
  const all = docFiles.flatMap((f) => shellBlocks(f));

  test("every block is run here or marked <!-- not-run: reason -->", () => {
    const problems: string[] = [];
    for (const b of all) {
      if (b.notRun !== undefined) {
        if (!b.notRun) problems.push(`${b.file}:${b.line}: not-run without a reason`);
        continue;
      }
      if (!runners.some((r) => r.file === b.file && r.first === firstLine(b.text))) problems.push(`${b.file}:${b.line}: unmarked and not run by tests/docs-blocks.test.ts: ${firstLine(b.text)}`);
    }
    expect(problems).toEqual([]);
    expect(all.length).toBeGreaterThan(10);
  });

  test("every runner here has its block (a changed first line must be re-decided)", () => {
    const missing = runners.filter((r) => !all.some((b) => b.file === r.file && firstLine(b.text) === r.first && b.notRun === undefined));
    expect(missing.map((r) => `${r.file}: ${r.first}`)).toEqual([]);
  });

  for (const r of runners) {
    const b = all.find((x) => x.file === r.file && firstLine(x.text) === r.first && x.notRun === undefined);
    if (!b) continue;
    test(`${b.file}:${b.line}: ${r.first.slice(0, 80)}`, () => r.run(b));
  }
});

test("docs/browser.md's phones.yaml is pipelines/phones.yaml, byte for byte", () => {
  const doc = readFileSync(join(repoRoot, "docs/browser.md"), "utf8");
  expect(doc).toContain("`pipelines/phones.yaml`, as shipped:\n\n```yaml\n" + readFileSync(join(repoRoot, "pipelines/phones.yaml"), "utf8") + "```");
});

describe("the markers themselves", () => {
  test("shellBlocks reads the not-run reason on the line before the fence; steps separates shown output from comments", () => {
    const md = "x\n\n<!-- not-run: a real camera -->\n```bash\nrun camera\n```\n\n```sh\nfoo   # a comment\n# {\"a\":1}\n\n# prose comment\nbar \\\n  --x\n```\n";
    const bs = shellBlocks("t.md", md);
    expect(bs.map((b) => [b.line, b.notRun])).toEqual([
      [4, "a real camera"],
      [8, undefined],
    ]);
    expect(steps(bs[1].text)).toEqual([
      { command: "foo   # a comment", shown: ['{"a":1}'] },
      { command: "bar \\\n  --x", shown: [] },
    ]);
  });
});
