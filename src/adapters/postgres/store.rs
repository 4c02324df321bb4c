//! The Postgres store. A mutation is one transaction in three named steps:
//! `lock_snapshot` (lock the draft's row `FOR UPDATE`, read its
//! collaborators and the segment already appended with the idempotency key),
//! the rules' `decide`, then `write_change` (the change, its event and the
//! new head together). Concurrent writers on any replica queue on the row
//! lock, so seq n always commits before n+1.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool, Transaction};
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;
use tracing::instrument;
use uuid::Uuid;

use super::Db;
use crate::collab::input::{IdempotencyKey, UserId};
use crate::collab::model::{
    now, Change, Collaborator, Decision, Draft, DraftSnapshot, Event, EventBody, EventType,
    Outcome, Segment,
};
use crate::error::Error;
use crate::ports::{Decide, Page, Store, StoreCounts};
use crate::telemetry::Metrics;

/// A draft row with its collaborators, in join order.
const DRAFT_SELECT: &str = "
    SELECT d.id, d.title, d.owner_id, d.ring_holder, d.seq, d.created_at, d.updated_at,
           array_agg(c.user_id ORDER BY c.position) AS user_ids,
           array_agg(c.role ORDER BY c.position) AS roles
      FROM drafts d
      JOIN collaborators c ON c.draft_id = d.id";

const SEGMENT_COLUMNS: &str = "id, draft_id, seq, author_id, content, idempotency_key, created_at";

#[derive(Clone)]
pub struct PostgresStore {
    db: Db,
}

impl PostgresStore {
    pub fn new(pool: Pool, timeout: Duration, metrics: Metrics) -> Self {
        PostgresStore {
            db: Db::new(pool, timeout, metrics),
        }
    }

    pub fn pool(&self) -> &Pool {
        self.db.pool()
    }
}

/// Seqs and counts are `bigint` columns that the schema keeps at zero or
/// above (CHECK constraints); a negative value cannot be read back.
fn seq_of(value: i64) -> u64 {
    value.max(0) as u64
}

/// A column of a row read back. A row this code cannot read (a NULL where
/// none belongs, a type changed under it) is an internal error: never a
/// panic, and never mistaken for an outage.
fn col<'a, T: FromSql<'a>>(row: &'a Row, name: &str) -> Result<T, Error> {
    row.try_get(name)
        .map_err(|e| Error::internal(format!("postgres: column {name}: {e}")))
}

/// A stored user id, parsed like any other: one that breaks the rules is an
/// internal error.
fn user_of(text: String) -> Result<UserId, Error> {
    UserId::parse(text).map_err(|_| Error::internal("a stored user id is not valid"))
}

