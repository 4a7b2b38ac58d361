import { createRequire } from "node:module";
import { ConfigError } from "../core/errors.ts";
import { env, existsSync, which } from "../platform/index.ts";

let cached: string | undefined;

/**
 * The ffmpeg binary to run: $FRAMEWIRE_FFMPEG, else the static build shipped
 * inside the @ffmpeg-installer/ffmpeg npm package, else `ffmpeg` on PATH.
 * @throws ConfigError naming what to install when none is found.
 */
export function resolveFfmpeg(): string {
  if (cached) return cached;
  const override = env("FRAMEWIRE_FFMPEG");
  if (override) {
    if (!existsSync(override) && !which(override)) throw new ConfigError(`FRAMEWIRE_FFMPEG=${override} does not exist`);
    return (cached = override);
  }
  try {
    const shipped = createRequire(import.meta.url)("@ffmpeg-installer/ffmpeg") as { path: string };
    if (existsSync(shipped.path)) return (cached = shipped.path);
  } catch {
    // Package missing or no build for this platform: fall through to the system binary.
  }
  const system = which("ffmpeg");
  if (system) return (cached = system);
  throw new ConfigError(
    "no ffmpeg found: run `bun install` (ships @ffmpeg-installer/ffmpeg), or install one (`apt-get install ffmpeg`), or set FRAMEWIRE_FFMPEG=/path/to/ffmpeg",
  );
}
