// framewire live page: polls /api/status once a second and reads the preview
// feed from /api/live (records: u32 header length, JSON header, u32 JPEG
// length, JPEG; see runtime/observe/http/live.ts). With a protected server, open the
// page as /#token=<token>.

import { takeRecords } from "./live-records.js";

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const auth = token ? { Authorization: `Bearer ${token}` } : {};
const $ = (id) => document.getElementById(id);
let overlays = { lines: [], zones: [] };
let framesShown = 0;

// ---- status ---------------------------------------------------------------

async function poll() {
  try {
    const res = await fetch("/api/status", { headers: auth });
    if (res.status === 401 || res.status === 403) throw new Error("this server needs a token: open the page as /#token=…");
    renderStatus(await res.json());
  } catch (err) {
    setReady(false, err.message);
  }
  setTimeout(poll, 1000);
}

function setReady(ready, text) {
  const pill = $("ready");
  pill.dataset.ready = String(ready);
  pill.textContent = text;
}

const pct = (x) => `${Math.round(x * 100)} %`;
const num = (x, d = 1) => (x === undefined || x === null ? "–" : Number(x).toFixed(d));

function renderStatus(s) {
  overlays = s.overlays ?? overlays;
  $("pipeline").textContent = s.pipeline;
  document.title = `${s.pipeline} · framewire live`;
  setReady(s.ready, s.ready ? "ready" : s.waiting[0] ?? s.state);
  $("bus").textContent = s.bus.kind === "nats" ? `NATS ${s.bus.connected ? "connected" : "disconnected"}` : s.bus.kind;
  $("cpu").textContent = `${pct(s.load.hostCpu)} host · ${pct(s.load.processCpu)} here`;
  $("gpu").textContent = s.load.gpus ? s.load.gpus.map((g) => pct(g.utilisation)).join(" / ") : "none";
  $("worker").textContent = `${s.worker} @ ${s.host}`;
  $("uptime").textContent = duration(s.uptimeS);
  renderStages(s.stages);
  renderModels(s.models);
}

