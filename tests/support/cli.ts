/** Running the framewire CLI as a child process, the way a user does. */
import { repoRoot } from "./paths.ts";
import { startProcess, type Child } from "./process.ts";

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** `bun <args>` in the checkout; FRAMEWIRE_LOG is pinned so log lines are predictable. */
export function startCli(args: string[], env: Record<string, string | undefined> = {}): Child {
  return startProcess([process.execPath, ...args], { cwd: repoRoot, env: { FRAMEWIRE_LOG: "info", ...env } });
}

/** Runs `bun <args>` to completion (killing it if it outlives `limitMs`, which fails the caller's assertions). */
export async function runCli(args: string[], env: Record<string, string | undefined> = {}, limitMs = 50_000): Promise<CliResult> {
  const child = startCli(args, env);
  const timer = setTimeout(() => void child.stop(500), limitMs);
  const code = await child.exited;
  clearTimeout(timer);
  return { code, stdout: child.stdout(), stderr: child.stderr() };
}
