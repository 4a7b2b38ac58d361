/**
 * A headless Chromium for page tests: Debian's chromium (scripts/setup.sh
 * --test installs it) driven by playwright-core, with a fresh profile that
 * is deleted afterwards. Playwright's own browser downloads are never used.
 */
import { chromium, type BrowserContext, type Page } from "playwright-core";
import { existsSync } from "node:fs";
import { tempDir } from "./paths.ts";

/** Where a Chromium binary is, or undefined; FRAMEWIRE_CHROMIUM overrides. */
export function chromiumPath(): string | undefined {
  return [process.env.FRAMEWIRE_CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p): p is string => !!p && existsSync(p));
}

export interface Browser {
  page: Page;
  close(): Promise<void>;
}

/**
 * Opens one page in a fresh headless Chromium.
 * @throws Error when no Chromium is installed (check `chromiumPath()` first).
 */
export async function openBrowser(): Promise<Browser> {
  const executablePath = chromiumPath();
  if (!executablePath) throw new Error("no chromium: run scripts/setup.sh --test (apt-get install chromium)");
  const profile = await tempDir("framewire-chromium-");
  let context: BrowserContext;
  try {
    context = await chromium.launchPersistentContext(profile.path, {
      executablePath,
      headless: true,
      viewport: { width: 1360, height: 820 },
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
    });
  } catch (err) {
    await profile.remove();
    throw err;
  }
  const page = context.pages()[0] ?? (await context.newPage());
  return {
    page,
    async close() {
      await context.close();
      await profile.remove();
    },
  };
}
