/**
 * `framewire serve` as a real child process on a free 127.0.0.1 port, and a
 * tiny ONNX model with a dynamic batch axis (the shipped YOLO model has a
 * fixed batch of 1, so dynamic batching needs a model of its own).
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { repoRoot } from "./paths.ts";
import { freePort } from "./ports.ts";
import { startProcess, type Child } from "./process.ts";

export interface ServeProcess {
  url: string;
  port: number;
  child: Child;
  /** Stops it by PID (SIGTERM, then SIGKILL) and resolves with its exit code. */
  stop(): Promise<number>;
  /** Kills it at once (SIGKILL), as a crash would. */
  kill(): Promise<number>;
}

/** Starts `bun runtime/cli.ts serve ARGS --port P` and waits for its "listening" line. */
export async function startServe(args: string[], port?: number): Promise<ServeProcess> {
  const p = port ?? (await freePort());
  const child = startProcess(["bun", join(repoRoot, "runtime/cli.ts"), "serve", ...args, "--port", String(p)], { env: { FRAMEWIRE_LOG: "info" } });
  await child.waitFor(/listening on http:\/\/127\.0\.0\.1:\d+/, 60_000);
  return {
    url: `http://127.0.0.1:${p}`,
    port: p,
    child,
    stop: () => child.stop(5000),
    kill: async () => {
      child.signal("SIGKILL");
      return child.exited;
    },
  };
}

function varint(n: number): number[] {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}

/** Protobuf field: varint (number) or length-delimited (string, bytes, nested message). */
function field(no: number, value: number | string | number[]): number[] {
  if (typeof value === "number") return [...varint(no << 3), ...varint(value)];
  const bytes = typeof value === "string" ? [...new TextEncoder().encode(value)] : value;
  return [...varint((no << 3) | 2), ...varint(bytes.length), ...bytes];
}

/** ValueInfoProto of a float tensor; string dims are symbolic (dynamic). */
function valueInfo(name: string, dims: (number | string)[]): number[] {
  const shape = dims.flatMap((d) => field(1, typeof d === "number" ? field(1, d) : field(2, d)));
  const tensor = [...field(1, 1 /* FLOAT */), ...field(2, shape)];
  return [...field(1, name), ...field(2, field(1, tensor))];
}

/**
 * ONNX bytes of `y = Identity(x)` with x, y of shape [N, width] (N dynamic).
 * @example
 * await writeFile("identity.onnx", identityModel(4));
 */
export function identityModel(width: number): Uint8Array {
  const node = [...field(1, "x"), ...field(2, "y"), ...field(3, "identity"), ...field(4, "Identity")];
  const graph = [...field(1, node), ...field(2, "identity"), ...field(11, valueInfo("x", ["N", width])), ...field(12, valueInfo("y", ["N", width]))];
  const opset = [...field(1, ""), ...field(2, 13)];
  return new Uint8Array([...field(1, 7 /* IR version */), ...field(2, "framewire-tests"), ...field(7, graph), ...field(8, opset)]);
}

/** Writes the identity model into `dir`; returns its path. */
export async function writeIdentityModel(dir: string, width: number): Promise<string> {
  const file = join(dir, "identity.onnx");
  await writeFile(file, identityModel(width));
  return file;
}

/** A response's JSON body, loosely typed for assertions. */
export async function json(res: Response): Promise<Record<string, any>> {
  return (await res.json()) as Record<string, any>;
}
