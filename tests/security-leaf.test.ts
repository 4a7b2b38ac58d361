/**
 * The shipped hub/edge configs confine a store: across the leaf link it can
 * neither inject nor read any store's subjects, nor reach the hub's
 * JetStream API (the aggregated stream) — while store-and-forward still works
 * (tests/store-forward.test.ts runs on the same configs).
 */
import { afterAll, expect, test } from "bun:test";
import { client, disposeAllNatsServers, startHubAndEdge } from "./support/jetstream.ts";
import { sleep } from "./support/wait.ts";

afterAll(disposeAllNatsServers);

test("an edge store cannot publish or read retail subjects at the hub, nor use the hub's JetStream API", async () => {
  const { edge, hubUrl, dispose } = await startHubAndEdge();
  const hubNc = await client(hubUrl);
  const edgeNc = await client(edge.url);
  try {
    const atHub: string[] = [];
    const atEdge: string[] = [];
    hubNc.subscribe("retail.>", { callback: (_e, m) => void atHub.push(m.subject) });
    edgeNc.subscribe("retail.>", { callback: (_e, m) => void atEdge.push(m.subject) });
    // A control subject both sides may use proves the link carries traffic at all.
    const crossed: string[] = [];
    hubNc.subscribe("probe.>", { callback: (_e, m) => void crossed.push(m.subject) });
    await hubNc.flush();
    await edgeNc.flush();
    await sleep(500); // interest crosses the leaf link

    edgeNc.publish("retail.store2.cam.events.cross", "{}");
    edgeNc.publish("retail.store1.cam.events.cross", "{}");
    edgeNc.publish("probe.edge", "{}");
    hubNc.publish("retail.store2.cam.events.enter", "{}");
    await edgeNc.flush();
    await hubNc.flush();
    await sleep(500);

    expect(crossed).toEqual(["probe.edge"]);
    // Events reach the hub only through stream sourcing, never as plain subjects.
    expect(atHub).toEqual(["retail.store2.cam.events.enter"]);
    // The edge sees its own local publishes, nothing from the hub.
    expect(atEdge).toEqual(["retail.store2.cam.events.cross", "retail.store1.cam.events.cross"]);
    // The hub's JetStream API (and so the aggregated stream) is out of reach from the edge.
    await expect(edgeNc.request("$JS.hub.API.INFO", "", { timeout: 1000 })).rejects.toThrow();
    await expect(hubNc.request("$JS.hub.API.INFO", "", { timeout: 2000 })).resolves.toBeDefined();
  } finally {
    await edgeNc.close();
    await hubNc.close();
    await dispose();
  }
});
