/**
 * CPU and GPU utilisation, sampled on a timer while someone needs it (the
 * HTTP server, an inference log) and read from memory by them: nothing is
 * measured per frame. GPUs are read with `nvidia-smi` where it is installed;
 * elsewhere GPU figures are absent (null), never zero.
 */
import { cpus } from "node:os";
import { cpuTime, spawn, which } from "./index.ts";

export interface GpuSample {
  index: number;
  name: string;
  /** 0..1 */
  utilisation: number;
  memoryUsedBytes: number;
  memoryTotalBytes: number;
}

export interface LoadSample {
  /** This process's CPU time over the last interval, as a share of all cores (0..1). */
  processCpu: number;
  /** The whole host's busy CPU share over the last interval (0..1). */
  hostCpu: number;
  cores: number;
  /** Per GPU, or null where no GPU can be read. */
  gpus: GpuSample[] | null;
}

const CPU_INTERVAL_MS = 1000;
const GPU_INTERVAL_MS = 2000;
const MIB = 1024 * 1024;

/**
 * Parses `nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits`.
 * @example
 * parseNvidiaSmi("0, NVIDIA H200, 37, 1024, 143771\n"); // [{ index: 0, utilisation: 0.37, ... }]
 */
export function parseNvidiaSmi(text: string): GpuSample[] {
  const out: GpuSample[] = [];
  for (const line of text.split("\n")) {
    const f = line.split(",").map((x) => x.trim());
    if (f.length < 5) continue;
    const [index, util, used, total] = [Number(f[0]), Number(f[2]), Number(f[3]), Number(f[4])];
    // "[N/A]" (MIG slices, some drivers) leaves that figure out rather than inventing one.
    if (![index, util, used, total].every(Number.isFinite)) continue;
    out.push({ index, name: f[1], utilisation: util / 100, memoryUsedBytes: used * MIB, memoryTotalBytes: total * MIB });
  }
  return out;
}

function hostTimes(): { busy: number; total: number } {
  let busy = 0;
  let total = 0;
  for (const c of cpus()) {
    const t = c.times;
    busy += t.user + t.nice + t.sys + t.irq;
    total += t.user + t.nice + t.sys + t.irq + t.idle;
  }
  return { busy, total };
}

/**
 * The process-wide sampler. `acquire()` starts it (timers are unref'd, so
 * they never keep a process alive) and returns the matching release.
 * @example
 * const release = hostLoad.acquire();
 * console.log(hostLoad.latest.hostCpu);
 * release();
 */
export class HostLoad {
  latest: LoadSample = { processCpu: 0, hostCpu: 0, cores: Math.max(1, cpus().length), gpus: null };
  private users = 0;
  private timers: ReturnType<typeof setInterval>[] = [];
  private prev = { cpu: 0, at: 0, host: { busy: 0, total: 0 } };
  private gpuBusy = false;

  constructor(private nvidiaSmi: string | undefined = which("nvidia-smi")) {}

  acquire(): () => void {
    if (this.users++ === 0) this.start();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.users === 0) this.stop();
    };
  }

  private start(): void {
    this.prev = { cpu: cpuTime(), at: performance.now(), host: hostTimes() };
    this.timers.push(setInterval(() => this.sampleCpu(), CPU_INTERVAL_MS));
    if (this.nvidiaSmi) {
      void this.sampleGpu();
      this.timers.push(setInterval(() => void this.sampleGpu(), GPU_INTERVAL_MS));
    }
    for (const t of this.timers) (t as { unref?: () => void }).unref?.();
  }

  private stop(): void {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
  }

  private sampleCpu(): void {
    const cpu = cpuTime();
    const at = performance.now();
    const host = hostTimes();
    const p = this.prev;
    const cores = this.latest.cores;
    this.latest = {
      ...this.latest,
      processCpu: Math.min(1, (cpu - p.cpu) / Math.max(1, at - p.at) / cores),
      hostCpu: host.total > p.host.total ? (host.busy - p.host.busy) / (host.total - p.host.total) : 0,
    };
    this.prev = { cpu, at, host };
  }

  private async sampleGpu(): Promise<void> {
    if (this.gpuBusy || !this.nvidiaSmi) return;
    this.gpuBusy = true;
    try {
      const proc = spawn(this.nvidiaSmi, ["--query-gpu=index,name,utilization.gpu,memory.used,memory.total", "--format=csv,noheader,nounits"]);
      // A driver that hangs must not stop sampling for good.
      const timer = setTimeout(() => proc.kill("SIGKILL"), GPU_INTERVAL_MS * 2);
      const [text, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]).finally(() => clearTimeout(timer));
      const gpus = code === 0 ? parseNvidiaSmi(text) : [];
      this.latest = { ...this.latest, gpus: gpus.length ? gpus : null };
    } catch {
      this.latest = { ...this.latest, gpus: null };
    } finally {
      this.gpuBusy = false;
    }
  }
}

/** The sampler shared by everything in this process. */
export const hostLoad = new HostLoad();
