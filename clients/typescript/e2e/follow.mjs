// Follows one draft with the client, as an app would, and reports on
// stdout, one line each: `state <state>`, `event <seq>`, `appended <seq>
// <replayed>`. Driven by tests/it/client.rs, which cuts the network under it
// and compares what it reports with the server's log.
//
//   node --experimental-websocket follow.mjs <base url> <draft id> <token>
//
// Reads commands on stdin: `append <content>` appends through the client.
import { createInterface } from "node:readline";

import { CollabdClient } from "../dist/src/index.js";

const [baseUrl, draftId, token] = process.argv.slice(2);
const client = new CollabdClient({ baseUrl, token: () => token });
const say = (line) => process.stdout.write(`${line}\n`);

const watch = client.watch(
  draftId,
  {
    onEvent: (event) => say(`event ${event.seq}`),
    onState: (state, error) => say(`state ${state}${error ? ` ${error.code}` : ""}`),
  },
  { backoff: { initialMs: 50, maxMs: 500 } },
);

for await (const line of createInterface({ input: process.stdin })) {
  const [command, ...rest] = line.split(" ");
  if (command === "append") {
    try {
      const { segment, replayed } = await client.appendSegment(draftId, rest.join(" "));
      say(`appended ${segment.seq} ${replayed}`);
    } catch (e) {
      say(`failed ${e.code}`);
    }
  }
}
watch.close();
