import { describe, expect, test } from "bun:test";
import { Inbox } from "../runtime/core/inbox.ts";
import { MemoryBus } from "../runtime/bus/memory.ts";
import type { Message } from "../runtime/core/message.ts";
import { checkSubject, subjectMatches } from "../runtime/core/subject.ts";
import { makeEvent, makeFrame, tick } from "./support/frames.ts";

describe("subjects", () => {
  test("`*` matches exactly one token", () => {
    expect(subjectMatches("fw.demo.*", "fw.demo.cam")).toBe(true);
    expect(subjectMatches("fw.*.cam", "fw.demo.cam")).toBe(true);
    expect(subjectMatches("fw.demo.*", "fw.demo")).toBe(false);
    expect(subjectMatches("fw.demo.*", "fw.demo.cam.extra")).toBe(false);
  });

  test("`>` matches one or more trailing tokens", () => {
    expect(subjectMatches("fw.>", "fw.demo")).toBe(true);
    expect(subjectMatches("fw.>", "fw.demo.cam.x")).toBe(true);
    expect(subjectMatches("fw.>", "fw")).toBe(false);
    expect(subjectMatches("fw.>", "other.demo")).toBe(false);
    // Only as the last token.
    expect(subjectMatches("fw.>.cam", "fw.demo.cam")).toBe(false);
  });

  test("literal tokens must match exactly", () => {
    expect(subjectMatches("fw.demo.cam", "fw.demo.cam")).toBe(true);
    expect(subjectMatches("fw.demo.cam", "fw.demo.ca")).toBe(false);
    expect(subjectMatches("fw.demo", "fw.demo.cam")).toBe(false);
  });

  test("subject validation", () => {
    expect(checkSubject("fw.demo.cam", false)).toBeUndefined();
    expect(checkSubject("fw.*.cam", true)).toBeUndefined();
    expect(checkSubject("fw.>", true)).toBeUndefined();
    expect(checkSubject("fw.*", false)).toContain("invalid subject");
    expect(checkSubject("fw..cam", true)).toContain("token 2");
    expect(checkSubject("fw.>.cam", true)).toContain("invalid subject");
    expect(checkSubject("has space", false)).toContain("invalid subject");
  });
});

describe("memory bus", () => {
  test("fans out to every matching subscriber, by reference", async () => {
    const bus = new MemoryBus();
    const got: Record<string, Message[]> = { exact: [], star: [], tail: [], other: [] };
    bus.subscribe("fw.demo.cam", (m) => void got.exact.push(m));
    bus.subscribe("fw.demo.*", (m) => void got.star.push(m));
    bus.subscribe("fw.>", (m) => void got.tail.push(m));
    bus.subscribe("fw.other.*", (m) => void got.other.push(m));
    const f = makeFrame(0);
    await bus.publish("fw.demo.cam", f);
    expect(got.exact).toEqual([f]);
    expect(got.star[0]).toBe(f);
    expect(got.tail[0]).toBe(f);
    expect(got.other).toHaveLength(0);
    await bus.close();
  });

  test("a subscription added later sees later messages; unsubscribe stops delivery", async () => {
    const bus = new MemoryBus();
    const a: number[] = [];
    const b: number[] = [];
    const subA = bus.subscribe("x.>", (m) => void a.push(m.seq));
    await bus.publish("x.y", makeFrame(0));
    bus.subscribe("x.y", (m) => void b.push(m.seq));
    await bus.publish("x.y", makeFrame(1));
    subA.unsubscribe();
    await bus.publish("x.y", makeFrame(2));
    expect(a).toEqual([0, 1]);
    expect(b).toEqual([1, 2]);
    await bus.close();
  });

  test("publish waits for every subscriber's promise (backpressure)", async () => {
    const bus = new MemoryBus();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const fast: number[] = [];
    bus.subscribe("s", () => gate);
    bus.subscribe("s", (m) => void fast.push(m.seq));
    let published = false;
    const p = bus.publish("s", makeFrame(0)).then(() => (published = true));
    await tick();
    expect(fast).toEqual([0]);
    expect(published).toBe(false);
    release();
    await p;
    expect(published).toBe(true);
    await bus.close();
  });

  test("publishing after close is an error, not a silent loss", async () => {
    const bus = new MemoryBus();
    await bus.close();
    await expect(bus.publish("s", makeFrame(0))).rejects.toThrow("closed");
  });
});

