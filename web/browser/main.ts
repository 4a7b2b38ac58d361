/**
 * The browser tier's page (`GET /browser`): detection on the device camera,
 * an uploaded video or an image, with boxes drawn; optionally published to
 * the pipeline as stream `browser-<id>`. Where detection runs (here or on
 * the server) follows the server's answer to `GET /browser/tier`.
 *
 * For tests and embedders: `window.framewire.detect(imageUrl)` resolves to
 * `{ detections, ms, backend }`, detections as `POST /detect` gives them.
 * Query: `?backend=wasm|webgpu`, `?threads=N`, `?model=FILE.onnx` (under models/).
 */
import * as v from "valibot";
import { BrowserConfig, TierAnswer, type PublishedDetection, type Tier, type WireDetection } from "../../runtime/observe/http/browser-protocol.ts";
import { Detector, type Backend, type DetectResult } from "./detector.ts";
import { Publisher, type PublisherOptions } from "./publisher.ts";

const params = new URLSearchParams(location.search);
const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const view = $<HTMLCanvasElement>("view");
const video = $<HTMLVideoElement>("video");
/** The frame being worked on, at its own size. */
const work = new OffscreenCanvas(1, 1);
const workCtx = work.getContext("2d", { willReadFrequently: true })!;

let config: BrowserConfig;
let detector: Detector;
let tier: TierAnswer | undefined;
let publisher: Publisher | undefined;
/** Bumped when the source changes: a running loop of an older source stops. */
let generation = 0;

function setPill(id: string, text: string, state?: string): void {
  const el = $(id);
  el.textContent = text;
  if (state) el.dataset.state = state;
}

async function loadConfig(): Promise<BrowserConfig> {
  const q = params.get("model") ? `?model=${encodeURIComponent(params.get("model")!)}` : "";
  const res = await fetch(`/browser/config${q}`);
  const body: unknown = await res.json();
  if (!res.ok) throw new Error((body as { error?: string }).error ?? `HTTP ${res.status}`);
  return v.parse(BrowserConfig, body);
}

/** Median round trip of three pings to the server, ms. */
async function measureRtt(): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    await fetch("/browser/ping", { cache: "no-store" });
    times.push(performance.now() - t0);
  }
  return times.sort((a, b) => a - b)[1];
}

/** Asks the server where detection should run now. */
async function askTier(): Promise<TierAnswer> {
  const rtt = await measureRtt();
  const res = await fetch(`/browser/tier?rtt=${rtt.toFixed(1)}`, { cache: "no-store" });
  tier = v.parse(TierAnswer, await res.json());
  setPill("tier", `${tier.tier} tier`, tier.tier);
  $("tier").title = tier.reason;
  return tier;
}

