/**
 * Every framewire process on a NATS bus is a NATS micro service (ADR-32,
 * the protocol the NATS CLI's `nats micro` commands speak): service name
 * `framewire`, this package's version, a unique id (the worker id), and one
 * endpoint per local stage with its request counts and processing time.
 * Implemented by the protocol's spec: the @nats-io/services package on npm is
 * a 3.0 prerelease that does not match the @nats-io 3.4 client used here.
 */
import type { Subscription } from "../core/bus.ts";
import type { Executor } from "../engine/executor.ts";
import type { NatsBus } from "../bus/nats.ts";
import { queueGroup, queueSubject, workerSubject } from "../bus/routing.ts";
import pkg from "../../package.json" with { type: "json" };

/** The service name every framewire process registers. */
export const SERVICE_NAME = "framewire";

/** The service's metadata: which pipeline, worker and placement, which stages. */
export function serviceMetadata(exec: Executor): Record<string, string> {
  return {
    pipeline: exec.spec.name,
    worker: exec.workerId,
    placement: exec.placement,
    stages: exec.live().map((s) => s.id).join(","),
  };
}

/**
 * Answers `$SRV.PING|INFO|STATS[.framewire[.<id>]]` for this process.
 * @example
 * const sub = registerService(bus, exec); // `nats micro ls` now lists it
 * sub.unsubscribe();
 */
export function registerService(bus: NatsBus, exec: Executor): Subscription {
  const id = exec.workerId;
  const started = new Date().toISOString();
  const base = () => ({ name: SERVICE_NAME, id, version: pkg.version, metadata: serviceMetadata(exec) });
  const endpoints = () =>
    exec.live().map((s) => {
      const spec = exec.spec.stages.find((x) => x.id === s.id)!;
      const queue = spec.route === "queue";
      return {
        name: s.id,
        subject: queue ? queueSubject(exec.spec.name, s.id) : workerSubject(exec.spec.name, s.id, id),
        queue_group: queue ? queueGroup(exec.spec.name, s.id) : "",
        metadata: { operator: s.operator, kind: s.kind, placement: spec.placement },
        stats: s.stats,
      };
    });
  const replies: Record<string, () => unknown> = {
    PING: () => ({ type: "io.nats.micro.v1.ping_response", ...base() }),
    INFO: () => ({
      type: "io.nats.micro.v1.info_response",
      ...base(),
      description: `framewire pipeline ${exec.spec.name}: stages ${exec.live().map((s) => s.id).join(", ")}`,
      endpoints: endpoints().map(({ stats: _s, ...e }) => e),
    }),
    STATS: () => ({
      type: "io.nats.micro.v1.stats_response",
      ...base(),
      started,
      endpoints: endpoints().map(({ stats, metadata: _m, ...e }) => {
        const ns = Math.round(stats.latency.sum * 1e6);
        return {
          ...e,
          num_requests: stats.received,
          num_errors: stats.failed,
          last_error: stats.lastError ?? "",
          processing_time: ns,
          average_processing_time: stats.latency.count ? Math.round(ns / stats.latency.count) : 0,
          data: { sent: stats.sent, dropped: stats.dropped, p99_ms: stats.latency.quantile(0.99) },
        };
      }),
    }),
  };
  const subs = Object.entries(replies).flatMap(([verb, reply]) =>
    [`$SRV.${verb}`, `$SRV.${verb}.${SERVICE_NAME}`, `$SRV.${verb}.${SERVICE_NAME}.${id}`].map((subject) =>
      bus.nc.subscribe(subject, { callback: (err, m) => void (!err && m.respond(JSON.stringify(reply()))) }),
    ),
  );
  return { unsubscribe: () => subs.forEach((s) => s.unsubscribe()) };
}
