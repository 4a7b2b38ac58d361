import * as v from "valibot";
import { ConfigError, codedError, FramewireError } from "../runtime/core/errors.ts";
import {
  decodeInferResponse,
  encodeInferRequest,
  ErrorBody,
  HEADER_LENGTH,
  parseModelConfig,
  parseModelMetadata,
  type ModelConfigSummary,
  type ModelMetadata,
  type TensorMetadata,
  type WireDatatype,
} from "../runtime/inference/kserve.ts";
import type { Logger } from "../runtime/core/log.ts";
import { derive, type Frame, type Predictions } from "../runtime/core/message.ts";
import { describeFetchError } from "../runtime/platform/fetch-error.ts";
import { defineOperator } from "../runtime/core/operator.ts";
import { detectLayout, LayoutOption } from "../runtime/inference/yolo.ts";

const seconds = (dflt: number, min: number, text: string) =>
  v.optional(v.pipe(v.number(), v.minValue(min), v.maxValue(3600), v.description(text)), dflt);

const Options = v.strictObject({
  url: v.pipe(
    v.string(),
    v.regex(/^https?:\/\/[^/\s]+\/?$/, "expected a server address like http://host:8000"),
    v.description("Server address: Triton's HTTP endpoint (port 8000 by default) or a `framewire serve`."),
  ),
  model: v.pipe(v.string(), v.minLength(1), v.description("Model name on the server.")),
  version: v.optional(v.pipe(v.string(), v.regex(/^\d+$/), v.description("Model version; default: the server's choice."))),
  input: v.optional(v.pipe(v.string(), v.description("Input tensor name; default: the model's only input."))),
  output: v.optional(v.pipe(v.string(), v.description("Output tensor name; default: the model's first output."))),
  binary: v.optional(
    v.pipe(v.boolean(), v.description("Send and receive tensors with the binary tensor data extension (false: JSON, ~10× larger).")),
    true,
  ),
  timeout: seconds(10, 0.01, "Seconds one inference request may take before it is retried."),
  retries: v.optional(
    v.pipe(
      v.number(),
      v.integer(),
      v.minValue(0),
      v.maxValue(10),
      v.description("Retries of a failed request (unreachable, timeout, 502/503/504/429)."),
    ),
    2,
  ),
  retryDelay: seconds(0.1, 0.001, "Seconds before the first retry; doubled for each next one, with jitter."),
  retryMaxDelay: seconds(2, 0.001, "Longest wait between retries, in seconds."),
  startTimeout: seconds(
    30,
    0,
    "Seconds to wait at start for the model to be ready. Past it the stage runs anyway: its frames fail (counted) while the server is checked again with backoff, up to retryMaxDelay apart, until it answers.",
  ),
  names: v.optional(
    v.pipe(v.array(v.string()), v.description("Class names; default: from a framewire server's metadata (Triton has none to give).")),
  ),
  batch: v.optional(
    v.pipe(
      v.number(),
      v.integer(),
      v.minValue(1),
      v.maxValue(1024),
      v.description(
        "Most frames in one request. Frames that reach the stage together (replicas, several streams) go as one batch, up to this and the model's max_batch_size from the server's model configuration; 1 sends each frame alone.",
      ),
    ),
    8,
  ),
  batchDelay: v.optional(
    v.pipe(v.number(), v.minValue(0), v.maxValue(1), v.description("Seconds a frame may wait for others to join its request; 0 takes only frames already waiting.")),
    0,
  ),
  layout: LayoutOption,
});
type Options = v.InferOutput<typeof Options>;

/** The server could not be reached or kept failing with a retryable status. */
export const TritonUnavailableError = codedError("TritonUnavailableError", "E_TRITON_UNAVAILABLE");
export type TritonUnavailableError = InstanceType<typeof TritonUnavailableError>;

/** The server answered with an error that a retry would not fix (4xx, 500). */
export class TritonRequestError extends FramewireError {
  override name = "TritonRequestError";
  constructor(
    readonly status: number,
    message: string,
  ) {
    super("E_TRITON_REQUEST", message);
  }
}

