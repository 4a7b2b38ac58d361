/** Minimal leveled logger to stderr; `FRAMEWIRE_LOG=debug|info|warn|error`. */
export interface Logger {
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
  child(scope: string): Logger;
}

const LEVELS = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 } as const;
type Level = keyof typeof LEVELS;

function threshold(): number {
  const want = (globalThis.process?.env?.FRAMEWIRE_LOG ?? "info") as Level;
  return LEVELS[want] ?? LEVELS.info;
}

/**
 * @example
 * const log = createLogger("demo").child("cam");
 * log.info("connected"); // 12:00:01.123 info [demo/cam] connected
 */
export function createLogger(scope: string, level = threshold()): Logger {
  const emit = (l: Level, msg: string) => {
    if (LEVELS[l] < level) return;
    const t = new Date().toISOString().slice(11, 23);
    console.error(`${t} ${l.padEnd(5)} [${scope}] ${msg}`);
  };
  return {
    debug: (m) => emit("debug", m),
    info: (m) => emit("info", m),
    warn: (m) => emit("warn", m),
    error: (m) => emit("error", m),
    child: (s) => createLogger(`${scope}/${s}`, level),
  };
}
