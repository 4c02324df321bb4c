// The collabd client: one typed method per REST route, appends that are
// exactly-once across retries, and `watch` for live events.

import { CollabdError } from "./errors.js";
import type { paths } from "./openapi.js";
import type { Collaborator, CollabEvent, Draft, Role, Segment } from "./types.js";
import { Watch, type WatchHandlers, type WatchOptions, type WebSocketConstructor } from "./watch.js";

export interface ClientOptions {
  /** The API's origin, e.g. `https://collab.example.com` or `http://127.0.0.1:3000`. */
  baseUrl: string;
  /** Returns a bearer token; asked before every request and every join, so it may refresh. */
  token: () => string | Promise<string>;
  /** The platform's by default (browsers, Node >= 22; Node 20 with --experimental-websocket). */
  WebSocket?: WebSocketConstructor;
  fetch?: typeof fetch;
  /** How often a retryable request (network lost, 502-504, 429) is tried again. Default 5. */
  retries?: number;
  /** How long one request may take before it counts as lost. Default 10 s. */
  timeoutMs?: number;
}

/**
 * Which failures a request may be retried on. Reads and keyed appends are
 * safe to send again; a create, a ring pass or an added collaborator whose
 * answer was lost may have happened, so only a 429 (refused, not done) is
 * retried for them.
 */
type Retry = "safe" | "rate_limit_only";

/** A page of a list route. */
export interface PageQuery {
  after?: number;
  limit?: number;
}

/** An append's answer: the segment, and whether a retry found it already committed. */
export interface Appended {
  segment: Segment;
  replayed: boolean;
}

type Body<P extends keyof paths, M extends "post"> = paths[P][M] extends {
  requestBody?: { content: { "application/json": infer B } };
}
  ? B
  : never;

export class CollabdClient {
  private readonly base: string;
  private readonly fetcher: typeof fetch;
  private readonly retries: number;
  private readonly timeoutMs: number;

  constructor(private readonly options: ClientOptions) {
    this.base = options.baseUrl.replace(/\/+$/, "");
    this.fetcher = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.retries = options.retries ?? 5;
    this.timeoutMs = options.timeoutMs ?? 10_000;
  }

  createDraft(title: string): Promise<Draft> {
    const body: Body<"/v1/collab/drafts", "post"> = { title };
    return this.call<Draft>("POST", "/v1/collab/drafts", body, "rate_limit_only");
  }

  async listDrafts(): Promise<Draft[]> {
    return (await this.call<{ items: Draft[] }>("GET", "/v1/collab/drafts")).items;
  }

  getDraft(draftId: string): Promise<Draft> {
    return this.call<Draft>("GET", `/v1/collab/drafts/${encodeURIComponent(draftId)}`);
  }

  async listSegments(draftId: string, page: PageQuery = {}): Promise<Segment[]> {
    const path = `/v1/collab/drafts/${encodeURIComponent(draftId)}/segments${query(page)}`;
    return (await this.call<{ items: Segment[] }>("GET", path)).items;
  }

  async listEvents(draftId: string, page: PageQuery = {}): Promise<CollabEvent[]> {
    const path = `/v1/collab/drafts/${encodeURIComponent(draftId)}/events${query(page)}`;
    return (await this.call<{ items: CollabEvent[] }>("GET", path)).items;
  }

  /**
   * Appends a segment exactly once: the idempotency key (generated unless
   * given) is sent with every retry, so a retry after a lost answer returns
   * the original (`replayed`) instead of appending twice.
   */
  async appendSegment(
    draftId: string,
    content: string,
    idempotencyKey: string = crypto.randomUUID(),
  ): Promise<Appended> {
    const body: Body<"/v1/collab/drafts/{id}/segments", "post"> = {
      content,
      idempotency_key: idempotencyKey,
    };
    const path = `/v1/collab/drafts/${encodeURIComponent(draftId)}/segments`;
    const { value, status } = await this.send<Segment>("POST", path, body);
    return { segment: value, replayed: status === 200 };
  }

  passRing(draftId: string, toUserId: string): Promise<Draft> {
    const body: Body<"/v1/collab/drafts/{id}/ring/pass", "post"> = { to_user_id: toUserId };
    const path = `/v1/collab/drafts/${encodeURIComponent(draftId)}/ring/pass`;
    return this.call<Draft>("POST", path, body, "rate_limit_only");
  }