/** Statuses worth retrying: overloaded, restarting or behind a proxy that lost it. */
const RETRYABLE = new Set([429, 502, 503, 504]);

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(t), resolve()), { once: true });
  });

/**
 * KServe v2 HTTP calls with a per-attempt timeout and retries with
 * exponential backoff. fetch keeps connections alive and reuses them.
 */
class KServeClient {
  private closed = new AbortController();
  /** Retries made so far (for logs and metrics). */
  retries = 0;

  constructor(
    private base: string,
    private o: Options,
    private log: Logger,
  ) {}

  /** Path of the model (and version) under /v2/models. */
  modelPath(): string {
    return `/v2/models/${encodeURIComponent(this.o.model)}${this.o.version ? `/versions/${this.o.version}` : ""}`;
  }

  /**
   * One call, retried while the failure is transient.
   * @throws TritonUnavailableError after the last retry, TritonRequestError at once for other HTTP errors.
   */
  async call(path: string, init: RequestInit, what: string): Promise<Response> {
    for (let attempt = 0; ; attempt++) {
      let failure: string;
      try {
        const signal = AbortSignal.any([AbortSignal.timeout(this.o.timeout * 1000), this.closed.signal]);
        const res = await fetch(this.base + path, { ...init, signal });
        if (res.ok) return res;
        const message = await errorText(res);
        if (!RETRYABLE.has(res.status)) throw new TritonRequestError(res.status, `${what}: HTTP ${res.status}: ${message}`);
        failure = `HTTP ${res.status}: ${message}`;
      } catch (err) {
        if (err instanceof TritonRequestError) throw err;
        if (this.closed.signal.aborted) throw new TritonUnavailableError(`${what}: the stage is closing`);
        failure = describeFetchError(err, this.o.timeout);
      }
      if (attempt >= this.o.retries) {
        throw new TritonUnavailableError(`${what}: ${this.base} failed after ${attempt + 1} attempt(s): ${failure}`);
      }
      this.retries++;
      const delay = Math.min(this.o.retryMaxDelay, this.o.retryDelay * 2 ** attempt) * 1000 * (0.5 + Math.random() / 2);
      this.log.debug(`${what}: ${failure}; retry ${attempt + 1}/${this.o.retries} in ${delay.toFixed(0)} ms`);
      await sleep(delay, this.closed.signal);
    }
  }

  /** Polls the model's ready endpoint until it answers 200 or `startTimeout` passes. */
  async waitReady(timeoutS = this.o.startTimeout): Promise<void> {
    const deadline = performance.now() + timeoutS * 1000;
    let said = false;
    let delay = this.o.retryDelay * 1000;
    for (;;) {
      let why: string;
      try {
        const res = await fetch(`${this.base}${this.modelPath()}/ready`, { signal: AbortSignal.timeout(this.o.timeout * 1000) });
        if (res.ok) return;
        why = `HTTP ${res.status}: ${await errorText(res)}`;
        // A server that says the model does not exist will not grow it by waiting (Triton answers 400 "unknown model").
        if (res.status === 404 || (res.status === 400 && /unknown model/i.test(why)))
          throw new ConfigError(`model ${this.o.model} is not on ${this.base} (${why})`);
      } catch (err) {
        if (err instanceof ConfigError) throw err;
        why = (err as Error).message;
      }
      if (performance.now() + delay > deadline) {
        throw new TritonUnavailableError(`model ${this.o.model} on ${this.base} is not ready${timeoutS ? ` after ${timeoutS} s` : ""} (${why})`);
      }
      if (!said) this.log.info(`waiting up to ${timeoutS} s for model ${this.o.model} on ${this.base} (${why})`);
      said = true;
      await sleep(delay, this.closed.signal);
      delay = Math.min(delay * 2, this.o.retryMaxDelay * 1000);
    }
  }

  async metadata(): Promise<ModelMetadata> {
    const res = await this.call(this.modelPath(), {}, `model ${this.o.model} metadata`);
    return parseModelMetadata(await res.json());
  }

