/**
 * The browser tier's routes (hono), on the pipeline's HTTP server and on
 * `framewire serve`:
 *
 *   GET /browser                 the page (web/browser/index.html)
 *   GET /browser/app.js          the page's code: web/browser/main.ts with the server's own letterbox and YOLO
 *                                decoding modules and onnxruntime-web, bundled by `bun build` once per process
 *   GET /browser/browser.css
 *   GET /browser/config          model (URL, class names), conf/iou, where the server tier is, whether publishing is possible
 *   GET /browser/model/:file     a model file under models/ (.onnx)
 *   GET /browser/ort/:file       onnxruntime-web's .mjs/.wasm files, from node_modules (no CDN)
 *   GET /browser/ping            204, for the page's round-trip measurement
 *   GET /browser/tier?rtt=MS     { tier: "browser" | "server", reason, load, rttMs, policy }
 *   GET /browser/ws              WebSocket: a page publishes its results to the pipeline's browser stage
 *
 * Every /browser response is cross-origin isolated (COOP same-origin, COEP
 * require-corp), so the page gets SharedArrayBuffer and onnxruntime-web's
 * wasm threads, and its CSP allows WebAssembly ('wasm-unsafe-eval') and
 * nothing from elsewhere. Register these routes before any middleware that
 * sets another CSP (secureHeaders overwrites headers): they set their own.
 */
import { timingSafeEqual } from "node:crypto";
import { join } from "node:path";
import type { Context, Hono } from "hono";
import { secureHeaders } from "hono/secure-headers";
import type { WSContext, WSEvents } from "hono/ws";
import * as v from "valibot";
import { codedError } from "../../core/errors.ts";
import type { Logger } from "../../core/log.ts";
import type { Detection } from "../../core/message.ts";
import type { Ingress, IngressFrame, IngressStream } from "../../core/operator.ts";
import { parseClassNames, readOnnxMetadata } from "../../inference/onnx-metadata.ts";
import { readImageHeader } from "../../media/image-decode.ts";
import { isJpeg } from "../../media/jpeg.ts";
import { hostLoad } from "../../platform/host-load.ts";
import { readBytes, readText, runtimeName, spawn, upgradeWebSocket, which } from "../../platform/index.ts";
import { modelsDir, projectRoot, resolveModelWithin } from "../../platform/paths.ts";
import type { StatusView } from "../status.ts";
import { ClientMessage, TierQuery, type BrowserConfig, type FrameMessage, type HelloMessage, type ServerMessage, type TierAnswer } from "./browser-protocol.ts";

/** The page could not be bundled (no `bun`, or `bun build` failed). */
export const BrowserBundleError = codedError("BrowserBundleError", "E_BROWSER_BUNDLE");
export type BrowserBundleError = InstanceType<typeof BrowserBundleError>;

/** Where detection should run: in the browser above this server load (0..1) or this round trip (ms). */
export interface TierPolicy {
  serverMaxLoad: number;
  maxRttMs: number;
}

/** The seed's defaults: the server while it has headroom and the link is quick. */
export const DEFAULT_TIER_POLICY: TierPolicy = { serverMaxLoad: 0.8, maxRttMs: 150 };

export interface BrowserRouteOptions {
  log: Logger;
  /** The model the page loads unless `?model=` names another under models/ (default yolov5n.onnx). */
  model?: string;
  /** NMS settings the page uses where no browser stage sets them (default 0.25 and 0.45, as /detect's). */
  conf?: number;
  iou?: number;
  /** Where the page sends frames in the server tier (`POST`, a JPEG body): framewire serve's "/detect". */
  detectPath?: string;
  /** The server's load now, 0..1 (default: the host's CPU use over the last second). */
  load?: () => number;
  /** The tier policy where no browser stage sets one. */
  policy?: TierPolicy;
  /** The pipeline's browser source stage, if it has one (pages publish to it over /browser/ws). */
  ingress?: () => { stage: string; ingress: Ingress } | undefined;
  /** The server's control token: when set, a page must present it to publish. */
  token?: string;
}