/** Decodes an image (any URL the page may fetch, data: URLs too) into packed RGBA. */
async function imagePixels(url: string): Promise<{ pixels: Uint8ClampedArray; width: number; height: number; bitmap: ImageBitmap }> {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url.slice(0, 60)}: HTTP ${res.status}`);
  const bitmap = await createImageBitmap(await res.blob(), { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  return { ...grab(bitmap, bitmap.width, bitmap.height), bitmap };
}

/** Draws `source` into the work canvas and reads its pixels back. */
function grab(source: CanvasImageSource, width: number, height: number): { pixels: Uint8ClampedArray; width: number; height: number } {
  if (work.width !== width || work.height !== height) [work.width, work.height] = [width, height];
  workCtx.drawImage(source, 0, 0, width, height);
  return { pixels: workCtx.getImageData(0, 0, width, height, { colorSpace: "srgb" }).data, width, height };
}

/** The work canvas as a JPEG, scaled to `width` × `height`. */
async function workJpeg(width: number, height: number): Promise<Uint8Array<ArrayBuffer>> {
  let canvas: OffscreenCanvas = work;
  if (width !== work.width || height !== work.height) {
    canvas = new OffscreenCanvas(width, height);
    canvas.getContext("2d")!.drawImage(work, 0, 0, width, height);
  }
  return new Uint8Array(await (await canvas.convertToBlob({ type: "image/jpeg", quality: 0.8 })).arrayBuffer());
}

const COLOURS = ["#35c28f", "#e8a33d", "#5aa9e6", "#e5534b", "#b48ead", "#88c0d0"];

/** Shows `source` with its detections. */
function draw(source: CanvasImageSource, width: number, height: number, detections: readonly WireDetection[]): void {
  if (view.width !== width || view.height !== height) [view.width, view.height] = [width, height];
  const g = view.getContext("2d")!;
  g.drawImage(source, 0, 0, width, height);
  const line = Math.max(2, Math.round(width / 400));
  g.lineWidth = line;
  g.font = `${Math.max(12, Math.round(width / 60))}px system-ui, sans-serif`;
  g.textBaseline = "top";
  for (const d of detections) {
    const colour = COLOURS[Math.abs(hash(d.class)) % COLOURS.length];
    const [x1, y1, x2, y2] = d.box;
    g.strokeStyle = colour;
    g.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const label = `${d.class} ${(d.score * 100).toFixed(0)}%`;
    const m = g.measureText(label);
    const h = Math.round(parseInt(g.font, 10) * 1.3);
    g.fillStyle = colour;
    g.fillRect(x1, Math.max(0, y1 - h), m.width + 8, h);
    g.fillStyle = "#0f1216";
    g.fillText(label, x1 + 4, Math.max(0, y1 - h) + 2);
  }
  const list = $("detections");
  list.replaceChildren(
    ...detections.map((d) => {
      const li = document.createElement("li");
      li.textContent = `${d.class} ${d.score.toFixed(2)}  [${d.box.map((x) => Math.round(x)).join(", ")}]`;
      return li;
    }),
  );
}

function hash(s: string): number {
  let h = 0;
  for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) | 0;
  return h;
}

const scaleBox = (d: PublishedDetection, k: number): PublishedDetection =>
  k === 1 ? d : { ...d, box: [d.box[0] * k, d.box[1] * k, d.box[2] * k, d.box[3] * k].map((x) => Math.round(x * 10) / 10) as WireDetection["box"] };

/** Where a frame of the work canvas is detected: here, `POST detectPath`, or the pipeline's server tier. */
async function detectWork(pixels: Uint8ClampedArray, width: number, height: number): Promise<DetectResult & { tier: Tier; published?: boolean }> {
  if (tier?.tier === "server" && config.detectPath) {
    const t0 = performance.now();
    const res = await fetch(config.detectPath, { method: "POST", headers: { "content-type": "image/jpeg" }, body: await workJpeg(width, height) });
    const body = (await res.json()) as { detections?: WireDetection[]; error?: string };
    if (!res.ok || !body.detections) throw new Error(`${config.detectPath}: ${body.error ?? `HTTP ${res.status}`}`);
    const ms = Math.round((performance.now() - t0) * 100) / 100;
    const ids = new Map(config.model.classNames.map((n, i) => [n, i]));
    const detections = body.detections.map((d) => ({ ...d, classId: ids.get(d.class) ?? 0 }));
    return { detections, ms, backend: detector.backend, width, height, timings: { preprocess: 0, infer: ms, nms: 0 }, tier: "server" };
  }
  if (tier?.tier === "server" && publisher && config.publish?.serverTier) {
    const t0 = performance.now();
    const k = Math.min(1, publisher.maxWidth / width);
    const [w, h] = [Math.round(width * k), Math.round(height * k)];
    const ack = await publisher.send({ ts: Date.now(), width: w, height: h, jpeg: await workJpeg(w, h) });
    const ms = Math.round((performance.now() - t0) * 100) / 100;
    const detections = (ack?.detections ?? []).map((d) => scaleBox(d, 1 / k));
    return { detections, ms, backend: detector.backend, width, height, timings: { preprocess: 0, infer: ms, nms: 0 }, tier: "server", published: true };
  }
  return { ...(await detector.detect(pixels, width, height)), tier: "browser" };
}

/**
 * Publishes a result computed here (boxes scaled with the frame to the
 * pipeline's maxWidth). `wait`: resolve once the server has it; else the
 * ack is left to the publisher's window (a live loop goes on detecting).
 */
async function publishResult(r: DetectResult, ts: number, wait: boolean): Promise<void> {
  const pub = publisher;
  if (!pub) return;
  const k = Math.min(1, pub.maxWidth / r.width);
  const [w, h] = [Math.round(r.width * k), Math.round(r.height * k)];
  const jpeg = pub.wantsPicture() ? await workJpeg(w, h) : undefined;
  const acked = pub.send({ ts, width: w, height: h, detections: r.detections.map((d) => scaleBox(d, k)), jpeg, ms: r.ms, backend: r.backend });
  if (wait) await acked;
  else acked.catch((err: Error) => setPill("published", `${pub.stream}: ${err.message}`, "error"));
}

let shown = 0;
function report(r: DetectResult & { tier?: Tier }): void {
  shown++;
  document.body.dataset.frames = String(shown);
  setPill("ms", `${r.ms.toFixed(1)} ms · ${r.detections.length} objects`);
  if (publisher) setPill("published", `${publisher.stream}: ${publisher.counts.acked} sent${publisher.counts.skipped ? `, ${publisher.counts.skipped} skipped` : ""}`, "on");
}

/** Runs detection on every frame of the playing video until the source changes. */
async function videoLoop(): Promise<void> {
  const mine = ++generation;
  let lastTier = performance.now();
  while (mine === generation) {
    if (video.readyState >= 2 && video.videoWidth > 0) {
      const ts = Date.now();
      const { pixels, width, height } = grab(video, video.videoWidth, video.videoHeight);
      try {
        if (performance.now() - lastTier > 5000) {
          lastTier = performance.now();
          await askTier();
        }
        const r = await detectWork(pixels, width, height);
        if (mine !== generation) return;
        draw(work, width, height, r.detections);
        report(r);
        if (!r.published) await publishResult(r, ts, false);
      } catch (err) {
        setPill("state", (err as Error).message, "error");
      }
    }
    if (video.ended) return;
    await new Promise<void>((resolve) => ("requestVideoFrameCallback" in video ? video.requestVideoFrameCallback(() => resolve()) : requestAnimationFrame(() => resolve())));
  }
}

async function useCamera(): Promise<void> {
  const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
  video.srcObject = stream;
  await video.play();
  void videoLoop();
}

async function useVideoFile(file: File): Promise<void> {
  video.srcObject = null;
  video.src = URL.createObjectURL(file);
  video.loop = true;
  video.muted = true;
  await video.play();
  void videoLoop();
}

async function useImageFile(file: File): Promise<void> {
  generation++;
  video.pause();
  const url = URL.createObjectURL(file);
  try {
    await detectUrl(url, { publish: !!publisher });
  } finally {
    URL.revokeObjectURL(url);
  }
}

/** `window.framewire.detect`: one image, detected here (the browser tier) whatever the tier answer. */
async function detectUrl(url: string, o: { publish?: boolean } = {}): Promise<{ detections: WireDetection[]; ms: number; backend: Backend }> {
  await ready;
  const ts = Date.now();
  const img = await imagePixels(url);
  const r = await detector.detect(img.pixels, img.width, img.height);
  draw(img.bitmap, img.width, img.height, r.detections);
  report(r);
  if (o.publish) {
    if (!publisher) throw new Error("not publishing: call framewire.publish() first");
    await publishResult(r, ts, true);
  }
  img.bitmap.close();
  // The shape of POST /detect: class, score, box.
  return { detections: r.detections.map((d) => ({ class: d.class, score: d.score, box: d.box })), ms: r.ms, backend: r.backend };
}

async function startPublishing(o: PublisherOptions = {}): Promise<{ stream: string; frameFps: number; maxWidth: number }> {
  await ready;
  if (!config.publish) throw new Error("this server has no browser stage to publish to");
  publisher?.close();
  const token = o.token ?? (new URLSearchParams(location.hash.slice(1)).get("token") || undefined);
  publisher = await Publisher.connect({ ...o, token, backend: detector.backend, model: config.model.name });
  const pub = publisher;
  pub.onClose = (why) => {
    if (publisher === pub) publisher = undefined;
    setPill("published", `not published (${why})`, "off");
    $<HTMLInputElement>("publish").checked = false;
  };
  setPill("published", `${pub.stream}: connected`, "on");
  $<HTMLInputElement>("publish").checked = true;
  return { stream: pub.stream, frameFps: pub.frameFps, maxWidth: pub.maxWidth };
}

function stopPublishing(): void {
  const pub = publisher;
  publisher = undefined;
  pub?.close();
  setPill("published", "not published", "off");
}

async function start(): Promise<void> {
  config = await loadConfig();
  $("model").textContent = config.model.name;
  const backend = params.get("backend");
  detector = await Detector.load(config, {
    backend: backend === "wasm" || backend === "webgpu" ? backend : "auto",
    threads: params.get("threads") ? Math.max(1, Number(params.get("threads"))) : undefined,
  });
  setPill("backend", detector.backend === "wasm" ? `wasm · ${detector.threads} thread${detector.threads === 1 ? "" : "s"}` : "webgpu");
  $<HTMLInputElement>("publish").disabled = !config.publish;
  if (!config.publish) setPill("published", "no browser stage here", "off");
  await askTier();
}

const ready = start();
ready.then(
  () => setPill("state", "ready", "ready"),
  (err: Error) => setPill("state", `failed: ${err.message}`, "error"),
);

$("camera").addEventListener("click", () => void useCamera().catch((err: Error) => setPill("state", `camera: ${err.message}`, "error")));
$<HTMLInputElement>("video-file").addEventListener("change", (e) => {
  const f = (e.target as HTMLInputElement).files?.[0];
  if (f) void useVideoFile(f).catch((err: Error) => setPill("state", `video: ${err.message}`, "error"));
});
$<HTMLInputElement>("image-file").addEventListener("change", (e) => {
  const f = (e.target as HTMLInputElement).files?.[0];
  if (f) void useImageFile(f).catch((err: Error) => setPill("state", `image: ${err.message}`, "error"));
});
$<HTMLInputElement>("publish").addEventListener("change", (e) => {
  const on = (e.target as HTMLInputElement).checked;
  if (!on) return stopPublishing();
  const id = $<HTMLInputElement>("stream-id").value.trim() || undefined;
  void startPublishing({ id }).catch((err: Error) => {
    setPill("published", `not published (${err.message})`, "off");
    (e.target as HTMLInputElement).checked = false;
  });
});

/** The page's API, for tests and embedders. */
export interface FramewireBrowser {
  /** Resolves once the model is loaded (rejects when it cannot be). */
  ready: Promise<void>;
  /** Detects one image here; a data: URL works. */
  detect(url: string, o?: { publish?: boolean }): Promise<{ detections: WireDetection[]; ms: number; backend: Backend }>;
  /** Asks the server which tier to use now. */
  tier(): Promise<TierAnswer>;
  /** Starts publishing results to the pipeline as `browser-<id>`. */
  publish(o?: PublisherOptions): Promise<{ stream: string; frameFps: number; maxWidth: number }>;
  unpublish(): void;
  /** The running detector: backend and wasm threads. */
  info(): { backend: Backend; threads: number; model: string; crossOriginIsolated: boolean };
}

const api: FramewireBrowser = {
  ready,
  detect: detectUrl,
  tier: askTier,
  publish: startPublishing,
  unpublish: stopPublishing,
  info: () => ({ backend: detector.backend, threads: detector.threads, model: config.model.name, crossOriginIsolated: globalThis.crossOriginIsolated }),
};
(globalThis as unknown as { framewire: FramewireBrowser }).framewire = api;
