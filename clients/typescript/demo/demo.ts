// The live demo: open a draft, see segments appear as others append, see
// who holds the ring and the connection's state. Its address carries the
// API's origin and the draft, and the token in the fragment (never sent to
// a server, and removed from the address bar once read):
//   /?api=http://127.0.0.1:8080&draft=<id>&user=alice#token=<jwt>
// `window.collabdDemo.events` lists the seqs delivered, for the browser test.
import { CollabdClient, type CollabEvent, type ConnectionState } from "../src/index.js";

const params = new URLSearchParams(location.search);
const api = params.get("api") ?? location.origin;
const draftId = params.get("draft") ?? "";
const token = new URLSearchParams(location.hash.slice(1)).get("token") ?? "";
history.replaceState(null, "", location.pathname + location.search);
const user = params.get("user") ?? "";

const demo = { events: [] as number[], state: "connecting" as ConnectionState };
(window as unknown as { collabdDemo: typeof demo }).collabdDemo = demo;

const $ = (id: string) => document.getElementById(id) as HTMLElement;
const client = new CollabdClient({ baseUrl: api, token: () => token });

function showRing(holder: string): void {
  $("ring").textContent = holder === user ? `${holder} (you)` : holder;
}

function show(event: CollabEvent): void {
  demo.events.push(event.seq);
  const item = document.createElement("li");
  item.value = event.seq;
  const data = event.data as Record<string, unknown>;
  if (event.type === "segment_appended") {
    const segment = data.segment as { content: string; author_id: string };
    item.textContent = segment.content;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = segment.author_id;
    item.append(who);
  } else if (event.type === "ring_passed") {
    item.className = "system";
    item.textContent = `${String(data.from_user_id)} passed the ring to ${String(data.to_user_id)}`;
    showRing(String(data.to_user_id));
  } else {
    item.className = "system";
    item.textContent = `${String(data.user_id)} joined as ${String(data.role)}`;
  }
  $("log").append(item);
}

async function main(): Promise<void> {
  const draft = await client.getDraft(draftId);
  $("title").textContent = draft.title;
  document.title = `${draft.title} · collabd`;
  showRing(draft.ring_holder);
  client.watch(draftId, {
    onEvent: show,
    onState: (state, error) => {
      demo.state = state;
      $("state").textContent = state;
      $("state").className = `state ${state}`;
      $("error").textContent = error ? `${error.code}: ${error.message}` : "";
    },
  });
  $("append").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = $("content") as HTMLInputElement;
    if (input.value.trim() === "") return;
    try {
      await client.appendSegment(draftId, input.value);
      input.value = "";
      $("error").textContent = "";
    } catch (error) {
      $("error").textContent = String(error);
    }
  });
}

main().catch((error) => {
  $("error").textContent = String(error);
});