function duration(sec) {
  const h = Math.floor(sec / 3600), m = Math.floor((sec % 3600) / 60), x = Math.floor(sec % 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${x}s` : `${x}s`;
}

function cell(tr, text, cls) {
  const td = tr.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function renderStages(stages) {
  const body = $("stages").tBodies[0];
  body.replaceChildren();
  for (const st of stages) {
    const tr = body.insertRow();
    const name = cell(tr, st.id);
    const op = document.createElement("span");
    op.className = "op";
    op.textContent = st.replicas > 1 ? `${st.operator} ×${st.replicas}` : st.operator;
    name.append(op);
    cell(tr, num(st.fps));
    cell(tr, st.kind === "source" ? "–" : String(st.received));
    cell(tr, st.kind === "sink" ? "–" : String(st.sent));
    cell(tr, String(st.dropped), st.dropped ? "bad" : "");
    cell(tr, String(st.failed), st.failed ? "bad" : "");
    cell(tr, st.kind === "source" ? "–" : num(st.p50Ms));
    cell(tr, st.kind === "source" ? "–" : num(st.p99Ms));
    const q = cell(tr, "");
    if (st.kind !== "source") {
      const bar = document.createElement("span");
      bar.className = st.load > 0.75 ? "bar hot" : "bar";
      bar.title = `${st.queued} queued, ${st.busy} in flight of ${st.capacity} + ${st.replicas}`;
      const fill = document.createElement("i");
      fill.style.width = `${Math.min(100, Math.round(st.load * 100))}%`;
      bar.append(fill);
      q.append(bar);
    }
  }
}

function renderModels(models) {
  const box = $("models");
  if (!models.length) return;
  box.replaceChildren(
    ...models.map((m) => {
      const div = document.createElement("div");
      div.className = "model";
      const title = document.createElement("div");
      title.className = "title";
      const left = document.createElement("span");
      left.append(`${m.stage}: ${m.active.model} `);
      const code = document.createElement("code");
      code.textContent = m.active.version;
      left.append(code);
      const right = document.createElement("span");
      right.className = "sub";
      right.textContent = `${m.active.inferences} runs · ${num(m.active.meanMs)} ms · ${m.active.provider ?? ""}`;
      title.append(left, right);
      div.append(title);
      if (m.canary) {
        const c = document.createElement("div");
        c.className = "canary sub";
        const cc = document.createElement("code");
        cc.textContent = m.canary.version;
        c.append("canary ", cc, ` on ${pct(m.canary.share)} · ${m.canary.inferences}/${m.canary.decideAfter} runs, ${m.canary.failures} failed`);
        div.append(c);
      }
      const sub = document.createElement("div");
      sub.className = "sub";
      sub.textContent = `${m.swaps} reloads · ${m.promotions} promoted · ${m.rollbacks} rolled back${m.watching ? " · watching file" : ""}`;
      div.append(sub);
      if (m.events.length) {
        const ul = document.createElement("ul");
        for (const e of m.events.slice(-3).reverse()) {
          const li = document.createElement("li");
          li.textContent = `${e.at.slice(11, 19)} ${e.kind}${e.version ? " " + e.version : ""}${e.reason ? ": " + e.reason : ""}`;
          ul.append(li);
        }
        div.append(ul);
      }
      return div;
    }),
  );
}

// ---- preview feed ---------------------------------------------------------

const cards = new Map();

function card(stream) {
  let c = cards.get(stream);
  if (c) return c;
  $("no-streams")?.remove();
  const node = $("stream-card").content.firstElementChild.cloneNode(true);
  node.dataset.stream = stream;
  node.querySelector(".name").textContent = stream;
  $("streams").append(node);
  c = { node, canvas: node.querySelector("canvas"), meta: node.querySelector(".meta"), counts: node.querySelector(".counts"), arrivals: [], fps: 0 };
  cards.set(stream, c);
  return c;
}

// One hue per track id (or class when untracked), stable across frames;
// neighbouring ids get distant hues (golden angle).
function color(key) {
  let h = 0;
  for (const ch of String(key)) h = (Math.imul(h, 31) + ch.charCodeAt(0)) >>> 0;
  return `hsl(${Math.round((h * 137.508) % 360)} 80% 60%)`;
}

// The canvas has the pixels of its place on screen (the preview is scaled
// into it), so boxes and labels stay crisp whatever the preview's size.
function drawFrame(c, header, bitmap) {
  const { canvas } = c;
  const dpr = window.devicePixelRatio || 1;
  const W = Math.round((canvas.clientWidth || header.jpegWidth) * dpr);
  const H = Math.round((W * header.jpegHeight) / header.jpegWidth);
  if (canvas.width !== W || canvas.height !== H) {
    canvas.width = W;
    canvas.height = H;
  }
  const g = canvas.getContext("2d");
  g.imageSmoothingQuality = "high";
  g.drawImage(bitmap, 0, 0, W, H);
  bitmap.close();
  const k = W / header.width;
  const fontPx = Math.round(12 * dpr);
  g.font = `600 ${fontPx}px system-ui, sans-serif`;
  g.lineWidth = 2 * dpr;

  for (const z of overlays.zones) {
    const zc = header.counts.zones[z.id];
    g.beginPath();
    z.polygon.forEach(([x, y], i) => (i ? g.lineTo(x * W, y * H) : g.moveTo(x * W, y * H)));
    g.closePath();
    g.fillStyle = "rgba(53, 194, 143, 0.16)";
    g.fill();
    g.strokeStyle = "rgba(53, 194, 143, 0.9)";
    g.stroke();
    const [x, y] = z.polygon[0];
    label(g, `${z.id}${zc ? ` · ${zc.occupancy} inside` : ""}`, x * W, y * H, "rgba(53, 194, 143, 0.9)", fontPx);
  }
  for (const l of overlays.lines) {
    const lc = header.counts.lines[l.id];
    g.strokeStyle = "#f5c542";
    g.setLineDash([8, 5]);
    g.beginPath();
    g.moveTo(l.from[0] * W, l.from[1] * H);
    g.lineTo(l.to[0] * W, l.to[1] * H);
    g.stroke();
    g.setLineDash([]);
    label(g, `${l.id} · in ${lc?.in ?? 0} · out ${lc?.out ?? 0}`, Math.min(l.from[0], l.to[0]) * W, Math.min(l.from[1], l.to[1]) * H, "#f5c542", fontPx);
  }
  for (const d of header.detections) {
    const [x1, y1, x2, y2] = d.b.map((v) => v * k);
    const col = color(d.t ?? d.c);
    g.strokeStyle = col;
    g.strokeRect(x1, y1, x2 - x1, y2 - y1);
    label(g, `${d.t !== undefined ? `#${d.t} ` : ""}${d.c} ${Math.round(d.s * 100)}%`, x1, y1, col, fontPx);
  }
}

// A filled tag above (x, y), kept inside the canvas.
function label(g, text, x, y, bg, fontPx) {
  const pad = Math.round(fontPx / 3);
  const w = g.measureText(text).width + 2 * pad;
  const h = fontPx + 2 * pad;
  const left = Math.max(0, Math.min(x, g.canvas.width - w));
  const top = Math.max(0, y - h);
  g.fillStyle = bg;
  g.fillRect(left, top, w, h);
  g.fillStyle = "#0f1216";
  g.fillText(text, left + pad, top + pad + fontPx * 0.85);
}

function renderCaption(c, header) {
  // Frames over the span of the last ten arrivals (bursts from the network even out).
  c.arrivals.push(performance.now());
  if (c.arrivals.length > 10) c.arrivals.shift();
  const span = c.arrivals.at(-1) - c.arrivals[0];
  c.fps = span > 0 ? ((c.arrivals.length - 1) * 1000) / span : 0;
  const lag = Math.max(0, Date.now() - header.ts);
  c.meta.textContent = `frame ${header.seq} · ${header.detections.length} objects · preview ${num(c.fps)} fps · ${lag} ms behind capture`;
  const chips = [];
  for (const [id, v] of Object.entries(header.counts.lines)) chips.push([id, `in ${v.in} · out ${v.out}`]);
  for (const [id, v] of Object.entries(header.counts.zones)) chips.push([id, `${v.occupancy} inside · ${v.entries} entered`]);
  c.counts.replaceChildren(
    ...chips.map(([id, text]) => {
      const s = document.createElement("span");
      s.className = "chip";
      const b = document.createElement("b");
      b.textContent = id;
      s.append(b, ` ${text}`);
      return s;
    }),
  );
  c.node.dataset.seq = String(header.seq);
  document.body.dataset.frames = String(++framesShown);
}

async function onRecord(header, jpeg) {
  if (header.type !== "frame") return;
  const c = card(header.stream);
  const bitmap = await createImageBitmap(new Blob([jpeg], { type: "image/jpeg" }));
  drawFrame(c, header, bitmap);
  renderCaption(c, header);
}

async function feed() {
  for (;;) {
    try {
      const res = await fetch("/api/live", { headers: auth });
      if (!res.ok || !res.body) throw new Error(`feed: HTTP ${res.status}`);
      $("feed-state").textContent = "live";
      const reader = res.body.getReader();
      let rest = new Uint8Array(0);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const taken = takeRecords(rest, value);
        rest = taken.rest;
        for (const r of taken.records) await onRecord(r.header, r.jpeg);
      }
      $("feed-state").textContent = "feed ended; reconnecting";
    } catch (err) {
      $("feed-state").textContent = `${err.message}; retrying`;
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

poll();
feed();
