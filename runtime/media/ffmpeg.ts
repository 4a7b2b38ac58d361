import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { ConfigError } from "../core/errors.ts";
import { env, existsSync, which } from "../platform/index.ts";

/** The oldest system ffmpeg preferred over the build shipped in @ffmpeg-installer/ffmpeg (a 2018 4.1 snapshot). */
export const MIN_SYSTEM_FFMPEG = 5;

/** The ffmpeg binary framewire runs, and what it is. */
export interface FfmpegBinary {
  path: string;
  /** Where it came from. */
  source: "FRAMEWIRE_FFMPEG" | "system" | "shipped";
  /** As `ffmpeg -version` prints it ("5.1.9-0+deb12u1", "N-47683-g0e8eb07980-static"), or "unknown". */
  version: string;
  /** The ffmpeg release line (5 for 5.1.9; from libavcodec's major version for git snapshots), or 0 when unknown. */
  major: number;
}

/**
 * What `ffmpeg -version` says of a binary: its version text and release
 * line. Git snapshots ("N-47683-g…") say no release; their libavcodec major
 * tells it (58 → 4, 59 → 5, 60 → 6, ...).
 * @example
 * probeFfmpeg("/usr/bin/ffmpeg"); // { version: "5.1.9-0+deb12u1", major: 5 }
 */
export function probeFfmpeg(path: string): { version: string; major: number } | undefined {
  let out: string;
  try {
    const r = spawnSync(path, ["-hide_banner", "-version"], { encoding: "utf8", timeout: 10_000 });
    if (r.status !== 0 || typeof r.stdout !== "string") return undefined;
    out = r.stdout;
  } catch {
    return undefined;
  }
  const version = /ffmpeg version (\S+)/.exec(out)?.[1];
  if (!version) return undefined;
  const release = /^n?(\d+)\./.exec(version);
  const lavc = Number(/libavcodec\s+(\d+)\./.exec(out)?.[1] ?? NaN);
  const major = release ? Number(release[1]) : lavc >= 58 ? lavc - 54 : 0;
  return { version, major };
}

/**
 * The static build inside the @ffmpeg-installer/ffmpeg npm package, where it is installed for this platform.
 * @example
 * shippedFfmpeg(); // ".../node_modules/@ffmpeg-installer/linux-x64/ffmpeg"
 */
export function shippedFfmpeg(): string | undefined {
  try {
    const shipped = createRequire(import.meta.url)("@ffmpeg-installer/ffmpeg") as { path: string };
    if (existsSync(shipped.path)) return shipped.path;
  } catch {
    // Package missing or no build for this platform.
  }
  return undefined;
}

let cached: FfmpegBinary | undefined;

/**
 * The ffmpeg to run, chosen once per process: $FRAMEWIRE_FFMPEG when set;
 * else `ffmpeg` on PATH when it is version 5 or newer (faster decoders and
 * current codecs); else the static build inside the @ffmpeg-installer/ffmpeg
 * npm package, so a plain `bun install` needs no system package; else any
 * `ffmpeg` on PATH.
 * @throws ConfigError naming what to install when none is found.
 * @example
 * const ff = findFfmpeg();
 * log.info(`decoding with ${describeFfmpeg(ff)}`); // "ffmpeg 5.1.9-0+deb12u1 (system, /usr/bin/ffmpeg)"
 */
export function findFfmpeg(): FfmpegBinary {
  if (cached) return cached;
  const override = env("FRAMEWIRE_FFMPEG");
  if (override) {
    const path = existsSync(override) ? override : which(override);
    if (!path) throw new ConfigError(`FRAMEWIRE_FFMPEG=${override} does not exist`);
    return (cached = { path, source: "FRAMEWIRE_FFMPEG", ...(probeFfmpeg(path) ?? { version: "unknown", major: 0 }) });
  }
  const system = which("ffmpeg");
  const systemInfo = system ? probeFfmpeg(system) : undefined;
  if (system && systemInfo && systemInfo.major >= MIN_SYSTEM_FFMPEG) return (cached = { path: system, source: "system", ...systemInfo });
  const shipped = shippedFfmpeg();
  if (shipped) return (cached = { path: shipped, source: "shipped", ...(probeFfmpeg(shipped) ?? { version: "unknown", major: 0 }) });
  if (system) return (cached = { path: system, source: "system", ...(systemInfo ?? { version: "unknown", major: 0 }) });
  throw new ConfigError(
    "no ffmpeg found: run `bun install` (ships @ffmpeg-installer/ffmpeg), or install one (`apt-get install ffmpeg`), or set FRAMEWIRE_FFMPEG=/path/to/ffmpeg",
  );
}

/**
 * The path of the ffmpeg to run (see {@link findFfmpeg} for the choice).
 * @throws ConfigError naming what to install when none is found.
 * @example
 * spawn(resolveFfmpeg(), ["-i", "clip.mp4", ...]);
 */
export function resolveFfmpeg(): string {
  return findFfmpeg().path;
}

/**
 * One line for logs: version, where it came from, path. Takes the binary or
 * its path (a path framewire did not choose is probed once).
 * @example
 * describeFfmpeg("/usr/bin/ffmpeg"); // "ffmpeg 5.1.9-0+deb12u1 (system, /usr/bin/ffmpeg)"
 */
export function describeFfmpeg(binary: FfmpegBinary | string = findFfmpeg()): string {
  let b: FfmpegBinary;
  if (typeof binary !== "string") b = binary;
  else {
    const chosen = cached?.path === binary ? cached : undefined;
    b = chosen ?? { path: binary, source: binary === shippedFfmpeg() ? "shipped" : "system", ...(described.get(binary) ?? probeOnce(binary)) };
  }
  const line = b.major && !b.version.startsWith(String(b.major)) ? `${b.version}, release ${b.major}.x` : b.version;
  return `ffmpeg ${line} (${b.source}, ${b.path})`;
}

/**
 * The release line of an ffmpeg binary (0 when unknown), probed once per path.
 * @example
 * if (ffmpegMajor(resolveFfmpeg()) >= 5) args.push("-autoscale", "0");
 */
export function ffmpegMajor(path: string): number {
  if (cached?.path === path) return cached.major;
  return (described.get(path) ?? probeOnce(path)).major;
}

const described = new Map<string, { version: string; major: number }>();
function probeOnce(path: string): { version: string; major: number } {
  const info = probeFfmpeg(path) ?? { version: "unknown", major: 0 };
  described.set(path, info);
  return info;
}