  addCollaborator(draftId: string, userId: string, role: Exclude<Role, "owner">): Promise<Draft> {
    const body: Body<"/v1/collab/drafts/{id}/collaborators", "post"> = { user_id: userId, role };
    const path = `/v1/collab/drafts/${encodeURIComponent(draftId)}/collaborators`;
    return this.call<Draft>("POST", path, body, "rate_limit_only");
  }

  /** Who may do what: the draft's collaborators. */
  async collaborators(draftId: string): Promise<Collaborator[]> {
    return (await this.getDraft(draftId)).collaborators;
  }

  /** Watches a draft: every event once, in order, across reconnects. */
  watch(draftId: string, handlers: WatchHandlers, options: WatchOptions = {}): Watch {
    const WebSocketImpl = this.options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (WebSocketImpl === undefined) {
      throw new CollabdError("unsupported", "no WebSocket: pass one in ClientOptions.WebSocket");
    }
    return new Watch(
      draftId,
      handlers,
      {
        socketUrl: async (id, since) => {
          const token = await this.options.token();
          const url = new URL(`${this.base}/v1/collab/drafts/${encodeURIComponent(id)}/ws`);
          url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
          url.searchParams.set("since", String(since));
          // Browsers cannot set headers on a WebSocket.
          url.searchParams.set("access_token", token);
          return url.toString();
        },
        eventsAfter: (id, after) => this.listEvents(id, { after, limit: 1000 }),
        probe: async (id) => {
          await this.once("GET", `/v1/collab/drafts/${encodeURIComponent(id)}`);
        },
        now: () => Date.now(),
        WebSocket: WebSocketImpl,
        random: Math.random,
        setTimeout: (fn, ms) => setTimeout(fn, ms),
        clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
      },
      options,
    );
  }

  private async call<T>(method: string, path: string, body?: unknown, retry: Retry = "safe"): Promise<T> {
    return (await this.send<T>(method, path, body, retry)).value;
  }

  /** One request, retried while the failure allows (same body, same key). */
  private async send<T>(
    method: string,
    path: string,
    body?: unknown,
    retry: Retry = "safe",
  ): Promise<{ value: T; status: number }> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.once<T>(method, path, body);
      } catch (e) {
        const again =
          e instanceof CollabdError &&
          attempt < this.retries &&
          (retry === "safe" ? e.retryable : e.status === 429);
        if (!again) throw e;
        // Full jitter, but never sooner than the server asked.
        const backoff = Math.random() * Math.min(5_000, 200 * 2 ** attempt);
        await new Promise((resolve) => setTimeout(resolve, Math.max(backoff, e.retryAfterMs ?? 0)));
      }
    }
  }

  private async once<T = unknown>(method: string, path: string, body?: unknown): Promise<{ value: T; status: number }> {
    const headers: Record<string, string> = {
      authorization: `Bearer ${await this.options.token()}`,
    };
    if (body !== undefined) headers["content-type"] = "application/json";
    let response: Response;
    try {
      response = await this.fetcher(`${this.base}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (e) {
      throw new CollabdError("network", `request failed: ${String(e)}`);
    }
    let text: string;
    try {
      text = await response.text();
    } catch (e) {
      throw new CollabdError("network", `reading the answer failed: ${String(e)}`);
    }
    // A proxy in front may answer with HTML (a 502 page): that is no envelope.
    let json: unknown;
    try {
      json = text === "" ? undefined : JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (!response.ok) {
      const error = (json as { error?: { code?: string; message?: string; request_id?: string } } | undefined)?.error;
      const retryAfter = Number(response.headers.get("retry-after"));
      throw new CollabdError(
        error?.code ?? "http_error",
        error?.message ?? `HTTP ${response.status}`,
        response.status,
        error?.request_id ?? response.headers.get("x-request-id") ?? undefined,
        Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : undefined,
      );
    }
    if (json === undefined && text !== "") {
      throw new CollabdError("bad_response", `the answer is not JSON (HTTP ${response.status})`, response.status);
    }
    return { value: json as T, status: response.status };
  }
}

function query(page: PageQuery): string {
  const params = new URLSearchParams();
  if (page.after !== undefined) params.set("after", String(page.after));
  if (page.limit !== undefined) params.set("limit", String(page.limit));
  const text = params.toString();
  return text === "" ? "" : `?${text}`;
}
