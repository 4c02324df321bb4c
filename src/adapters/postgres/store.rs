//! The Postgres store. A mutation is one transaction: lock the draft's row
//! (`FOR UPDATE`), read its collaborators and the segment already appended
//! with the idempotency key, let the rules decide, then write the change, its
//! event and the new head together. Concurrent writers on any replica queue
//! on the row lock, so seq n always commits before n+1.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::Row;
use tracing::instrument;
use uuid::Uuid;

use super::{db_error, Db};
use crate::collab::model::{
    now, Change, Collaborator, Decision, Draft, DraftSnapshot, Event, EventType, Outcome, Role,
    Segment,
};
use crate::collab::validate::Page;
use crate::error::Error;
use crate::ports::{Decide, Store, StoreCounts};
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

fn seq_of(value: i64) -> u64 {
    value.max(0) as u64
}

fn role_of(text: &str) -> Result<Role, Error> {
    match text {
        "owner" => Ok(Role::Owner),
        "editor" => Ok(Role::Editor),
        "viewer" => Ok(Role::Viewer),
        other => Err(Error::internal(format!(
            "unknown role {other:?} in collaborators"
        ))),
    }
}

fn draft_from(row: &Row) -> Result<Draft, Error> {
    let user_ids: Vec<String> = row.get("user_ids");
    let roles: Vec<String> = row.get("roles");
    let collaborators = user_ids
        .into_iter()
        .zip(roles)
        .map(|(user_id, role)| {
            Ok(Collaborator {
                user_id,
                role: role_of(&role)?,
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(Draft {
        id: row.get("id"),
        title: row.get("title"),
        owner_id: row.get("owner_id"),
        ring_holder: row.get("ring_holder"),
        collaborators,
        seq: seq_of(row.get("seq")),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

fn segment_from(row: &Row) -> Segment {
    Segment {
        id: row.get("id"),
        draft_id: row.get("draft_id"),
        seq: seq_of(row.get("seq")),
        author_id: row.get("author_id"),
        content: row.get("content"),
        idempotency_key: row.get("idempotency_key"),
        created_at: row.get("created_at"),
    }
}

fn event_type_of(text: &str) -> Result<EventType, Error> {
    match text {
        "segment_appended" => Ok(EventType::SegmentAppended),
        "ring_passed" => Ok(EventType::RingPassed),
        "collaborator_added" => Ok(EventType::CollaboratorAdded),
        other => Err(Error::internal(format!(
            "unknown event type {other:?} in events"
        ))),
    }
}

fn event_from(row: &Row) -> Result<Event, Error> {
    Ok(Event {
        event_type: event_type_of(row.get("type"))?,
        draft_id: row.get("draft_id"),
        seq: seq_of(row.get("seq")),
        request_id: row.get("request_id"),
        ts: row.get("ts"),
        data: row.get("data"),
    })
}

async fn load_draft(client: &impl GenericClient, id: Uuid) -> Result<Option<Draft>, Error> {
    let sql = format!("{DRAFT_SELECT} WHERE d.id = $1 GROUP BY d.id");
    let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
    let row = client
        .query_opt(&statement, &[&id])
        .await
        .map_err(db_error)?;
    row.as_ref().map(draft_from).transpose()
}

#[async_trait]
impl Store for PostgresStore {
    #[instrument(skip_all, fields(draft_id = %draft.id))]
    async fn create_draft(&self, draft: &Draft) -> Result<(), Error> {
        self.db
            .timed("create_draft", async {
                let mut client = self.db.conn().await?;
                let tx = client.transaction().await.map_err(db_error)?;
                tx.execute(
                "INSERT INTO drafts (id, title, owner_id, ring_holder, seq, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, 0, $5, $6)",
                &[
                    &draft.id,
                    &draft.title,
                    &draft.owner_id,
                    &draft.ring_holder,
                    &draft.created_at,
                    &draft.updated_at,
                ],
            )
            .await
            .map_err(db_error)?;
                for (position, c) in draft.collaborators.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO collaborators (draft_id, user_id, role, position, added_at)
                     VALUES ($1, $2, $3, $4, $5)",
                        &[
                            &draft.id,
                            &c.user_id,
                            &c.role.as_str(),
                            &(position as i32),
                            &draft.created_at,
                        ],
                    )
                    .await
                    .map_err(db_error)?;
                }
                tx.commit().await.map_err(db_error)
            })
            .await
    }

    #[instrument(skip_all, fields(draft_id = %id))]
    async fn get_draft(&self, id: Uuid) -> Result<Option<Draft>, Error> {
        self.db
            .timed("get_draft", async {
                let client = self.db.conn().await?;
                load_draft(&client, id).await
            })
            .await
    }

    #[instrument(skip_all)]
    async fn drafts_for_user(&self, user_id: &str) -> Result<Vec<Draft>, Error> {
        self.db
            .timed("drafts_for_user", async {
                let client = self.db.conn().await?;
                let sql = format!(
                    "{DRAFT_SELECT}
                 WHERE d.id IN (SELECT draft_id FROM collaborators WHERE user_id = $1)
                 GROUP BY d.id
                 ORDER BY d.created_at, d.id"
                );
                let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
                let rows = client
                    .query(&statement, &[&user_id])
                    .await
                    .map_err(db_error)?;
                rows.iter().map(draft_from).collect()
            })
            .await
    }

    #[instrument(skip_all, fields(draft_id = %draft_id))]
    async fn segments(&self, draft_id: Uuid, page: Page) -> Result<Vec<Segment>, Error> {
        self.db
            .timed("segments", async {
                let client = self.db.conn().await?;
                let sql = format!(
                    "SELECT {SEGMENT_COLUMNS} FROM segments
                  WHERE draft_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                );
                let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
                let after = page.after.min(i64::MAX as u64) as i64;
                let rows = client
                    .query(&statement, &[&draft_id, &after, &(page.limit as i64)])
                    .await
                    .map_err(db_error)?;
                Ok(rows.iter().map(segment_from).collect())
            })
            .await
    }

    #[instrument(skip_all, fields(draft_id = %draft_id))]
    async fn events(&self, draft_id: Uuid, page: Page) -> Result<Vec<Event>, Error> {
        self.db
            .timed("events", async {
                let client = self.db.conn().await?;
                let statement = client
                    .prepare_cached(
                        "SELECT draft_id, seq, type, request_id, ts, data FROM events
                      WHERE draft_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    )
                    .await
                    .map_err(db_error)?;
                let after = page.after.min(i64::MAX as u64) as i64;
                let rows = client
                    .query(&statement, &[&draft_id, &after, &(page.limit as i64)])
                    .await
                    .map_err(db_error)?;
                rows.iter().map(event_from).collect()
            })
            .await
    }

    #[instrument(skip_all, fields(draft_id = %draft_id))]
    async fn mutate(
        &self,
        draft_id: Uuid,
        idempotency_key: Option<&str>,
        request_id: &str,
        decide: Decide<'_>,
    ) -> Result<Outcome, Error> {
        self.db.timed("mutate", async {
            let mut client = self.db.conn().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            let lock = tx
                .prepare_cached("SELECT segment_count FROM drafts WHERE id = $1 FOR UPDATE")
                .await
                .map_err(db_error)?;
            let segment_count = match tx.query_opt(&lock, &[&draft_id]).await.map_err(db_error)? {
                Some(row) => seq_of(row.get(0)),
                None => return Err(Error::NotFound("draft not found".into())),
            };
            let draft = load_draft(&tx, draft_id)
                .await?
                .ok_or_else(|| Error::NotFound("draft not found".into()))?;
            let replay = match idempotency_key {
                Some(key) => {
                    let sql = format!(
                        "SELECT {SEGMENT_COLUMNS} FROM segments
                          WHERE draft_id = $1 AND idempotency_key = $2"
                    );
                    let statement = tx.prepare_cached(&sql).await.map_err(db_error)?;
                    let row = tx.query_opt(&statement, &[&draft_id, &key]).await.map_err(db_error)?;
                    row.as_ref().map(segment_from)
                }
                None => None,
            };
            let snapshot = DraftSnapshot {
                draft,
                segment_count,
                replay,
            };
            let change = match decide(&snapshot)? {
                // Nothing written: the transaction ends by rolling back.
                Decision::Replay(segment) => return Ok(Outcome::Replayed(segment)),
                Decision::Unchanged => return Ok(Outcome::Unchanged(snapshot.draft)),
                Decision::Apply(change) => change,
            };
            let mut draft = snapshot.draft;
            let seq = draft.seq + 1;
            let ts = now();
            let (event, segment) = change.materialize(draft_id, seq, request_id, ts);
            let seq_i = seq as i64;
            match &change {
                Change::AppendSegment { .. } => {
                    let s = segment.as_ref().expect("appends make a segment");
                    tx.execute(
                        "INSERT INTO segments (id, draft_id, seq, author_id, content, idempotency_key, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        &[&s.id, &draft_id, &seq_i, &s.author_id, &s.content, &s.idempotency_key, &ts],
                    )
                    .await
                    .map_err(db_error)?;
                }
                Change::AddCollaborator { user_id, role } => {
                    tx.execute(
                        "INSERT INTO collaborators (draft_id, user_id, role, position, added_at)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[&draft_id, user_id, &role.as_str(), &(draft.collaborators.len() as i32), &ts],
                    )
                    .await
                    .map_err(db_error)?;
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
                &[&draft_id, &seq_i, &draft.ring_holder, &ts, &(segment_count as i64)],
            )
            .await
            .map_err(db_error)?;
            tx.execute(
                "INSERT INTO events (draft_id, seq, type, request_id, ts, data)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&draft_id, &seq_i, &event.event_type.as_str(), &event.request_id, &ts, &event.data],
            )
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            Ok(Outcome::Applied {
                draft: Box::new(draft),
                event,
                segment,
                segment_count,
            })
        })
        .await
    }

    async fn counts(&self) -> Result<StoreCounts, Error> {
        self.db
            .timed("counts", async {
                let client = self.db.conn().await?;
                let row = client
                    .query_one(
                        "SELECT count(*), coalesce(sum(segment_count), 0)::bigint FROM drafts",
                        &[],
                    )
                    .await
                    .map_err(db_error)?;
                Ok(StoreCounts {
                    drafts: seq_of(row.get(0)),
                    segments: seq_of(row.get(1)),
                })
            })
            .await
    }

    async fn ping(&self) -> Result<(), Error> {
        self.db
            .timed("ping", async {
                let client = self.db.conn().await?;
                client.simple_query("SELECT 1").await.map_err(db_error)?;
                Ok(())
            })
            .await
    }
}
