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
  hasClips = s.stages.some((st) => st.operator === "clip");
  hasHeatmap = s.stages.some((st) => st.operator === "heatmap");
  zoneStages = s.stages.filter((st) => st.operator === "zones").map((st) => st.id);
  for (const c of cards.values()) {
    c.heatToggle.hidden = !hasHeatmap;
    c.zonesToggle.hidden = !zoneStages.length;
  }
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
  c = { node, canvas: node.querySelector("canvas"), meta: node.querySelector(".meta"), counts: node.querySelector(".counts"), clips: node.querySelector(".clips"), heat: node.querySelector(".heat"), heatToggle: node.querySelector(".heat-toggle"), arrivals: [], fps: 0 };
  c.heatToggle.hidden = !hasHeatmap;
  c.heatToggle.addEventListener("click", () => toggleHeat(stream, c));
  c.zonesToggle = node.querySelector(".zones-toggle");
  c.zonesToggle.hidden = !zoneStages.length;
  c.zonesToggle.addEventListener("click", () => toggleEditor(stream, c));
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

  // The stream's own lines and zones (GET /api/zones), else the file's; none while the editor draws them.
  const geo = c.editor ? { lines: [], zones: [] } : geometryOf(header.stream);
  for (const z of geo.zones) {
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
  for (const l of geo.lines) {
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

// ---- event clips ------------------------------------------------------------
// With a `clip` stage, each stream's tile lists its latest clips (GET /api/clips),
// newest first, as links to /clips/<path>.

let hasClips = false;
const CLIPS_SHOWN = 6;

async function pollClips() {
  try {
    if (hasClips) {
      const res = await fetch("/api/clips?limit=200", { headers: auth });
      if (res.ok) renderClips((await res.json()).clips);
    }
  } catch {
    // The status poll reports a server that is gone.
  }
  setTimeout(pollClips, 3000);
}

function renderClips(clips) {
  const byStream = new Map();
  for (const clip of clips) {
    if (!byStream.has(clip.stream)) byStream.set(clip.stream, []);
    byStream.get(clip.stream).push(clip);
  }
  for (const [stream, list] of byStream) {
    const c = card(stream);
    c.clips.hidden = false;
    const shown = list.slice(0, CLIPS_SHOWN).map((clip) => {
      const a = document.createElement("a");
      a.href = clip.url;
      a.target = "_blank";
      a.rel = "noopener";
      a.className = "clip";
      a.dataset.path = clip.path;
      a.title = `${clip.path} · ${(clip.bytes / 1048576).toFixed(1)} MB`;
      a.textContent = `${new Date(clip.ts).toLocaleTimeString()} ${clip.type}`;
      if (token) a.addEventListener("click", downloadWithToken);
      return a;
    });
    const more = list.length > CLIPS_SHOWN ? [` +${list.length - CLIPS_SHOWN} more`] : [];
    c.clips.replaceChildren(c.clips.firstElementChild, ...shown, ...more);
  }
}

// A protected server wants the token as a header, which a plain link cannot send.
async function downloadWithToken(ev) {
  ev.preventDefault();
  const a = ev.currentTarget;
  const res = await fetch(a.href, { headers: auth });
  if (!res.ok) return;
  const url = URL.createObjectURL(await res.blob());
  const save = document.createElement("a");
  save.href = url;
  save.download = a.dataset.path.replaceAll("/", "-");
  save.click();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// ---- heatmaps -----------------------------------------------------------------
// With a `heatmap` stage, each tile's "heatmap" button lays the stream's heatmap
// (GET /api/streams/<id>/heatmap.png, transparent where nobody stood) over the
// preview, refreshed every 5 s while it is on.

let hasHeatmap = false;
const HEAT_EVERY_MS = 5000;

function toggleHeat(stream, c) {
  c.heatOn = !c.heatOn;
  c.heatToggle.setAttribute("aria-pressed", String(c.heatOn));
  c.heat.hidden = !c.heatOn;
  clearTimeout(c.heatTimer);
  if (c.heatOn) refreshHeat(stream, c);
}

async function refreshHeat(stream, c) {
  if (!c.heatOn) return;
  try {
    const width = Math.min(1280, Math.max(64, Math.round(c.canvas.clientWidth || 640)));
    const res = await fetch(`/api/streams/${encodeURIComponent(stream)}/heatmap.png?width=${width}`, { headers: auth });
    if (res.ok) {
      const url = URL.createObjectURL(await res.blob());
      const old = c.heat.src;
      c.heat.onload = () => {
        if (old.startsWith("blob:")) URL.revokeObjectURL(old);
        c.node.dataset.heatmap = "shown";
      };
      c.heat.src = url;
      c.heatToggle.title = "";
    } else {
      c.heatToggle.title = (await res.json().catch(() => ({}))).error ?? `HTTP ${res.status}`;
    }
  } catch (err) {
    c.heatToggle.title = err.message;
  }
  c.heatTimer = setTimeout(() => refreshHeat(stream, c), HEAT_EVERY_MS);
}

// ---- zone and line editor ----------------------------------------------------
// The tile's "zones" button opens an editor over the preview: drag the points of
// lines and zones, add lines (two clicks) and zones (clicks, then a click on the
// first point or "finish"), rename or delete the selected one. It shows the YAML
// to paste into the pipeline file and applies the geometry live with
// PUT /api/zones/<stage>/streams/<id> (the control token: #token=… or typed in).

let zoneStages = [];
/** Per stream, what the zones stages count with now (from GET /api/zones). */
const streamGeometry = new Map();
const SVG = "http://www.w3.org/2000/svg";
const round3 = (x) => Math.round(Math.min(1, Math.max(0, x)) * 1000) / 1000;

function geometryOf(stream) {
  return streamGeometry.get(stream) ?? overlays;
}

async function pollZones() {
  try {
    if (zoneStages.length) {
      const res = await fetch("/api/zones", { headers: auth });
      if (res.ok) {
        const merged = new Map();
        for (const st of (await res.json()).stages) {
          for (const g of st.streams) {
            const m = merged.get(g.stream) ?? { lines: [], zones: [] };
            m.lines.push(...g.lines);
            m.zones.push(...g.zones);
            merged.set(g.stream, m);
          }
        }
        streamGeometry.clear();
        for (const [k, g] of merged) streamGeometry.set(k, g);
      }
    }
  } catch {
    // The status poll reports a server that is gone.
  }
  setTimeout(pollZones, 5000);
}

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function toggleEditor(stream, c) {
  if (c.editor) return closeEditor(c);
  openEditor(stream, c);
}

function closeEditor(c) {
  c.editor.panel.remove();
  c.editor.svg.remove();
  c.editor.resize.disconnect();
  c.editor = undefined;
  c.zonesToggle.setAttribute("aria-pressed", "false");
  delete c.node.dataset.editing;
}

async function openEditor(stream, c) {
  const stage = zoneStages[0];
  const panel = el("div", { class: "editor" });
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "edit-layer");
  c.node.querySelector(".view").append(svg);
  c.node.append(panel);
  const ed = { stream, stage, lines: [], zones: [], sel: null, mode: "select", draft: [], drag: null, panel, svg };
  c.editor = ed;
  c.zonesToggle.setAttribute("aria-pressed", "true");
  c.node.dataset.editing = "true";

  const stageSel = el("select", { class: "stage", title: "zones stage" });
  for (const id of zoneStages) stageSel.append(el("option", { value: id }, id));
  stageSel.hidden = zoneStages.length < 2;
  const addLine = el("button", { type: "button", class: "add-line", title: "then click the two ends on the picture" }, "+ line");
  const addZone = el("button", { type: "button", class: "add-zone", title: "then click the corners; click the first again, or finish" }, "+ zone");
  const finish = el("button", { type: "button", class: "finish", hidden: "" }, "finish");
  const idInput = el("input", { class: "shape-id", placeholder: "id", size: "12", disabled: "", "aria-label": "id of the selected line or zone" });
  const del = el("button", { type: "button", class: "delete", disabled: "" }, "delete");
  const tokenInput = el("input", { class: "token", type: "password", placeholder: "control token", size: "16", "aria-label": "control token" });
  tokenInput.hidden = Boolean(token);
  const apply = el("button", { type: "button", class: "apply primary" }, "apply live");
  const close = el("button", { type: "button", class: "close" }, "close");
  const status = el("div", { class: "status", role: "status" });
  const yaml = el("pre", { class: "yaml" });
  const bar = el("div", { class: "editor-bar" });
  bar.append(stageSel, addLine, addZone, finish, idInput, del, el("span", { class: "gap" }), tokenInput, apply, close);
  const hint = el("div", { class: "hint" }, "Drag the points; paste the YAML below into the zones stage's with: (or under streams: { " + stream + ": … } for this camera only), or apply it live.");
  panel.append(bar, hint, status, yaml);
  ed.els = { stageSel, addLine, addZone, finish, idInput, del, apply, status, yaml, tokenInput };

  const load = async () => {
    const res = await fetch(`/api/zones/${encodeURIComponent(ed.stage)}/streams/${encodeURIComponent(stream)}`, { headers: auth });
    const body = await res.json();
    if (!res.ok) return setStatus(ed, body.error ?? `HTTP ${res.status}`, true);
    ed.lines = body.lines.map((l) => ({ id: l.id, from: [...l.from], to: [...l.to] }));
    ed.zones = body.zones.map((z) => ({ id: z.id, polygon: z.polygon.map((p) => [...p]) }));
    ed.sel = null;
    ed.counts = body.counts;
    renderEditor(ed);
    c.node.dataset.editorLoaded = String(Number(c.node.dataset.editorLoaded ?? 0) + 1);
  };
  stageSel.addEventListener("change", () => {
    ed.stage = stageSel.value;
    load();
  });
  addLine.addEventListener("click", () => setMode(ed, ed.mode === "line" ? "select" : "line"));
  addZone.addEventListener("click", () => setMode(ed, ed.mode === "zone" ? "select" : "zone"));
  finish.addEventListener("click", () => finishZone(ed));
  del.addEventListener("click", () => {
    if (!ed.sel) return;
    (ed.sel.kind === "line" ? ed.lines : ed.zones).splice(ed.sel.index, 1);
    ed.sel = null;
    renderEditor(ed);
  });
  idInput.addEventListener("input", () => {
    if (!ed.sel) return;
    (ed.sel.kind === "line" ? ed.lines : ed.zones)[ed.sel.index].id = idInput.value.trim();
    renderEditor(ed, { keepId: true });
  });
  apply.addEventListener("click", () => applyGeometry(ed));
  close.addEventListener("click", () => closeEditor(c));
  svg.addEventListener("pointerdown", (ev) => onPointerDown(ed, ev));
  svg.addEventListener("pointermove", (ev) => onPointerMove(ed, ev));
  svg.addEventListener("pointerup", () => (ed.drag = null));
  svg.addEventListener("pointercancel", () => (ed.drag = null));
  svg.addEventListener("keydown", (ev) => ev.key === "Escape" && setMode(ed, "select"));
  ed.resize = new ResizeObserver(() => renderEditor(ed, { keepId: true }));
  ed.resize.observe(svg);
  await load();
}

function setStatus(ed, text, bad = false) {
  ed.els.status.textContent = text;
  ed.els.status.classList.toggle("bad", bad);
}

function setMode(ed, mode) {
  ed.mode = mode;
  ed.draft = [];
  ed.els.addLine.setAttribute("aria-pressed", String(mode === "line"));
  ed.els.addZone.setAttribute("aria-pressed", String(mode === "zone"));
  ed.els.finish.hidden = mode !== "zone";
  ed.svg.dataset.mode = mode;
  renderEditor(ed, { keepId: true });
}

/** A new id: `base-N`, free among the lines and zones. */
function freshId(ed, base) {
  const taken = new Set([...ed.lines, ...ed.zones].map((s) => s.id));
  let n = 1;
  while (taken.has(`${base}-${n}`)) n++;
  return `${base}-${n}`;
}

function finishZone(ed) {
  if (ed.draft.length >= 3) {
    ed.zones.push({ id: freshId(ed, "zone"), polygon: ed.draft });
    ed.sel = { kind: "zone", index: ed.zones.length - 1 };
  }
  setMode(ed, "select");
}

/** The pointer's position on the picture, normalised. */
function at(ed, ev) {
  const r = ed.svg.getBoundingClientRect();
  return [round3((ev.clientX - r.left) / r.width), round3((ev.clientY - r.top) / r.height)];
}

function onPointerDown(ed, ev) {
  const t = ev.target;
  const p = at(ed, ev);
  const kind = t.dataset?.kind;
  if (ed.mode === "line") {
    ed.draft.push(p);
    if (ed.draft.length === 2) {
      if (ed.draft[0][0] !== ed.draft[1][0] || ed.draft[0][1] !== ed.draft[1][1]) {
        ed.lines.push({ id: freshId(ed, "line"), from: ed.draft[0], to: ed.draft[1] });
        ed.sel = { kind: "line", index: ed.lines.length - 1 };
      }
      return setMode(ed, "select");
    }
    return renderEditor(ed, { keepId: true });
  }
  if (ed.mode === "zone") {
    if (kind === "draft-first" && ed.draft.length >= 3) return finishZone(ed);
    ed.draft.push(p);
    return renderEditor(ed, { keepId: true });
  }
  if (kind === "line-pt" || kind === "zone-pt") {
    ed.sel = { kind: kind === "line-pt" ? "line" : "zone", index: Number(t.dataset.index) };
    ed.drag = { kind, index: Number(t.dataset.index), pt: Number(t.dataset.pt) };
  } else if (kind === "line" || kind === "zone") {
    ed.sel = { kind, index: Number(t.dataset.index) };
    const shape = kind === "line" ? ed.lines[ed.sel.index] : ed.zones[ed.sel.index];
    const pts = kind === "line" ? [shape.from, shape.to] : shape.polygon;
    ed.drag = { kind: "move", start: p, orig: pts.map((q) => [...q]), shape: ed.sel };
  } else {
    ed.sel = null;
  }
  ed.svg.setPointerCapture(ev.pointerId);
  ev.preventDefault();
  renderEditor(ed);
}

function onPointerMove(ed, ev) {
  const d = ed.drag;
  if (!d) return;
  const p = at(ed, ev);
  if (d.kind === "line-pt") {
    const l = ed.lines[d.index];
    if (d.pt === 0) l.from = p;
    else l.to = p;
  } else if (d.kind === "zone-pt") {
    ed.zones[d.index].polygon[d.pt] = p;
  } else if (d.kind === "move") {
    const dx = p[0] - d.start[0];
    const dy = p[1] - d.start[1];
    const moved = d.orig.map(([x, y]) => [round3(x + dx), round3(y + dy)]);
    if (d.shape.kind === "line") [ed.lines[d.shape.index].from, ed.lines[d.shape.index].to] = moved;
    else ed.zones[d.shape.index].polygon = moved;
  }
  renderEditor(ed, { keepId: true });
}

function renderEditor(ed, { keepId = false } = {}) {
  const svg = ed.svg;
  const W = svg.clientWidth || 1;
  const H = svg.clientHeight || 1;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const px = ([x, y]) => [x * W, y * H];
  const nodes = [];
  ed.zones.forEach((z, i) => {
    const sel = ed.sel?.kind === "zone" && ed.sel.index === i;
    const poly = document.createElementNS(SVG, "polygon");
    poly.setAttribute("points", z.polygon.map((p) => px(p).join(",")).join(" "));
    poly.setAttribute("class", `zone${sel ? " selected" : ""}`);
    Object.assign(poly.dataset, { kind: "zone", index: String(i), id: z.id });
    nodes.push(poly, svgLabel(px(z.polygon[0]), z.id, "zone-label"));
  });
  ed.lines.forEach((l, i) => {
    const sel = ed.sel?.kind === "line" && ed.sel.index === i;
    const [x1, y1] = px(l.from);
    const [x2, y2] = px(l.to);
    const hit = document.createElementNS(SVG, "line");
    for (const [k, v] of Object.entries({ x1, y1, x2, y2 })) hit.setAttribute(k, String(v));
    hit.setAttribute("class", `line${sel ? " selected" : ""}`);
    Object.assign(hit.dataset, { kind: "line", index: String(i), id: l.id });
    nodes.push(hit, svgLabel([Math.min(x1, x2), Math.min(y1, y2)], l.id, "line-label"));
  });
  // Handles last, above the shapes.
  ed.zones.forEach((z, i) => z.polygon.forEach((p, k) => nodes.push(handle(px(p), "zone-pt", i, k))));
  ed.lines.forEach((l, i) => [l.from, l.to].forEach((p, k) => nodes.push(handle(px(p), "line-pt", i, k))));
  if (ed.draft.length) {
    const pl = document.createElementNS(SVG, "polyline");
    pl.setAttribute("points", ed.draft.map((p) => px(p).join(",")).join(" "));
    pl.setAttribute("class", "draft");
    nodes.push(pl);
    ed.draft.forEach((p, k) => {
      const h = handle(px(p), k === 0 ? "draft-first" : "draft-pt", 0, k);
      nodes.push(h);
    });
  }
  svg.replaceChildren(...nodes);

  const shape = ed.sel ? (ed.sel.kind === "line" ? ed.lines : ed.zones)[ed.sel.index] : undefined;
  ed.els.idInput.disabled = !shape;
  ed.els.del.disabled = !shape;
  if (!keepId || !shape) ed.els.idInput.value = shape?.id ?? "";
  ed.els.yaml.textContent = yamlOf(ed);
}

function handle([x, y], kind, index, pt) {
  const h = document.createElementNS(SVG, "circle");
  for (const [k, v] of Object.entries({ cx: x, cy: y, r: 7 })) h.setAttribute(k, String(v));
  h.setAttribute("class", `handle ${kind}`);
  Object.assign(h.dataset, { kind, index: String(index), pt: String(pt) });
  return h;
}

function svgLabel([x, y], text, cls) {
  const t = document.createElementNS(SVG, "text");
  t.setAttribute("x", String(x + 6));
  t.setAttribute("y", String(Math.max(14, y - 6)));
  t.setAttribute("class", cls);
  t.textContent = text;
  return t;
}

const pt = ([x, y]) => `[${x}, ${y}]`;

/** The editor's geometry as the zones stage's YAML. */
function yamlOf(ed) {
  const out = [`# zones stage "${ed.stage}", stream ${ed.stream}`];
  out.push(ed.lines.length ? "lines:" : "lines: []");
  for (const l of ed.lines) out.push(`  - { id: ${l.id}, from: ${pt(l.from)}, to: ${pt(l.to)} }`);
  out.push(ed.zones.length ? "zones:" : "zones: []");
  for (const z of ed.zones) out.push(`  - { id: ${z.id}, polygon: [${z.polygon.map(pt).join(", ")}] }`);
  return out.join("\n") + "\n";
}

async function applyGeometry(ed) {
  const typed = ed.els.tokenInput.value.trim();
  const headers = { "content-type": "application/json", ...(token ? auth : typed ? { Authorization: `Bearer ${typed}` } : {}) };
  const body = JSON.stringify({ lines: ed.lines, zones: ed.zones });
  try {
    const res = await fetch(`/api/zones/${encodeURIComponent(ed.stage)}/streams/${encodeURIComponent(ed.stream)}`, { method: "PUT", headers, body });
    const answer = await res.json().catch(() => ({}));
    if (!res.ok) return setStatus(ed, `not applied: ${answer.error ?? `HTTP ${res.status}`}`, true);
    ed.counts = answer.counts;
    streamGeometry.set(ed.stream, { lines: answer.lines, zones: answer.zones });
    const kept = [
      ...Object.entries(answer.counts.lines).map(([id, v]) => `${id} in ${v.in} · out ${v.out}`),
      ...Object.entries(answer.counts.zones).map(([id, v]) => `${id} ${v.entries} entered`),
    ];
    setStatus(ed, `applied to ${ed.stage} for ${ed.stream} (until a restart; paste the YAML to keep it) — totals: ${kept.join("; ") || "none"}`);
    ed.panel.dataset.applied = String(Number(ed.panel.dataset.applied ?? 0) + 1);
  } catch (err) {
    setStatus(ed, `not applied: ${err.message}`, true);
  }
}

poll();
feed();
pollClips();
pollZones();
