-- collabd schema, version 1: drafts, their collaborators, segments, the
-- per-draft ordered event log, and audit rows.

CREATE TABLE drafts (
    id            uuid        PRIMARY KEY,
    title         text        NOT NULL,
    owner_id      text        NOT NULL,
    ring_holder   text        NOT NULL,
    -- Head of the event log: the seq of the latest event, 0 when new.
    seq           bigint      NOT NULL DEFAULT 0 CHECK (seq >= 0),
    -- Kept with the head so the soft cap needs no COUNT(*).
    segment_count bigint      NOT NULL DEFAULT 0 CHECK (segment_count >= 0),
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

CREATE TABLE collaborators (
    draft_id  uuid        NOT NULL REFERENCES drafts (id) ON DELETE CASCADE,
    user_id   text        NOT NULL,
    role      text        NOT NULL CHECK (role IN ('owner', 'editor', 'viewer')),
    -- Join order, the owner first: the order the API lists them in.
    position  integer     NOT NULL,
    added_at  timestamptz NOT NULL,
    PRIMARY KEY (draft_id, user_id),
    UNIQUE (draft_id, position)
);

-- "Drafts I collaborate on".
CREATE INDEX collaborators_user_idx ON collaborators (user_id, draft_id);

CREATE TABLE segments (
    id              uuid        PRIMARY KEY,
    draft_id        uuid        NOT NULL REFERENCES drafts (id) ON DELETE CASCADE,
    seq             bigint      NOT NULL CHECK (seq > 0),
    author_id       text        NOT NULL,
    content         text        NOT NULL,
    idempotency_key text,
    created_at      timestamptz NOT NULL,
    -- Paging by seq, and at most one segment per event.
    UNIQUE (draft_id, seq)
);

-- Exactly-once appends: one segment per key per draft, cluster-wide.
CREATE UNIQUE INDEX segments_idempotency_idx
    ON segments (draft_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE events (
    draft_id   uuid        NOT NULL REFERENCES drafts (id) ON DELETE CASCADE,
    seq        bigint      NOT NULL CHECK (seq > 0),
    type       text        NOT NULL,
    request_id text        NOT NULL,
    ts         timestamptz NOT NULL,
    data       jsonb       NOT NULL,
    -- The ordered log: replay and paging read it by (draft_id, seq).
    PRIMARY KEY (draft_id, seq)
);

CREATE TABLE audit_events (
    id         uuid        PRIMARY KEY,
    ts         timestamptz NOT NULL,
    request_id text        NOT NULL,
    user_id    text        NOT NULL,
    action     text        NOT NULL,
    draft_id   uuid,
    metadata   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    ip         text,
    user_agent text
);

CREATE INDEX audit_events_ts_idx ON audit_events (ts);
CREATE INDEX audit_events_request_idx ON audit_events (request_id);
CREATE INDEX audit_events_draft_idx ON audit_events (draft_id, ts) WHERE draft_id IS NOT NULL;
CREATE INDEX audit_events_user_idx ON audit_events (user_id, ts);
