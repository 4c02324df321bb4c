// The REST client against a scripted fetch: retries keep the idempotency
// key, a proxy's HTML error page is no envelope, Retry-After is honoured.
import { test } from "node:test";
import assert from "node:assert/strict";

import { CollabdClient, CollabdError } from "../dist/src/index.js";

function scripted(answers) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, init, at: Date.now() });
    const next = answers.shift();
    if (next instanceof Error) throw next;
    return new Response(next.body, { status: next.status, headers: next.headers ?? {} });
  };
  return { calls, fetch };
}

const segment = JSON.stringify({ id: "s", draft_id: "d", seq: 7, author_id: "alice", content: "x", idempotency_key: "k", created_at: "" });

test("an append retried after a lost answer and a proxy's 502 page keeps its key, and a replay is reported", async () => {
  const { calls, fetch } = scripted([
    new TypeError("fetch failed"),
    { status: 502, body: "<html>Bad Gateway</html>", headers: { "content-type": "text/html" } },
    { status: 200, body: segment },
  ]);
  const client = new CollabdClient({ baseUrl: "http://api/", token: () => "t", fetch });
  const { segment: appended, replayed } = await client.appendSegment("d", "x");
  assert.equal(appended.seq, 7);
  assert.equal(replayed, true);
  const keys = calls.map((c) => JSON.parse(c.init.body).idempotency_key);
  assert.equal(keys.length, 3);
  assert.ok(keys.every((k) => k === keys[0] && k.length > 0), `one key: ${keys}`);
  assert.equal(calls[0].url, "http://api/v1/collab/drafts/d/segments");
});

test("an envelope's code, status and request id reach the caller; a 4xx is not retried", async () => {
  const { calls, fetch } = scripted([
    { status: 409, body: JSON.stringify({ error: { code: "ring_required", message: "m", request_id: "r1" } }) },
  ]);
  const client = new CollabdClient({ baseUrl: "http://api", token: () => "t", fetch });
  await assert.rejects(client.appendSegment("d", "x"), (e) => {
    assert.ok(e instanceof CollabdError);
    assert.deepEqual([e.code, e.status, e.requestId, e.retryable], ["ring_required", 409, "r1", false]);
    return true;
  });
  assert.equal(calls.length, 1);
});

test("a 429 waits at least its Retry-After before the retry", async () => {
  const { calls, fetch } = scripted([
    { status: 429, body: JSON.stringify({ error: { code: "rate_limited", message: "m", request_id: "r" } }), headers: { "retry-after": "1" } },
    { status: 200, body: JSON.stringify({ items: [] }) },
  ]);
  const client = new CollabdClient({ baseUrl: "http://api", token: () => "t", fetch });
  assert.deepEqual(await client.listDrafts(), []);
  assert.ok(calls[1].at - calls[0].at >= 950, `waited ${calls[1].at - calls[0].at} ms`);
});

test("the token callback is asked for every request", async () => {
  const { calls, fetch } = scripted([
    { status: 200, body: JSON.stringify({ items: [] }) },
    { status: 200, body: JSON.stringify({ items: [] }) },
  ]);
  let n = 0;
  const client = new CollabdClient({ baseUrl: "http://api", token: async () => `t${++n}`, fetch });
  await client.listDrafts();
  await client.listDrafts();
  assert.deepEqual(calls.map((c) => c.init.headers.authorization), ["Bearer t1", "Bearer t2"]);
});

test("a create whose answer was lost is not sent again: it may have happened", async () => {
  const { calls, fetch } = scripted([new TypeError("fetch failed")]);
  const client = new CollabdClient({ baseUrl: "http://api", token: () => "t", fetch });
  await assert.rejects(client.createDraft("Plan"), (e) => e.code === "network");
  assert.equal(calls.length, 1);
});
