/**
 * A served model's configuration as Triton's model configuration extension
 * returns it (`GET /v2/models/{name}/config`): the JSON form of
 * model_config.proto's ModelConfig with proto field names, every field
 * printed (defaults included) and int64 values as JSON numbers.
 */
import type { ServeConfig } from "./config-complete.ts";

/** How each instance group runs here; a KIND_AUTO group reports the kind it resolved to, as Triton does. */
export type ResolvedKinds = ReadonlyMap<string, "KIND_CPU" | "KIND_GPU">;

/**
 * @example
 * const json = tritonConfigJson(model.config, model.kinds);
 * json.max_batch_size; // 32
 * json.dynamic_batching; // { preferred_batch_size: [4, 8, 16], max_queue_delay_microseconds: 500, ... }
 */
export function tritonConfigJson(c: ServeConfig, kinds: ResolvedKinds = new Map()): Record<string, unknown> {
  const w = c.written;
  const policy = w.version_policy;
  const versionPolicy = policy?.all
    ? { all: {} }
    : policy?.specific
      ? { specific: { versions: policy.specific.versions } }
      : { latest: { num_versions: policy?.latest?.num_versions ?? 1 } };
  const db = c.dynamicBatching;
  const queuePolicy = w.dynamic_batching?.default_queue_policy;
  return {
    name: c.name,
    platform: "onnxruntime_onnx",
    backend: "onnxruntime",
    runtime: "",
    version_policy: versionPolicy,
    max_batch_size: c.maxBatchSize,
    input: [
      {
        name: c.input.name,
        data_type: "TYPE_FP32",
        format: w.input?.[0]?.format ?? "FORMAT_NONE",
        dims: c.input.dims,
        is_shape_tensor: false,
        allow_ragged_batch: false,
        optional: false,
        is_non_linear_format_io: false,
      },
    ],
    output: [
      {
        name: c.output.name,
        data_type: "TYPE_FP32",
        dims: c.output.dims,
        label_filename: c.output.labelFilename ?? "",
        is_shape_tensor: false,
        is_non_linear_format_io: false,
      },
    ],
    batch_input: [],
    batch_output: [],
    ...(w.optimization !== undefined ? { optimization: w.optimization } : {}),
    ...(db
      ? {
          dynamic_batching: {
            preferred_batch_size: db.preferred,
            max_queue_delay_microseconds: db.maxQueueDelayUs,
            preserve_ordering: db.preserveOrdering,
            priority_levels: 0,
            default_priority_level: 0,
            ...(queuePolicy
              ? {
                  default_queue_policy: {
                    timeout_action: "REJECT",
                    default_timeout_microseconds: 0,
                    allow_timeout_override: queuePolicy.allow_timeout_override ?? false,
                    max_queue_size: queuePolicy.max_queue_size ?? 0,
                  },
                }
              : {}),
            priority_queue_policy: {},
          },
        }
      : {}),
    instance_group: c.instanceGroups.map((g, i) => ({
      name: g.name,
      kind: g.kind === "KIND_AUTO" || g.kind === "KIND_MODEL" ? (kinds.get(g.name) ?? "KIND_CPU") : g.kind,
      count: w.instance_group?.[i]?.count ?? 1,
      gpus: g.gpus,
      secondary_devices: [],
      profile: [],
      passive: false,
      host_policy: w.instance_group?.[i]?.host_policy ?? "",
    })),
    default_model_filename: c.defaultModelFilename,
    cc_model_filenames: {},
    metric_tags: {},
    parameters: w.parameters ?? {},
    model_warmup: (w.model_warmup ?? []).map((s) => ({
      name: s.name,
      batch_size: s.batch_size ?? 1,
      inputs: Object.fromEntries(
        Object.entries(s.inputs).map(([k, x]) => [
          k,
          {
            data_type: x.data_type,
            dims: x.dims,
            ...(x.input_data_file ? { input_data_file: x.input_data_file } : x.random_data ? { random_data: true } : { zero_data: true }),
          },
        ]),
      ),
      count: s.count ?? 0,
    })),
  };
}