  /**
   * The model configuration (Triton's model configuration extension), or why there is none:
   * a server without the extension answers 404 or 400, and then the stage sends one frame per request.
   */
  async config(): Promise<ModelConfigSummary | string> {
    let res: Response;
    try {
      res = await fetch(`${this.base}${this.modelPath()}/config`, { signal: AbortSignal.timeout(this.o.timeout * 1000) });
    } catch (err) {
      return describeFetchError(err, this.o.timeout);
    }
    if (!res.ok) return `HTTP ${res.status}: ${await errorText(res)}`;
    try {
      return parseModelConfig(await res.json());
    } catch (err) {
      // A configuration this stage cannot read is treated as none: one frame per request is always safe.
      return `unreadable: ${(err as Error).message}`;
    }
  }

  close(): void {
    this.closed.abort();
  }
}

/** The error message of a KServe error body, or the start of whatever else came back. */
async function errorText(res: Response): Promise<string> {
  const text = await res.text().catch(() => "");
  try {
    const r = v.safeParse(ErrorBody, JSON.parse(text));
    if (r.success) return r.output.error;
  } catch {
    // Not JSON: a proxy page or plain text.
  }
  return text.slice(0, 200) || res.statusText;
}

/** The tensor called `name`, or the only/first one; checked to be a float tensor. */
function pickTensor(
  list: TensorMetadata[],
  name: string | undefined,
  kind: "input" | "output",
  model: string,
  only: boolean,
): TensorMetadata & { datatype: WireDatatype } {
  const names = list.map((t) => `"${t.name}"`).join(", ");
  let t: TensorMetadata | undefined;
  if (name) t = list.find((x) => x.name === name);
  else if (!only || list.length === 1) t = list[0];
  if (!t) {
    throw new ConfigError(
      name
        ? `model ${model} has no ${kind} "${name}" (it has ${names || "none"})`
        : `model ${model} has ${list.length} ${kind}s (${names}): set \`${kind}\` to pick one`,
    );
  }
  if (t.datatype !== "FP32" && t.datatype !== "FP16")
    throw new ConfigError(`model ${model}: ${kind} ${t.name} is ${t.datatype}; infer-triton handles FP32 and FP16 tensors`);
  return t as TensorMetadata & { datatype: WireDatatype };
}

