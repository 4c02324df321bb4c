// The watch's state machine against a scripted socket and log: duplicates
// dropped, gaps filled from the log, backoff bounded, close codes followed.
import { test } from "node:test";
import assert from "node:assert/strict";

import { CollabdError, Watch, backoffDelay } from "../dist/src/index.js";

const DRAFT = "00000000-0000-0000-0000-000000000001";

function event(seq) {
  return { type: "segment_appended", draft_id: DRAFT, seq, request_id: `r${seq}`, ts: "", data: {} };
}

/** A fake world: sockets the test drives, a log, and timers it runs by hand. */
function world({ log = [], random = () => 0.5, probe = async () => {} } = {}) {
  const sockets = [];
  const timers = [];
  const clock = { now: 0 };
  const urls = [];
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      this.closedWith = undefined;
      sockets.push(this);
    }
    close(code) {
      this.closedWith = code;
    }
    send(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    ready(seq) {
      this.send({ type: "ready", connection_id: "c", draft_id: DRAFT, seq });
    }
    fail() {
      this.onerror?.({});
    }
    end(code, error) {
      if (error) this.send({ type: "error", code: error, message: error });
      this.onclose?.({ code, reason: error ?? "" });
    }
  }
  const deps = {
    socketUrl: async (_id, since) => {
      urls.push(since);
      return `ws://test/?since=${since}`;
    },
    eventsAfter: async (_id, after) => log.filter((e) => e.seq > after),
    probe,
    now: () => clock.now,
    WebSocket: FakeSocket,
    random,
    setTimeout: (fn, ms) => {
      timers.push({ fn, ms });
      return timers.length;
    },
    clearTimeout: () => {},
  };
  return { sockets, timers, urls, deps, log, clock };
}

/** Lets pending promises (token callback, log reads) run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

/** The first socket joins and gets 1, then 3: 2 is missing. */
async function joinedWithAGap(w) {
  await settle();
  w.sockets[0].ready(0);
  w.sockets[0].send(event(1));
  w.sockets[0].send(event(3));
  await settle();
}

function watching(w, options) {
  const seen = [];
  const states = [];
  const watch = new Watch(DRAFT, {
    onEvent: (e) => seen.push(e.seq),
    onState: (s, error) => states.push(error ? `${s}:${error.code}` : s),
  }, w.deps, options);
  return { watch, seen, states };
}

test("events arrive once and in order; duplicates are dropped", async () => {
  const w = world();
  const { seen, watch } = watching(w);
  await settle();
  const socket = w.sockets[0];
  socket.ready(0);
  for (const seq of [1, 2, 2, 1, 3]) socket.send(event(seq));
  assert.deepEqual(seen, [1, 2, 3]);
  assert.equal(watch.state, "open");
  assert.equal(watch.lastSeq, 3);
});

test("a gap is filled from the log before later events are delivered", async () => {
  const w = world({ log: [1, 2, 3, 4, 5].map(event) });
  const { seen } = watching(w);
  await settle();
  const socket = w.sockets[0];
  socket.ready(5);
  socket.send(event(1));
  socket.send(event(4)); // 2 and 3 never came over the socket
  socket.send(event(5));
  await settle();
  await settle();
  assert.deepEqual(seen, [1, 2, 3, 4, 5]);
});

test("a gap the log cannot fill yet is retried after a pause, never skipped", async () => {
  const w = world({ log: [event(1)] });
  const { seen } = watching(w);
  await joinedWithAGap(w);
  assert.deepEqual(seen, [1], "3 waits for 2");
  assert.equal(w.timers.length, 1, "a retry is scheduled");
  w.log.push(event(2));
  w.timers[0].fn();
  await settle();
  await settle();
  assert.deepEqual(seen, [1, 2, 3]);
});

test("a lost connection resumes with since=<last seq> after a jittered backoff", async () => {
  const w = world();
  const { seen, states } = watching(w, { backoff: { initialMs: 100, maxMs: 1000 } });
  await settle();
  w.sockets[0].ready(0);
  w.sockets[0].send(event(1));
  w.sockets[0].send(event(2));
  w.sockets[0].end(1006);
  assert.equal(w.timers.length, 1);
  assert.equal(w.timers[0].ms, 50, "random 0.5 of 100 ms");
  w.timers[0].fn();
  await settle();
  assert.deepEqual(w.urls, [0, 2]);
  w.sockets[1].ready(3);
  w.sockets[1].send(event(2)); // a replay overlapping what was seen
  w.sockets[1].send(event(3));
  assert.deepEqual(seen, [1, 2, 3]);
  assert.deepEqual(states, ["open", "reconnecting", "open"]);
});

