/**
 * `bun:test` for Deno: deno.json maps the "bun:test" import here, so the
 * same test files run under `deno test`. `expect` is Jest's (npm `expect`,
 * the matchers bun:test copies) plus the Bun-only matchers the tests use.
 *
 * Each test is registered as one top-level Deno.test named
 * "describe > ... > test" rather than as nested steps, so Deno's summary
 * counts tests the way `bun test` does; describe scopes and their hooks run
 * with Bun's semantics (beforeAll before the scope's first test, afterAll
 * after its last, even when a test failed or timed out). Not node:test's
 * `test`: under Deno 2.9 a file that throws after registering one is
 * reported as passing, its remaining tests silently lost. With
 * `deno test --filter`, a scope whose last test is filtered out never runs
 * its afterAll hooks (children from tests/support still die at exit).
 */
import { expect } from "expect";

/** The slice of Deno.test used here (bun-types has no Deno types). */
declare const Deno: {
  test(t: { name: string; fn: () => Promise<void>; ignore?: boolean; sanitizeOps: false; sanitizeResources: false }): void;
};

/** Like `bun test`, ops and resources may outlive a test (servers started in beforeAll, say). */
function denoTest(name: string, fn: () => Promise<void>, ignore = false): void {
  Deno.test({ name, fn, ignore, sanitizeOps: false, sanitizeResources: false });
}

expect.extend({
  toStartWith(received: unknown, prefix: string) {
    const pass = typeof received === "string" && received.startsWith(prefix);
    return { pass, message: () => `expected ${JSON.stringify(received)} ${pass ? "not " : ""}to start with ${JSON.stringify(prefix)}` };
  },
  toEndWith(received: unknown, suffix: string) {
    const pass = typeof received === "string" && received.endsWith(suffix);
    return { pass, message: () => `expected ${JSON.stringify(received)} ${pass ? "not " : ""}to end with ${JSON.stringify(suffix)}` };
  },
});

export { expect };

type Fn = () => unknown;

interface Scope {
  name: string;
  parent?: Scope;
  beforeAll: Fn[];
  afterAll: Fn[];
  beforeEach: Fn[];
  afterEach: Fn[];
  /** Tests of this scope (nested ones included) that have not finished yet. */
  pending: number;
  /** The beforeAll hooks' run, shared by every test of the scope. */
  setup?: Promise<void>;
}

const newScope = (name: string, parent?: Scope): Scope => ({ name, parent, beforeAll: [], afterAll: [], beforeEach: [], afterEach: [], pending: 0 });

/** The file is the root scope (each test file runs in its own isolate under `deno test`). */
let current = newScope("");
/** As `bun test --timeout 60000` in package.json and scripts/test.sh. */
let defaultTimeout = 60_000;

export function setDefaultTimeout(ms: number): void {
  defaultTimeout = ms;
}

/** Resolves once `fn()` has, or rejects once `ms` have passed (the late run keeps going, as in Bun). */
async function withTimeout(fn: Fn, ms: number, what: string): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  try {
    await Promise.race([Promise.resolve().then(fn), late]);
  } finally {
    clearTimeout(timer);
  }
}

function chainOf(scope: Scope): Scope[] {
  const chain: Scope[] = [];
  for (let s: Scope | undefined = scope; s; s = s.parent) chain.unshift(s);
  return chain;
}

const fullName = (chain: Scope[], name: string) => [...chain.slice(1).map((s) => s.name), name].join(" > ");

function register(name: string, fn: Fn, timeout: number | { timeout?: number } | undefined): void {
  const ms = (typeof timeout === "number" ? timeout : timeout?.timeout) ?? defaultTimeout;
  const chain = chainOf(current);
  for (const s of chain) s.pending++;
  denoTest(fullName(chain, name), async () => {
    const errors: unknown[] = [];
    const attempt = async (f: Fn, what: string) => {
      try {
        await withTimeout(f, ms, what);
      } catch (err) {
        errors.push(err);
      }
    };
    try {
      for (const s of chain) {
        s.setup ??= (async () => {
          for (const h of s.beforeAll) await withTimeout(h, ms, "beforeAll hook");
        })();
        await s.setup;
      }
      for (const s of chain) for (const h of s.beforeEach) await withTimeout(h, ms, "beforeEach hook");
      await withTimeout(fn, ms, `test "${name}"`);
    } catch (err) {
      errors.push(err);
    }
    for (const s of [...chain].reverse()) for (const h of s.afterEach) await attempt(h, "afterEach hook");
    for (const s of [...chain].reverse()) {
      if (--s.pending === 0) for (const h of s.afterAll) await attempt(h, "afterAll hook");
    }
    if (errors.length > 0) throw errors[0];
  });
}

/** Shown as "ignored" in Deno's summary; its hooks do not wait for it. */
function skip(name: string): void {
  denoTest(fullName(chainOf(current), name), async () => {}, true);
}

/** Bun's `test(name, fn, timeoutMs?)` and `test.skipIf(cond)(name, fn)`. */
export const test = Object.assign((name: string, fn: Fn, timeout?: number | { timeout?: number }) => register(name, fn, timeout), {
  skipIf: (cond: unknown) => (cond ? (name: string, _fn?: Fn) => skip(name) : test),
});
export const it = test;

export function describe(name: string, body: () => void): void {
  const outer = current;
  current = newScope(name, outer);
  try {
    body();
  } finally {
    current = outer;
  }
}

export const beforeAll = (fn: Fn) => void current.beforeAll.push(fn);
export const afterAll = (fn: Fn) => void current.afterAll.push(fn);
export const beforeEach = (fn: Fn) => void current.beforeEach.push(fn);
export const afterEach = (fn: Fn) => void current.afterEach.push(fn);