/** Class names a framewire server puts in its metadata parameters. */
function metadataNames(meta: ModelMetadata): string[] | undefined {
  const raw = meta.parameters?.class_names;
  if (typeof raw !== "string") return undefined;
  try {
    const r = v.safeParse(v.array(v.string()), JSON.parse(raw));
    return r.success ? r.output : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Runs a YOLO detector on an inference server over the KServe v2 HTTP
 * protocol (NVIDIA Triton, `framewire serve`, KServe runtimes), attaching
 * raw predictions for `nms` exactly as infer-onnx does.
 */
export default defineOperator({
  name: "infer-triton",
  kind: "transform",
  description:
    "Run a YOLO detector on Triton or `framewire serve` over KServe v2 HTTP (binary tensors, retries with backoff, readiness and metadata checks).",
  options: Options,
  async create(o, ctx) {
    const base = o.url.replace(/\/$/, "");
    const client = new KServeClient(base, o, ctx.log);
    /** Readiness, metadata and configuration: what the stage needs from the server before its first request. */
    const setup = async (readyTimeoutS: number) => {
      await client.waitReady(readyTimeoutS);
      const meta = await client.metadata();
      const input = pickTensor(meta.inputs, o.input, "input", o.model, true);
      const output = pickTensor(meta.outputs, o.output, "output", o.model, false);
      // Rank 4 is N×C×H×W (Triton writes a dynamic batch as -1); rank 3 is a model without a batch axis (max_batch_size 0).
      if ((input.shape.length !== 4 && input.shape.length !== 3) || ![3, -1].includes(input.shape.at(-3)!)) {
        throw new ConfigError(
          `model ${o.model}: input ${input.name} has shape [${input.shape}]; infer-triton feeds 3-channel images (N×3×H×W or 3×H×W)`,
        );
      }
      if (output.shape.length !== 3 && output.shape.length !== 2) {
        throw new ConfigError(
          `model ${o.model}: output ${output.name} has shape [${output.shape}]; expected a YOLO output (N×anchors×values or N×values×anchors)`,
        );
      }
      const classNames = o.names ?? metadataNames(meta) ?? [];
      if (!classNames.length) ctx.log.warn(`model ${o.model} names no classes: detections will carry class ids; set \`names\``);
      const unbatched = input.shape.length === 3;
      // How many frames one request may carry: the server's max_batch_size, when it says (model configuration), and `batch`.
      const config = await client.config();
      const serverMax = typeof config === "string" ? undefined : config.max_batch_size;
      const limit = serverMax !== undefined && serverMax > 0 && !unbatched && input.shape[0] === -1 ? Math.min(o.batch, serverMax) : 1;
      let batching: string;
      if (typeof config === "string") batching = `no model configuration from the server (${config}): one frame per request`;
      else {
        const db = config.dynamic_batching;
        const dynamic = db ? `, dynamic batching (preferred ${db.preferred_batch_size.join("/") || "none"}, max queue delay ${db.max_queue_delay_microseconds} µs)` : "";
        batching = `max_batch_size ${config.max_batch_size}${dynamic}: ${limit > 1 ? `up to ${limit} frames per request` : "one frame per request"}`;
      }
      ctx.log.info(
        `${o.model} ready on ${base} (${meta.platform ?? "unknown platform"}): input ${input.name} [${input.shape}] ${input.datatype}, ` +
          `output ${output.name} [${output.shape}] ${output.datatype}, ${o.binary ? "binary" : "JSON"} tensors, ${classNames.length} classes; ${batching}`,
      );
      return { input, output, classNames, unbatched, serverMax, limit };
    };
    type Model = Awaited<ReturnType<typeof setup>>;
    let model: Model | undefined;
    try {
      model = await setup(o.startTimeout);
    } catch (err) {
      // Wrong model names, shapes and types are mistakes; a server that is down is an outage: run, fail frames, retry.
      if (!(err instanceof TritonUnavailableError)) throw err;
      ctx.log.warn(`${err.message}; the stage runs: frames fail (counted) until it answers`);
    }
    let lateSetup: Promise<Model> | undefined;
    let nextTry = 0;
    let tryDelay = o.retryDelay * 1000;
    let lastFailure = "";
    /** The model, set up now if the server was down at start: one readiness check at a time, with backoff. */
    const ready = async (): Promise<Model> => {
      if (model) return model;
      if (!lateSetup) {
        if (performance.now() < nextTry) throw new TritonUnavailableError(`model ${o.model} on ${base} is not ready (${lastFailure}); retrying`);
        lateSetup = setup(0).then(
          (m) => {
            ctx.log.info(`${base} answers again`);
            return (model = m);
          },
          (err: Error) => {
            lateSetup = undefined;
            lastFailure = err.message.replace(/^.*?\((.*)\)$/, "$1");
            nextTry = performance.now() + tryDelay;
            tryDelay = Math.min(tryDelay * 2, o.retryMaxDelay * 1000);
            throw err;
          },
        );
      }
      return lateSetup;
    };
    let checked = false;
    let layout: Predictions["layout"] | undefined;
    let failing = false;
    let requests = 0;
    let framesSent = 0;
    const inferPath = `${client.modelPath()}/infer`;

    interface Waiting {
      frame: Frame & { tensor: NonNullable<Frame["tensor"]> };
      resolve(r: { data: Float32Array; dims: number[] }): void;
      reject(err: unknown): void;
    }
    let waiting: Waiting[] = [];
    let timer: ReturnType<typeof setTimeout> | undefined;

    /** One request for `group` (frames of one shape); each frame gets its slice of the output. */
    const send = async (group: Waiting[], m: Model) => {
      const { input, output, unbatched } = m;
      const n = group.length;
      const first = group[0].frame.tensor;
      const shape = unbatched ? first.dims.slice(1) : [n, ...first.dims.slice(1)];
      let data = first.data;
      if (n > 1) {
        data = new Float32Array(first.data.length * n);
        group.forEach((w, i) => data.set(w.frame.tensor.data, i * first.data.length));
      }
      try {
        const req = encodeInferRequest([{ name: input.name, datatype: input.datatype, shape, data }], [output.name], o.binary);
        let res: Response;
        try {
          res = await client.call(inferPath, { method: "POST", body: req.body, headers: req.headers }, `infer ${o.model}`);
        } catch (err) {
          if (!failing) ctx.log.warn(`${(err as Error).message}; frames fail until it answers again`);
          failing = true;
          throw err;
        }
        if (failing) ctx.log.info(`${base} answers again`);
        failing = false;
        requests++;
        framesSent += n;
        const outs = decodeInferResponse(new Uint8Array(await res.arrayBuffer()), res.headers.get(HEADER_LENGTH));
        const out = outs.find((t) => t.name === output.name);
        if (!out)
          throw new TritonRequestError(200, `the response has no output ${output.name} (got ${outs.map((t) => t.name).join(", ") || "none"})`);
        const dims = out.shape.length === 2 ? [1, ...out.shape] : out.shape;
        if (n > 1 && dims[0] !== n) throw new TritonRequestError(200, `the response's output ${output.name} has batch ${dims[0]} for a request of ${n} frames`);
        const per = out.data.length / n;
        group.forEach((w, i) => w.resolve({ data: n === 1 ? out.data : out.data.subarray(i * per, (i + 1) * per), dims: n === 1 ? dims : [1, ...dims.slice(1)] }));
      } catch (err) {
        for (const w of group) w.reject(err);
      }
    };
    const flush = () => {
      clearTimeout(timer);
      timer = undefined;
      while (model && waiting.length) {
        const group = waiting.splice(0, model.limit);
        void send(group, model);
      }
    };
    const submit = (frame: Waiting["frame"], m: Model) =>
      new Promise<{ data: Float32Array; dims: number[] }>((resolve, reject) => {
        const w = { frame, resolve, reject };
        const limit = m.limit;
        if (limit === 1) return void send([w], m);
        // Only frames of one shape share a request.
        if (waiting.length && waiting[0].frame.tensor.dims.join() !== frame.tensor.dims.join()) flush();
        waiting.push(w);
        if (waiting.length >= limit) flush();
        else timer ??= setTimeout(flush, o.batchDelay * 1000);
      });

    return {
      async process(msg) {
        if (msg.kind !== "frame") return msg;
        const f: Frame = msg;
        if (!f.tensor) throw new Error("frame has no tensor: put a resize stage before infer-triton");
        const m = await ready();
        const { input, unbatched, classNames } = m;
        const shape = unbatched ? f.tensor.dims.slice(1) : f.tensor.dims;
        if (!checked) {
          const bad = shape.length !== input.shape.length || input.shape.some((d, i) => d > 0 && d !== shape[i]);
          if (bad)
            throw new ConfigError(
              `model ${o.model} expects input [${input.shape}] but gets [${shape}]: set the resize stage's width/height to match`,
            );
          checked = true;
        }
        const out = await submit(f as Waiting["frame"], m);
        layout ??= detectLayout(out.dims, o.layout);
        return derive(f, { predictions: { layout, dims: out.dims, data: out.data, classNames, model: o.model } });
      },
      metrics: () => [
        {
          name: "infer_triton_retries_total",
          help: "Inference requests retried after a transient failure.",
          type: "counter" as const,
          value: client.retries,
        },
        { name: "infer_triton_requests_total", help: "Inference requests answered.", type: "counter" as const, value: requests },
        { name: "infer_triton_frames_total", help: "Frames in the requests answered (frames / requests = mean batch).", type: "counter" as const, value: framesSent },
        {
          name: "infer_triton_max_batch_size",
          help: "The model's max_batch_size from the server's model configuration (0: no batch axis; -1: the server offers no configuration).",
          type: "gauge" as const,
          value: model ? (model.serverMax ?? -1) : -1,
        },
        { name: "infer_triton_batch_limit", help: "Most frames this stage puts in one request (0 until the server has answered).", type: "gauge" as const, value: model?.limit ?? 0 },
      ],
      async close() {
        flush();
        client.close();
      },
    };
  },
});