test("backoff doubles up to its ceiling and resets once joined", async () => {
  const w = world({ random: () => 0.999 });
  watching(w, { backoff: { initialMs: 100, maxMs: 1000 } });
  await settle();
  for (let i = 0; i < 6; i++) {
    w.sockets.at(-1).end(1006);
    w.timers.at(-1).fn();
    await settle();
  }
  assert.deepEqual(w.timers.map((t) => t.ms), [99, 199, 399, 799, 999, 999]);
  // A socket that stayed open a while resets the backoff; a short one does not.
  w.sockets.at(-1).ready(0);
  w.clock.now += 30_000;
  w.sockets.at(-1).end(1006);
  assert.equal(w.timers.at(-1).ms, 99);
  w.timers.at(-1).fn();
  await settle();
  w.sockets.at(-1).ready(0);
  w.sockets.at(-1).end(1013, "slow_consumer");
  assert.equal(w.timers.at(-1).ms, 199, "closed at once again: the backoff grows");
  assert.equal(backoffDelay(40, { initialMs: 100, maxMs: 1000 }, () => 1), 1000);
});

test("1001 (the replica drains) reconnects at once; 1013 backs off", async () => {
  const w = world();
  watching(w, { backoff: { initialMs: 100, maxMs: 1000 } });
  await settle();
  w.sockets[0].ready(0);
  w.sockets[0].end(1001, "shutdown");
  assert.equal(w.timers[0].ms, 50, "soon: random 0.5 of the initial 100 ms");
  w.timers[0].fn();
  await settle();
  w.sockets[1].end(1013, "slow_consumer");
  assert.ok(w.timers[1].ms > 0);
});

test("1008 stops the watch and surfaces the server's error code", async () => {
  const w = world();
  const { watch, states } = watching(w);
  await settle();
  w.sockets[0].end(1008, "forbidden");
  assert.equal(watch.state, "failed");
  assert.deepEqual(states, ["failed:forbidden"]);
  assert.equal(w.timers.length, 0, "no reconnect");
});

test("close() stops everything, including a pending reconnect", async () => {
  const w = world();
  const { watch, states } = watching(w);
  await settle();
  w.sockets[0].end(1006);
  watch.close();
  w.timers[0].fn();
  await settle();
  assert.equal(w.sockets.length, 1, "no new socket after close");
  assert.deepEqual(states, ["reconnecting", "closed"]);
});

test("a socket that is gone no longer delivers", async () => {
  const w = world();
  const { seen } = watching(w);
  await settle();
  const old = w.sockets[0];
  old.ready(0);
  old.end(1006);
  w.timers[0].fn();
  await settle();
  old.send(event(1)); // a late frame from the dead socket
  assert.deepEqual(seen, []);
});

test("a handshake that fails with an error and no close event is retried", async () => {
  const w = world();
  const { states } = watching(w);
  await settle();
  w.sockets[0].fail();
  w.sockets[0].end(1006); // a close after the error, if the platform sends one, is ignored
  assert.equal(w.timers.length, 1, "one retry, not two");
  w.timers[0].fn();
  await settle();
  w.sockets[1].ready(0);
  assert.deepEqual(states, ["reconnecting", "open"]);
});

test("joins refused before the upgrade are asked about, and a 403 stops the watch", async () => {
  let probes = 0;
  const w = world({
    probe: async () => {
      probes += 1;
      throw new CollabdError("forbidden", "you are not a collaborator", 403);
    },
  });
  const { watch, states } = watching(w);
  for (let i = 0; i < 3; i++) {
    await settle();
    w.sockets.at(-1).end(1006); // a browser sees a refused upgrade as this
    w.timers.at(-1).fn();
  }
  await settle();
  await settle();
  assert.equal(probes, 1);
  assert.equal(watch.state, "failed");
  assert.equal(states.at(-1), "failed:forbidden");
  assert.equal(w.sockets.length, 3, "no fourth join");
});

test("nothing is delivered after close(), from the socket or from a gap fill", async () => {
  let release;
  const w = world();
  w.deps.eventsAfter = () => new Promise((resolve) => (release = resolve));
  const { watch, seen } = watching(w);
  await joinedWithAGap(w); // the fill waits on the log
  watch.close();
  release([event(2), event(3)]);
  await settle();
  w.sockets[0].send(event(4));
  assert.deepEqual(seen, [1]);
  assert.equal(watch.state, "closed");
});

test("a replay over the new socket closes a gap the log has not answered yet", async () => {
  const w = world();
  w.deps.eventsAfter = () => new Promise(() => {}); // the log hangs
  const { seen } = watching(w);
  await joinedWithAGap(w);
  assert.deepEqual(seen, [1]);
  w.sockets[0].send(event(2)); // arrives late over the socket
  await settle();
  assert.deepEqual(seen, [1, 2, 3]);
});
