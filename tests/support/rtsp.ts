/**
 * A real RTSP server for ingest tests: GStreamer's rtsp-server (through
 * PyGObject) serving an MP4 at rtsp://127.0.0.1:PORT/stream, looped, with
 * shared media so clients can reconnect.
 */
import { fileURLToPath } from "node:url";
import { freePort } from "./ports.ts";
import { startProcess } from "./process.ts";

// Debian's python has `gi`; a python3 found first on PATH (pyenv, venv) may not.
const PYTHON = "/usr/bin/python3";
const SCRIPT = fileURLToPath(new URL("./rtsp-server.py", import.meta.url));

export interface RtspServer {
  url: string;
  port: number;
  pid: number;
  file: string;
  /** Stops the server by PID (SIGINT: it ignores SIGTERM, see rtsp-server.py) and waits until it has exited. */
  stop(): Promise<void>;
  /** False once the server has exited (stopped, or killed by something else). */
  alive(): boolean;
  /** Stops it (if running) and starts a new one on the same port. */
  restart(): Promise<RtspServer>;
}

const running = new Set<RtspServer>();

/**
 * Starts the server and waits for its READY line.
 * @throws Error with the server's stderr when it does not come up in time.
 */
export async function startRtspServer(file: string, opts: { port?: number; timeoutMs?: number } = {}): Promise<RtspServer> {
  const port = opts.port ?? (await freePort());
  const child = startProcess([PYTHON, SCRIPT, String(port), file]);
  try {
    await child.waitFor(/^READY \d+$/m, opts.timeoutMs ?? 15_000);
  } catch (err) {
    await child.stop(500);
    throw new Error(`RTSP server on port ${port} did not start: ${(err as Error).message}`);
  }
  const server: RtspServer = {
    url: `rtsp://127.0.0.1:${port}/stream`,
    port,
    pid: child.pid,
    file,
    stop: async () => {
      running.delete(server);
      await child.stop(2000, "SIGINT");
    },
    alive: () => child.alive(),
    restart: async () => {
      await server.stop();
      return startRtspServer(file, { ...opts, port });
    },
  };
  running.add(server);
  return server;
}

/** Stops every server this process started (for afterAll). */
export async function stopAllRtspServers(): Promise<void> {
  await Promise.all([...running].map((s) => s.stop()));
}