describe("inbox", () => {
  test("live frames: a full inbox drops the oldest, counts it and never blocks", async () => {
    const dropped: number[] = [];
    const inbox = new Inbox(3, (m) => dropped.push(m.seq));
    for (let i = 0; i < 10; i++) expect(inbox.push(makeFrame(i, { live: true }))).toBeUndefined();
    expect(inbox.size).toBe(3);
    expect(inbox.dropped).toBe(7);
    expect(dropped).toEqual([0, 1, 2, 3, 4, 5, 6]);
    const kept = [(await inbox.take())!.seq, (await inbox.take())!.seq, (await inbox.take())!.seq];
    expect(kept).toEqual([7, 8, 9]);
  });

  test("file frames: a full inbox blocks the pusher instead of dropping", async () => {
    const inbox = new Inbox(2);
    inbox.push(makeFrame(0));
    inbox.push(makeFrame(1));
    let queued = false;
    const third = Promise.resolve(inbox.push(makeFrame(2))).then(() => (queued = true));
    await tick();
    expect(queued).toBe(false);
    expect(inbox.size).toBe(2);
    expect((await inbox.take())!.seq).toBe(0);
    await third;
    expect(queued).toBe(true);
    expect([(await inbox.take())!.seq, (await inbox.take())!.seq]).toEqual([1, 2]);
    expect(inbox.dropped).toBe(0);
  });

  test("events are never dropped, and a live frame never evicts one", async () => {
    const inbox = new Inbox(2);
    inbox.push(makeEvent(0));
    inbox.push(makeEvent(1));
    // Full of events: a live frame must wait too (nothing droppable to evict).
    const waits = [inbox.push(makeEvent(2)), inbox.push(makeFrame(3, { live: true }))];
    expect(waits.every((w) => w instanceof Promise)).toBe(true);
    const seen: string[] = [];
    for (let i = 0; i < 4; i++) {
      const m = (await inbox.take())!;
      seen.push(`${m.kind}${m.seq}`);
    }
    await Promise.all(waits);
    expect(seen.sort()).toEqual(["event0", "event1", "event2", "frame3"]);
    expect(inbox.dropped).toBe(0);
  });

  test("a live frame evicts the oldest live frame, not a queued event", async () => {
    const inbox = new Inbox(3);
    inbox.push(makeEvent(0));
    inbox.push(makeFrame(1, { live: true }));
    inbox.push(makeFrame(2, { live: true }));
    inbox.push(makeFrame(3, { live: true }));
    expect(inbox.dropped).toBe(1);
    const order = [];
    for (let i = 0; i < 3; i++) order.push((await inbox.take())!.seq);
    expect(order).toEqual([0, 2, 3]);
  });

  test("a waiting taker gets the next push directly; close ends takers after the queue", async () => {
    const inbox = new Inbox(1);
    const waiting = inbox.take();
    inbox.push(makeFrame(5));
    expect((await waiting)!.seq).toBe(5);
    inbox.push(makeFrame(6));
    const pending = inbox.take();
    inbox.close();
    expect((await pending)!.seq).toBe(6);
    expect(await inbox.take()).toBeUndefined();
    expect(() => inbox.push(makeFrame(7))).toThrow("closed");
  });

  test("through the bus: a slow consumer of a live subject loses frames, of a file subject none", async () => {
    const bus = new MemoryBus();
    const live = new Inbox(2);
    const file = new Inbox(2);
    bus.subscribe("live", (m) => live.push(m));
    bus.subscribe("file", (m) => file.push(m));
    // The consumer takes one message per macrotask: far slower than the producer.
    const consume = async (inbox: Inbox) => {
      const seqs: number[] = [];
      for (let m = await inbox.take(); m; m = await inbox.take()) {
        seqs.push(m.seq);
        await tick();
      }
      return seqs;
    };

    const liveSeen = consume(live);
    for (let i = 0; i < 50; i++) await bus.publish("live", makeFrame(i, { live: true }));
    while (live.size) await tick();
    live.close();
    const l = await liveSeen;
    expect(live.dropped).toBeGreaterThan(40);
    expect(l.length + live.dropped).toBe(50);
    // What survives is in order and ends with the newest frame.
    expect(l).toEqual([...l].sort((a, b) => a - b));
    expect(l.at(-1)).toBe(49);

    const fileSeen = consume(file);
    for (let i = 0; i < 50; i++) await bus.publish("file", makeFrame(i));
    while (file.size) await tick();
    file.close();
    expect(await fileSeen).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(file.dropped).toBe(0);
    await bus.close();
  });
});
