/**
 * `bun run bench [section...]`: measured ratios in one run, printed as
 * markdown; one section per concern (the keys below), all but the soak by default.
 */
import { cpus } from "node:os";
import { benchBatch, benchCore, benchProfile } from "./core.ts";

const sections: Record<string, () => Promise<string>> = {
  core: () => benchCore(),
  profile: () => benchProfile(),
  precision: () => import("./precision.ts").then((m) => m.benchPrecision()),
  batch: () => benchBatch(),
  serve: () => import("./serve.ts").then((m) => m.benchServe()),
  retail: () => import("./retail.ts").then((m) => m.benchRetail()),
  nats: () => import("./nats.ts").then((m) => m.benchNats()),
  wire: () => import("./wire.ts").then((m) => m.benchWire()),
  runtimes: () => import("./runtimes.ts").then((m) => m.benchRuntimes()),
  streams: () => import("./streams.ts").then((m) => m.benchStreams()),
  browser: () => import("./browser.ts").then((m) => m.benchBrowser()),
  overload: () => import("./reliability.ts").then((m) => m.benchOverload()),
  soak: () => import("./reliability.ts").then((m) => m.benchSoak()),
};
/** Sections a plain `bun run bench` skips: the soak takes 10 minutes and the browser section needs Chromium, so they run only when named. */
const onRequest = new Set(["soak", "browser"]);

const wanted = process.argv.slice(2).filter((a, i, all) => !a.startsWith("--") && !all[i - 1]?.startsWith("--")); // flags (soak --minutes N) are read by their section
const unknown = wanted.filter((w) => !(w in sections));
if (unknown.length) {
  console.error(`unknown bench section(s): ${unknown.join(", ")}; known: ${Object.keys(sections).join(", ")}`);
  process.exit(2);
}
console.log(`# framewire bench — ${new Date().toISOString()}, bun ${Bun.version}, ${cpus().length} cores (${cpus()[0]?.model ?? "?"})\n`);
for (const name of wanted.length ? wanted : Object.keys(sections).filter((k) => !onRequest.has(k))) console.log(await sections[name]());