const ENTRY = join(projectRoot, "web", "browser", "main.ts");
const STATIC: Record<string, [file: string, type: string]> = {
  "/browser": ["index.html", "text/html; charset=utf-8"],
  "/browser/browser.css": ["browser.css", "text/css; charset=utf-8"],
};
const ORT_DIST = join(projectRoot, "node_modules", "onnxruntime-web", "dist");
/** onnxruntime-web's runtime files the page may load (the variant depends on the browser: plain, JSEP/WebGPU, ...). */
const ORT_FILE = /^ort-wasm-simd-threaded(\.jsep|\.asyncify|\.jspi)?\.(mjs|wasm)$/;
const MODEL_FILE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.onnx$/;

const CSP = {
  defaultSrc: ["'self'"],
  // onnxruntime-web compiles WebAssembly; its threads are workers of its own .mjs file.
  scriptSrc: ["'self'", "'wasm-unsafe-eval'"],
  workerSrc: ["'self'", "blob:"],
  // fetch() of data: and blob: URLs (detect(dataUrl), uploaded files); 'self' covers ws: to this host.
  connectSrc: ["'self'", "data:", "blob:"],
  imgSrc: ["'self'", "data:", "blob:"],
  mediaSrc: ["'self'", "blob:", "mediastream:"],
  styleSrc: ["'self'"],
  frameAncestors: ["'none'"],
};

/** One `bun build` per process, started by the first page request; a failed build is retried by the next. */
let bundle: Promise<string> | undefined;

/**
 * The page's code: `bun build web/browser/main.ts` for the browser, with
 * onnxruntime-web's module that loads its .mjs/.wasm from /browser/ort/.
 * Runs the `bun` CLI as a child (the same under Bun and Deno).
 * @throws BrowserBundleError when no `bun` is found or the build fails.
 * @example
 * const js = await browserBundle(); // ~400 kB of minified ES module
 */
export function browserBundle(): Promise<string> {
  bundle ??= buildBundle().catch((err: unknown) => {
    bundle = undefined;
    throw err;
  });
  return bundle;
}

async function buildBundle(): Promise<string> {
  const bun = runtimeName.startsWith("bun ") ? process.execPath : which("bun");
  if (!bun) throw new BrowserBundleError("the browser page is bundled with `bun build`, and no bun is on PATH (scripts/setup.sh installs it)");
  const p = spawn(bun, ["build", ENTRY, "--target=browser", "--format=esm", "--minify", "--conditions=onnxruntime-web-use-extern-wasm"]);
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (code !== 0 || !out) throw new BrowserBundleError(`bun build web/browser/main.ts failed (exit ${code}): ${err.trim().slice(-2000)}`);
  return out;
}

/**
 * Where a page should detect now: in the browser when there is no server
 * tier, the server's load is above `serverMaxLoad` or the page's round trip
 * above `maxRttMs`; on the server otherwise.
 * @example
 * decideTier({ serverMaxLoad: 0.8, maxRttMs: 150 }, 0.3, 20, true).tier; // "server"
 * decideTier({ serverMaxLoad: 0.8, maxRttMs: 150 }, 0.95, 20, true).tier; // "browser"
 */
export function decideTier(policy: TierPolicy, load: number, rttMs: number | null, serverTier: boolean): TierAnswer {
  const base = { load: Math.round(load * 1000) / 1000, rttMs, policy: { serverMaxLoad: policy.serverMaxLoad, maxRttMs: policy.maxRttMs } };
  const pct = (x: number) => `${Math.round(x * 100)} %`;
  if (!serverTier) return { ...base, tier: "browser", reason: "this server has no server tier for pages (a browser stage's `server` option, or framewire serve's /detect)" };
  if (load > policy.serverMaxLoad) return { ...base, tier: "browser", reason: `server load ${pct(load)} > ${pct(policy.serverMaxLoad)}` };
  if (rttMs !== null && rttMs > policy.maxRttMs) return { ...base, tier: "browser", reason: `round trip ${rttMs} ms > ${policy.maxRttMs} ms` };
  const link = rttMs === null ? "round trip unknown" : `round trip ${rttMs} ms ≤ ${policy.maxRttMs} ms`;
  return { ...base, tier: "server", reason: `server load ${pct(load)} ≤ ${pct(policy.serverMaxLoad)}, ${link}` };
}

