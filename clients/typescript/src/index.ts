export { CollabdClient, type Appended, type ClientOptions, type PageQuery } from "./client.js";
export { CollabdError } from "./errors.js";
export {
  Watch,
  backoffDelay,
  DEFAULT_BACKOFF,
  type Backoff,
  type ConnectionState,
  type SocketLike,
  type WatchDeps,
  type WatchHandlers,
  type WatchOptions,
  type WebSocketConstructor,
} from "./watch.js";
export type { Collaborator, CollabEvent, Draft, ErrorFrame, ReadyFrame, Role, Segment } from "./types.js";
