//! Schema migrations: the SQL files in `migrations/`, compiled in, applied in
//! order in one transaction under a Postgres advisory lock, so replicas that
//! start together do not race. A database whose schema is newer than this
//! binary knows, or whose applied migrations were edited, is refused.

use deadpool_postgres::{Pool, PoolError};

use crate::error::Error;

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration this binary knows, oldest first.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "0001_init",
    sql: include_str!("../../../migrations/0001_init.sql"),
}];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the database schema is at version {database}, newer than this binary's {binary}; run a newer collabd")]
    SchemaNewer { database: i32, binary: i32 },
    #[error("migration {version} was changed after it was applied (checksum {applied} in the database, {binary} here)")]
    Edited {
        version: i32,
        applied: String,
        binary: String,
    },
    #[error("{0}")]
    Database(#[from] Error),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        MigrateError::Database(e.into())
    }
}

impl From<PoolError> for MigrateError {
    fn from(e: PoolError) -> Self {
        MigrateError::Database(e.into())
    }
}

/// A stable fingerprint of a migration's text (FNV-1a), to notice edits.
fn checksum(sql: &str) -> String {
    let hash = sql.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Applies what is missing; returns the versions applied by this call.
pub async fn migrate(pool: &Pool) -> Result<Vec<i32>, MigrateError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Per schema, so databases shared by schema (tests) do not queue on each other.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('collabd.migrate.' || coalesce(current_schema(), '')))",
        &[],
    )
    .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             checksum   text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let applied: Vec<(i32, String)> = tx
        .query(
            "SELECT version, checksum FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let latest = MIGRATIONS.last().map(|m| m.version).unwrap_or(0);
    if let Some(&(newest, _)) = applied.last() {
        if newest > latest {
            return Err(MigrateError::SchemaNewer {
                database: newest,
                binary: latest,
            });
        }
    }
    let mut done = Vec::new();
    for migration in MIGRATIONS {
        let sum = checksum(migration.sql);
        match applied.iter().find(|(v, _)| *v == migration.version) {
            Some((_, recorded)) if *recorded != sum => {
                return Err(MigrateError::Edited {
                    version: migration.version,
                    applied: recorded.clone(),
                    binary: sum,
                })
            }
            Some(_) => continue,
            None => {}
        }
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&migration.version, &migration.name, &sum],
        )
        .await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "migration applied"
        );
        done.push(migration.version);
    }
    tx.commit().await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }

    #[test]
    fn checksums_notice_any_edit() {
        // FNV-1a's published vectors: the empty string is the offset basis.
        assert_eq!(checksum(""), "cbf29ce484222325");
        assert_eq!(checksum("a"), "af63dc4c8601ec8c");
        assert_ne!(
            checksum("CREATE TABLE a ();"),
            checksum("CREATE TABLE a ( );")
        );
    }
}