/** Equal strings, compared in constant time. */
function sameToken(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

const issuesText = (issues: v.BaseIssue<unknown>[]) => issues.map((i) => `${v.getDotPath(i) ?? "message"}: ${i.message}`).join("; ");

/**
 * Adds the browser tier's routes (list above) to a hono app.
 * @example
 * registerBrowser(app, { log, detectPath: "/detect" }); // framewire serve: the server tier is its /detect
 */
export function registerBrowser(app: Hono<any>, o: BrowserRouteOptions): void {
  const files = new Map<string, Promise<{ body: Uint8Array<ArrayBuffer>; type: string }>>();
  const cached = (key: string, load: () => Promise<{ body: Uint8Array<ArrayBuffer>; type: string }>) => {
    let f = files.get(key);
    if (!f) {
      f = load();
      files.set(key, f);
      f.catch(() => files.delete(key));
    }
    return f;
  };
  const models = new Map<string, Promise<string[]>>();
  let releaseLoad: (() => void) | undefined;
  const load = () => {
    if (o.load) return o.load();
    releaseLoad ??= hostLoad.acquire();
    return hostLoad.latest.hostCpu;
  };

  const headers = secureHeaders({
    contentSecurityPolicy: CSP,
    crossOriginEmbedderPolicy: "require-corp",
    crossOriginOpenerPolicy: "same-origin",
    crossOriginResourcePolicy: "same-origin",
    permissionsPolicy: { camera: ["self"] },
  });
  app.use("/browser", headers);
  app.use("/browser/*", headers);

  for (const [path, [file, type]] of Object.entries(STATIC)) {
    app.get(path, async (c) => {
      // The first page view starts the bundle, so that app.js is (nearly) ready when asked for.
      if (path === "/browser") void browserBundle().catch(() => {});
      const text = await readText(join(projectRoot, "web", "browser", file));
      return c.body(text, 200, { "content-type": type, "cache-control": "no-cache" });
    });
  }
  app.get("/browser/app.js", async (c) => {
    try {
      return c.body(await browserBundle(), 200, { "content-type": "text/javascript; charset=utf-8", "cache-control": "no-cache" });
    } catch (err) {
      o.log.error(`GET /browser/app.js: ${(err as Error).message}`);
      return c.json({ error: (err as Error).message, code: (err as { code?: string }).code }, 503);
    }
  });
  app.get("/browser/ort/:file", async (c) => {
    const name = c.req.param("file");
    if (!ORT_FILE.test(name)) return c.json({ error: `no onnxruntime-web file ${name}` }, 404);
    try {
      const f = await cached(`ort/${name}`, async () => ({
        body: new Uint8Array(await readBytes(join(ORT_DIST, name))),
        type: name.endsWith(".wasm") ? "application/wasm" : "text/javascript; charset=utf-8",
      }));
      return c.body(f.body, 200, { "content-type": f.type, "cache-control": "public, max-age=3600" });
    } catch {
      return c.json({ error: `${name} is missing from node_modules/onnxruntime-web/dist (run scripts/setup.sh)` }, 404);
    }
  });

  const modelFile = (name: string): string | undefined => (MODEL_FILE.test(name) ? resolveModelWithin(name, [modelsDir]) : undefined);
  app.get("/browser/model/:file", async (c) => {
    const name = c.req.param("file");
    const file = modelFile(name);
    if (!file) return c.json({ error: `no model ${name} under models/` }, 404);
    const f = await cached(`model/${file}`, async () => ({ body: new Uint8Array(await readBytes(file)), type: "application/octet-stream" }));
    return c.body(f.body, 200, { "content-type": f.type, "cache-control": "no-cache" });
  });

  const Config = v.strictObject({ model: v.optional(v.pipe(v.string(), v.regex(MODEL_FILE, "expected a file name under models/ ending in .onnx"))) });
  app.get("/browser/config", async (c) => {
    const q = v.safeParse(Config, c.req.query());
    if (!q.success) return c.json({ error: `query: ${issuesText(q.issues)}` }, 400);
    const name = q.output.model ?? o.model ?? "yolov5n.onnx";
    const file = modelFile(name);
    if (!file) return c.json({ error: `no model ${name} under models/` }, 404);
    let names = models.get(file);
    if (!names) {
      names = readBytes(file).then((b) => parseClassNames(readOnnxMetadata(b).names) ?? []);
      models.set(file, names);
    }
    const found = o.ingress?.();
    const body: BrowserConfig = {
      model: { name: name.replace(/\.onnx$/, ""), url: `/browser/model/${name}`, classNames: await names, width: 640, height: 640 },
      conf: found?.ingress.settings.conf ?? o.conf ?? 0.25,
      iou: found?.ingress.settings.iou ?? o.iou ?? 0.45,
      detectPath: o.detectPath ?? null,
      publish: found
        ? {
            stage: found.stage,
            frameFps: found.ingress.settings.frameFps,
            maxWidth: found.ingress.settings.maxWidth,
            token: !!o.token,
            serverTier: found.ingress.settings.serverTier,
          }
        : null,
      wasmPaths: "/browser/ort/",
    };
    return c.json(body, 200, { "cache-control": "no-store" });
  });

  app.get("/browser/ping", (c) => c.body(null, 204, { "cache-control": "no-store" }));

  app.get("/browser/tier", (c) => {
    const q = v.safeParse(TierQuery, c.req.query());
    if (!q.success) return c.json({ error: `query: ${issuesText(q.issues)}` }, 400);
    const found = o.ingress?.();
    const policy = found?.ingress.settings.tier ?? o.policy ?? DEFAULT_TIER_POLICY;
    const serverTier = found ? found.ingress.settings.serverTier : !!o.detectPath;
    return c.json(decideTier(policy, load(), q.output.rtt ?? null, serverTier), 200, { "cache-control": "no-store" });
  });

  app.get("/browser/ws", async (c) => {
    const found = o.ingress?.();
    if (!found) return c.json({ error: "nothing to publish to here: the pipeline has no browser stage (use: browser)" }, 404);
    if (c.req.header("upgrade")?.toLowerCase() !== "websocket") return c.json({ error: "expected a WebSocket upgrade" }, 426);
    // A page of another site must not publish through a visitor's browser.
    const origin = c.req.header("origin");
    if (origin && origin !== new URL(c.req.url).origin) return c.json({ error: `WebSocket from another origin (${origin}) refused` }, 403);
    return upgradeWebSocket(c as Context, connection(found.stage, found.ingress, o));
  });
}

/**
 * The routes on a pipeline's HTTP server: pages publish to its first
 * browser stage, whose options give the tier policy and the server tier.
 * @example
 * registerPipelineBrowser(app, { view, token, log }); // runtime/observe/http/app.ts
 */
export function registerPipelineBrowser(app: Hono<any>, ctx: { view: StatusView; token?: string; log: Logger }): void {
  registerBrowser(app, {
    log: ctx.log,
    token: ctx.token,
    ingress: () => {
      const s = ctx.view.exec.live().find((x) => x.instance.ingress);
      return s?.instance.ingress ? { stage: s.id, ingress: s.instance.ingress } : undefined;
    },
  });
}

/** One page's WebSocket: a hello opens its stream, each frame is validated, pushed and acknowledged in order. */
function connection(stage: string, ingress: Ingress, o: BrowserRouteOptions): WSEvents {
  let stream: IngressStream | undefined;
  let closed = false;
  let work: Promise<void> = Promise.resolve();
  let refused = 0;
  const { maxMessageBytes } = ingress.settings;

  const send = (ws: WSContext, msg: ServerMessage) => {
    if (closed) return;
    try {
      ws.send(JSON.stringify(msg));
    } catch {
      // The page has gone; onClose ends the stream.
    }
  };
  const fatal = (ws: WSContext, error: string) => {
    send(ws, { type: "error", error, fatal: true });
    closed = true;
    o.log.warn(`/browser/ws ${stream?.id ?? "(no stream yet)"}: closed: ${error}`);
    ws.close(1008, error.slice(0, 120));
  };
  const refuse = (ws: WSContext, error: string, seq?: number) => {
    send(ws, { type: "error", error, fatal: false, ...(seq !== undefined ? { seq } : {}) });
    // A few lines, then one per hundred: a broken page must not flood the log.
    if (++refused <= 3 || refused % 100 === 0) o.log.warn(`/browser/ws ${stream?.id ?? "(no stream yet)"}: refused a message (${refused} so far): ${error}`);
  };

  const hello = (ws: WSContext, m: HelloMessage) => {
    if (stream) return refuse(ws, "hello: this connection already publishes " + stream.id);
    if (o.token && !(m.token && sameToken(m.token, o.token))) return fatal(ws, m.token ? "invalid token" : "publishing needs the server's token (hello.token)");
    const id = `browser-${m.id ?? crypto.randomUUID().slice(0, 8)}`;
    try {
      stream = ingress.open(id);
    } catch (err) {
      return fatal(ws, (err as Error).message);
    }
    o.log.info(`/browser/ws: a page publishes ${id} to ${stage} (${m.backend ?? "backend unknown"}${m.model ? `, ${m.model}` : ""})`);
    send(ws, { type: "ready", stream: id, frameFps: ingress.settings.frameFps, maxWidth: ingress.settings.maxWidth });
  };

  const frame = async (ws: WSContext, m: FrameMessage) => {
    if (!stream) return fatal(ws, "frame before hello");
    let jpeg: Uint8Array | undefined;
    if (m.jpeg) {
      jpeg = new Uint8Array(Buffer.from(m.jpeg, "base64"));
      if (!isJpeg(jpeg)) return refuse(ws, `frame ${m.seq}: jpeg is not a JPEG`, m.seq);
      let size: { width: number; height: number };
      try {
        size = readImageHeader(jpeg);
      } catch (err) {
        return refuse(ws, `frame ${m.seq}: jpeg: ${(err as Error).message}`, m.seq);
      }
      if (size.width !== m.width || size.height !== m.height) {
        return refuse(ws, `frame ${m.seq}: jpeg is ${size.width}x${size.height}, the frame says ${m.width}x${m.height}`, m.seq);
      }
    }
    const input: IngressFrame = {
      ts: m.ts,
      width: m.width,
      height: m.height,
      ...(m.detections ? { detections: m.detections.map((d): Detection => ({ class: d.class, classId: d.classId, score: d.score, box: d.box })) } : {}),
      ...(jpeg ? { jpeg } : {}),
      meta: { browser: { clientSeq: m.seq, ...(m.backend ? { backend: m.backend } : {}), ...(m.ms !== undefined ? { ms: m.ms } : {}) } },
    };
    try {
      const out = await stream.push(input);
      const server = !m.detections && out.detections;
      send(ws, { type: "ack", seq: m.seq, ...(server ? { detections: out.detections!.map((d) => ({ class: d.class, classId: d.classId, score: d.score, box: [...d.box] as [number, number, number, number] })) } : {}) });
    } catch (err) {
      refuse(ws, `frame ${m.seq}: ${(err as Error).message}`, m.seq);
    }
  };

  return {
    onMessage(evt, ws) {
      const data = evt.data;
      const handle = async () => {
        if (closed) return;
        if (typeof data !== "string") return fatal(ws, "binary messages are not accepted: send JSON text");
        if (data.length > maxMessageBytes) return fatal(ws, `message of ${data.length} bytes is over ${maxMessageBytes} (maxMessageBytes)`);
        let json: unknown;
        try {
          json = JSON.parse(data);
        } catch {
          return stream ? refuse(ws, "not JSON") : fatal(ws, "not JSON");
        }
        const r = v.safeParse(ClientMessage, json);
        if (!r.success) {
          const seq = (json as { seq?: unknown })?.seq;
          return stream ? refuse(ws, `invalid message: ${issuesText(r.issues)}`, typeof seq === "number" ? seq : undefined) : fatal(ws, `invalid hello: ${issuesText(r.issues)}`);
        }
        if (r.output.type === "hello") hello(ws, r.output);
        else await frame(ws, r.output);
      };
      // In order, one at a time; a failure ends this message only, never the queue.
      work = work.then(handle).catch((err: Error) => o.log.error(`/browser/ws ${stream?.id ?? ""}: ${err.stack ?? err.message}`));
    },
    onClose() {
      closed = true;
      work = work.then(() => stream?.close("page disconnected")).catch((err: Error) => o.log.error(`/browser/ws ${stream?.id ?? ""}: closing: ${err.message}`));
    },
    onError() {
      closed = true;
    },
  };
}