fn draft_from(row: &Row) -> Result<Draft, Error> {
    let user_ids: Vec<String> = col(row, "user_ids")?;
    let roles: Vec<String> = col(row, "roles")?;
    let collaborators = user_ids
        .into_iter()
        .zip(roles)
        .map(|(user_id, role)| {
            Ok(Collaborator {
                user_id: user_of(user_id)?,
                role: role.parse()?,
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(Draft {
        id: col(row, "id")?,
        title: col(row, "title")?,
        owner_id: user_of(col(row, "owner_id")?)?,
        ring_holder: user_of(col(row, "ring_holder")?)?,
        collaborators,
        seq: seq_of(col(row, "seq")?),
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    })
}

fn segment_from(row: &Row) -> Result<Segment, Error> {
    let key: Option<String> = col(row, "idempotency_key")?;
    Ok(Segment {
        id: col(row, "id")?,
        draft_id: col(row, "draft_id")?,
        seq: seq_of(col(row, "seq")?),
        author_id: user_of(col(row, "author_id")?)?,
        content: col(row, "content")?,
        idempotency_key: key
            .map(IdempotencyKey::parse)
            .transpose()
            .map_err(|_| Error::internal("a stored idempotency key is not valid"))?,
        created_at: col(row, "created_at")?,
    })
}

fn event_from(row: &Row) -> Result<Event, Error> {
    let event_type: EventType = col::<&str>(row, "type")?.parse()?;
    Ok(Event {
        draft_id: col(row, "draft_id")?,
        seq: seq_of(col(row, "seq")?),
        request_id: col(row, "request_id")?,
        ts: col(row, "ts")?,
        body: EventBody::from_parts(event_type, col(row, "data")?)?,
    })
}

async fn load_draft(client: &impl GenericClient, id: Uuid) -> Result<Option<Draft>, Error> {
    let sql = format!("{DRAFT_SELECT} WHERE d.id = $1 GROUP BY d.id");
    let statement = client.prepare_cached(&sql).await?;
    let row = client.query_opt(&statement, &[&id]).await?;
    row.as_ref().map(draft_from).transpose()
}

/// Step one of a mutation: lock the draft's row and read what the rules
/// decide on. The lock is its own statement because Postgres refuses
/// `FOR UPDATE` on the aggregate that gathers the collaborators.
async fn lock_snapshot(
    tx: &Transaction<'_>,
    draft_id: Uuid,
    idempotency_key: Option<&IdempotencyKey>,
) -> Result<DraftSnapshot, Error> {
    let lock = tx
        .prepare_cached("SELECT segment_count FROM drafts WHERE id = $1 FOR UPDATE")
        .await?;
    let segment_count = match tx.query_opt(&lock, &[&draft_id]).await? {
        Some(row) => seq_of(col(&row, "segment_count")?),
        None => return Err(Error::draft_not_found()),
    };
    let draft = load_draft(tx, draft_id)
        .await?
        .ok_or_else(Error::draft_not_found)?;
    let replay = match idempotency_key {
        Some(key) => {
            let sql = format!(
                "SELECT {SEGMENT_COLUMNS} FROM segments
                  WHERE draft_id = $1 AND idempotency_key = $2"
            );
            let statement = tx.prepare_cached(&sql).await?;
            let row = tx
                .query_opt(&statement, &[&draft_id, &key.as_str()])
                .await?;
            row.as_ref().map(segment_from).transpose()?
        }
        None => None,
    };
    Ok(DraftSnapshot {
        draft,
        segment_count,
        replay,
    })
}

/// Step three: write an accepted change as the draft's next seq (its row,
/// its event and the new head); the caller commits.
async fn write_change(
    tx: &Transaction<'_>,
    snapshot: DraftSnapshot,
    change: &Change,
    request_id: &str,
) -> Result<Outcome, Error> {
    let DraftSnapshot {
        mut draft,
        segment_count,
        ..
    } = snapshot;
    let draft_id = draft.id;
    let seq = draft.seq + 1;
    let ts = now();
    let (event, segment) = change.materialize(draft_id, seq, request_id, ts);
    let seq_i = seq as i64;
    match change {
        Change::AppendSegment { .. } => {
            let s = segment.as_ref().expect("appends make a segment");
            let key = s.idempotency_key.as_ref().map(IdempotencyKey::as_str);
            tx.execute(
                "INSERT INTO segments (id, draft_id, seq, author_id, content, idempotency_key, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&s.id, &draft_id, &seq_i, &s.author_id.as_str(), &s.content, &key, &ts],
            )
            .await?;
        }
        Change::AddCollaborator { user_id, role } => {
            let position = draft.collaborators.len() as i32;
            tx.execute(
                "INSERT INTO collaborators (draft_id, user_id, role, position, added_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&draft_id, &user_id.as_str(), &role.as_str(), &position, &ts],
            )
            .await?;
        }
        Change::PassRing { .. } => {}
    }
    change.apply_to(&mut draft);
    draft.seq = seq;
    draft.updated_at = ts;
    let segment_count = segment_count + u64::from(segment.is_some());
    tx.execute(
        "UPDATE drafts SET seq = $2, ring_holder = $3, updated_at = $4, segment_count = $5
          WHERE id = $1",
        &[
            &draft_id,
            &seq_i,
            &draft.ring_holder.as_str(),
            &ts,
            &(segment_count as i64),
        ],
    )
    .await?;
    tx.execute(
        "INSERT INTO events (draft_id, seq, type, request_id, ts, data)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &draft_id,
            &seq_i,
            &event.event_type().as_str(),
            &event.request_id,
            &ts,
            &event.body.data()?,
        ],
    )
    .await?;
    Ok(Outcome::Applied {
        draft: Box::new(draft),
        event,
        segment,
        segment_count,
    })
}

#[async_trait]
impl Store for PostgresStore {
    #[instrument(skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "create_draft", draft_id = %draft.id))]
    async fn create_draft(&self, draft: &Draft) -> Result<(), Error> {
        self.db
            .timed("create_draft", async {
                let mut client = self.db.conn().await?;
                let tx = client.transaction().await?;
                tx.execute(
                "INSERT INTO drafts (id, title, owner_id, ring_holder, seq, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, 0, $5, $6)",
                &[
                    &draft.id,
                    &draft.title,
                    &draft.owner_id.as_str(),
                    &draft.ring_holder.as_str(),
                    &draft.created_at,
                    &draft.updated_at,
                ],
            )
            .await?;
                for (position, c) in draft.collaborators.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO collaborators (draft_id, user_id, role, position, added_at)
                     VALUES ($1, $2, $3, $4, $5)",
                        &[
                            &draft.id,
                            &c.user_id.as_str(),
                            &c.role.as_str(),
                            &(position as i32),
                            &draft.created_at,
                        ],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            })
            .await
    }

    #[instrument(skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "get_draft", draft_id = %id))]
    async fn get_draft(&self, id: Uuid) -> Result<Option<Draft>, Error> {
        self.db
            .timed("get_draft", async {
                let client = self.db.conn().await?;
                load_draft(&client, id).await
            })
            .await
    }

    #[instrument(skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "drafts_for_user"))]
    async fn drafts_for_user(&self, user_id: &UserId) -> Result<Vec<Draft>, Error> {
        self.db
            .timed("drafts_for_user", async {
                let client = self.db.conn().await?;
                let sql = format!(
                    "{DRAFT_SELECT}
                 WHERE d.id IN (SELECT draft_id FROM collaborators WHERE user_id = $1)
                 GROUP BY d.id
                 ORDER BY d.created_at, d.id"
                );
                let statement = client.prepare_cached(&sql).await?;
                let rows = client.query(&statement, &[&user_id.as_str()]).await?;
                rows.iter().map(draft_from).collect()
            })
            .await
    }

    #[instrument(skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "segments", draft_id = %draft_id))]
    async fn segments(&self, draft_id: Uuid, page: Page) -> Result<Vec<Segment>, Error> {
        self.db
            .timed("segments", async {
                let client = self.db.conn().await?;
                let sql = format!(
                    "SELECT {SEGMENT_COLUMNS} FROM segments
                  WHERE draft_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                );
                let statement = client.prepare_cached(&sql).await?;
                let after = page.after.min(i64::MAX as u64) as i64;
                let rows = client
                    .query(&statement, &[&draft_id, &after, &(page.limit as i64)])
                    .await?;
                rows.iter().map(segment_from).collect()
            })
            .await
    }

    #[instrument(skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "events", draft_id = %draft_id))]
    async fn events(&self, draft_id: Uuid, page: Page) -> Result<Vec<Event>, Error> {
        self.db
            .timed("events", async {
                let client = self.db.conn().await?;
                let statement = client
                    .prepare_cached(
                        "SELECT draft_id, seq, type, request_id, ts, data FROM events
                      WHERE draft_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    )
                    .await?;
                let after = page.after.min(i64::MAX as u64) as i64;
                let rows = client
                    .query(&statement, &[&draft_id, &after, &(page.limit as i64)])
                    .await?;
                rows.iter().map(event_from).collect()
            })
            .await
    }

    #[instrument(skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "heads", drafts = draft_ids.len()))]
    async fn heads(&self, draft_ids: &[Uuid]) -> Result<Vec<(Uuid, u64)>, Error> {
        self.db
            .timed("heads", async {
                let client = self.db.conn().await?;
                let statement = client
                    .prepare_cached("SELECT id, seq FROM drafts WHERE id = ANY($1)")
                    .await?;
                let rows = client.query(&statement, &[&draft_ids]).await?;
                rows.iter()
                    .map(|row| Ok((col(row, "id")?, seq_of(col(row, "seq")?))))
                    .collect()
            })
            .await
    }

    #[instrument(skip_all, fields(otel.kind = "client", db.system.name = "postgresql", db.operation.name = "mutate", draft_id = %draft_id))]
    async fn mutate(
        &self,
        draft_id: Uuid,
        idempotency_key: Option<&IdempotencyKey>,
        request_id: &str,
        decide: Decide<'_>,
    ) -> Result<Outcome, Error> {
        self.db
            .timed("mutate", async {
                let mut client = self.db.conn().await?;
                let tx = client.transaction().await?;
                let snapshot = lock_snapshot(&tx, draft_id, idempotency_key).await?;
                let change = match decide(&snapshot)? {
                    // Nothing written: the transaction ends by rolling back.
                    Decision::Replay(segment) => return Ok(Outcome::Replayed(segment)),
                    Decision::Unchanged => return Ok(Outcome::Unchanged(snapshot.draft)),
                    Decision::Apply(change) => change,
                };
                let outcome = write_change(&tx, snapshot, &change, request_id).await?;
                tx.commit().await?;
                Ok(outcome)
            })
            .await
    }

    async fn counts(&self) -> Result<StoreCounts, Error> {
        self.db
            .timed("counts", async {
                let client = self.db.conn().await?;
                let row = client
                    .query_one(
                        "SELECT count(*) AS drafts,
                                coalesce(sum(segment_count), 0)::bigint AS segments
                           FROM drafts",
                        &[],
                    )
                    .await?;
                Ok(StoreCounts {
                    drafts: seq_of(col(&row, "drafts")?),
                    segments: seq_of(col(&row, "segments")?),
                })
            })
            .await
    }

    async fn ping(&self) -> Result<(), Error> {
        self.db
            .timed("ping", async {
                let client = self.db.conn().await?;
                client.simple_query("SELECT 1").await?;
                Ok(())
            })
            .await
    }
}
