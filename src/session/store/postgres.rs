//! The session store on Postgres: one row per session in `prism_sessions`,
//! admissions serialized per namespace by a transaction-scoped advisory
//! lock, ends announced with `NOTIFY prism_sessions`.

use std::time::Duration;

use futures::stream::BoxStream;
use sqlx::{postgres::PgPoolOptions, PgPool, Row};
use tokio::sync::OnceCell;

use super::{
    bounded, reason_code, reason_from_code, unavailable, Admission, EndNotice, EndOutcome, Limits,
    SessionStore, Standing, StoredSession, Swept, Topic,
};
use crate::{
    error::Error,
    session::{token::TokenDigest, EndReason},
};

/// The channel every instance listens on.
const CHANNEL: &str = "prism_sessions";

/// The NOTIFY channel of a topic.
fn channel(topic: Topic) -> &'static str {
    match topic {
        Topic::SessionEnds => CHANNEL,
        Topic::KvCache => "prism_kv_cache",
    }
}

/// Sessions expired per sweep, at most.
const SWEEP_BATCH: i64 = 500;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS prism_sessions (
        digest BYTEA PRIMARY KEY,
        id TEXT NOT NULL,
        namespace TEXT NOT NULL,
        identity TEXT NOT NULL,
        record TEXT NOT NULL,
        expires_ms BIGINT NOT NULL,
        hard_ms BIGINT NOT NULL,
        ended SMALLINT,
        ended_ms BIGINT)",
    "CREATE INDEX IF NOT EXISTS prism_sessions_open
        ON prism_sessions (namespace, identity) WHERE ended IS NULL",
    "CREATE INDEX IF NOT EXISTS prism_sessions_expiry
        ON prism_sessions (expires_ms) WHERE ended IS NULL",
    "CREATE INDEX IF NOT EXISTS prism_sessions_ended
        ON prism_sessions (ended_ms) WHERE ended IS NOT NULL",
];

pub struct PgSessionStore {
    url: String,
    pool: PgPool,
    timeout: Duration,
    schema: OnceCell<()>,
}

impl PgSessionStore {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(0)
            .acquire_timeout(timeout)
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_lazy(url)
            .map_err(|e| format!("sessions.url: invalid postgres url: {e}"))?;
        Ok(PgSessionStore {
            url: url.to_string(),
            pool,
            timeout,
            schema: OnceCell::new(),
        })
    }

    /// The pool, once the table exists (made by the first instance to ask;
    /// concurrent instances wait on one advisory lock).
    async fn ready(&self) -> Result<&PgPool, Error> {
        self.schema
            .get_or_try_init(|| {
                bounded(self.timeout, async {
                    let mut tx = self.pool.begin().await?;
                    sqlx::query(
                        "SELECT pg_advisory_xact_lock(hashtextextended('prism_sessions', 0))",
                    )
                    .execute(&mut *tx)
                    .await?;
                    for statement in SCHEMA {
                        sqlx::query(statement).execute(&mut *tx).await?;
                    }
                    tx.commit().await
                })
            })
            .await?;
        Ok(&self.pool)
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn standing(expires_ms: i64, ended: Option<i16>, ended_ms: Option<i64>) -> Standing {
    match ended.and_then(reason_from_code) {
        Some(reason) => Standing::Ended {
            reason,
            at_ms: ended_ms.unwrap_or(0).max(0) as u64,
        },
        None => Standing::Open {
            expires_ms: expires_ms.max(0) as u64,
        },
    }
}

fn standing_of(row: &sqlx::postgres::PgRow) -> Result<Standing, sqlx::Error> {
    Ok(standing(
        row.try_get("expires_ms")?,
        row.try_get("ended")?,
        row.try_get("ended_ms")?,
    ))
}

/// Standings of `digests`, in their order, from rows keyed by digest.
fn in_order(
    digests: &[TokenDigest],
    rows: Vec<sqlx::postgres::PgRow>,
) -> Result<Vec<Standing>, sqlx::Error> {
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let digest: Vec<u8> = row.try_get("digest")?;
        found.insert(digest, standing_of(&row)?);
    }
    Ok(digests
        .iter()
        .map(|d| {
            found
                .get(d.as_slice())
                .copied()
                .unwrap_or(Standing::Unknown)
        })
        .collect())
}

#[async_trait::async_trait]
impl SessionStore for PgSessionStore {
    async fn create(
        &self,
        digest: &TokenDigest,
        session: &StoredSession,
        expires_ms: u64,
        limits: Limits,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<Admission, Error> {
        let pool = self.ready().await?;
        let record = serde_json::to_string(session)
            .map_err(|e| Error::internal(format!("session record: {e}")))?;
        bounded(self.timeout, async {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(format!("prism-sessions/{}", session.namespace))
                .execute(&mut *tx)
                .await?;
            let counts = sqlx::query(
                "SELECT count(*) AS open,
                        count(*) FILTER (WHERE identity = $2) AS mine
                   FROM prism_sessions
                  WHERE namespace = $1 AND ended IS NULL AND expires_ms > $3",
            )
            .bind(&session.namespace)
            .bind(&session.identity)
            .bind(ms(now_ms.saturating_sub(grace_ms)))
            .fetch_one(&mut *tx)
            .await?;
            let open: i64 = counts.try_get("open")?;
            let mine: i64 = counts.try_get("mine")?;
            if open as u64 >= limits.max_sessions as u64 {
                return Ok(Admission::NamespaceFull);
            }
            if mine as u64 >= limits.max_per_principal as u64 {
                return Ok(Admission::PrincipalFull);
            }
            sqlx::query(
                "INSERT INTO prism_sessions
                    (digest, id, namespace, identity, record, expires_ms, hard_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(digest.as_slice())
            .bind(&session.id)
            .bind(&session.namespace)
            .bind(&session.identity)
            .bind(&record)
            .bind(ms(expires_ms))
            .bind(ms(session.hard_ms))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(Admission::Admitted)
        })
        .await
    }

    async fn load(&self, digest: &TokenDigest) -> Result<Option<(StoredSession, Standing)>, Error> {
        let pool = self.ready().await?;
        let row = bounded(
            self.timeout,
            sqlx::query(
                "SELECT record, expires_ms, ended, ended_ms FROM prism_sessions WHERE digest = $1",
            )
            .bind(digest.as_slice())
            .fetch_optional(pool),
        )
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let record: String = row.try_get("record").map_err(unavailable)?;
        let session: StoredSession = serde_json::from_str(&record)
            .map_err(|e| Error::internal(format!("stored session record: {e}")))?;
        Ok(Some((session, standing_of(&row).map_err(unavailable)?)))
    }

    async fn extend(&self, updates: &[(TokenDigest, u64)]) -> Result<Vec<Standing>, Error> {
        let pool = self.ready().await?;
        let digests: Vec<TokenDigest> = updates.iter().map(|(d, _)| *d).collect();
        let keys: Vec<&[u8]> = updates.iter().map(|(d, _)| d.as_slice()).collect();
        let until: Vec<i64> = updates.iter().map(|(_, e)| ms(*e)).collect();
        bounded(self.timeout, async {
            let rows = sqlx::query(
                "UPDATE prism_sessions s
                    SET expires_ms = GREATEST(s.expires_ms, LEAST(u.until, s.hard_ms))
                   FROM unnest($1::bytea[], $2::int8[]) AS u(digest, until)
                  WHERE s.digest = u.digest
              RETURNING s.digest, s.expires_ms, s.ended, s.ended_ms",
            )
            .bind(&keys)
            .bind(&until)
            .fetch_all(pool)
            .await?;
            in_order(&digests, rows)
        })
        .await
    }

    async fn standings(&self, digests: &[TokenDigest]) -> Result<Vec<Standing>, Error> {
        let pool = self.ready().await?;
        let keys: Vec<&[u8]> = digests.iter().map(|d| d.as_slice()).collect();
        bounded(self.timeout, async {
            let rows = sqlx::query(
                "SELECT digest, expires_ms, ended, ended_ms
                   FROM prism_sessions WHERE digest = ANY($1::bytea[])",
            )
            .bind(&keys)
            .fetch_all(pool)
            .await?;
            in_order(digests, rows)
        })
        .await
    }

    async fn end(
        &self,
        digest: &TokenDigest,
        reason: EndReason,
        now_ms: u64,
        grace_ms: Option<u64>,
    ) -> Result<EndOutcome, Error> {
        let pool = self.ready().await?;
        bounded(self.timeout, async {
            let mut tx = pool.begin().await?;
            let ended = sqlx::query(
                "UPDATE prism_sessions SET ended = $2, ended_ms = $3
                  WHERE digest = $1 AND ended IS NULL
                    AND ($4::int8 IS NULL OR expires_ms + $4 <= $3 OR hard_ms <= $3)
              RETURNING digest",
            )
            .bind(digest.as_slice())
            .bind(reason_code(reason))
            .bind(ms(now_ms))
            .bind(grace_ms.map(ms))
            .fetch_optional(&mut *tx)
            .await?;
            if ended.is_some() {
                let notice = EndNotice {
                    digest: *digest,
                    reason,
                    at_ms: now_ms,
                };
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(notice.encode())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return Ok(EndOutcome {
                    standing: Standing::Ended {
                        reason,
                        at_ms: now_ms,
                    },
                    ended_here: true,
                });
            }
            let row = sqlx::query(
                "SELECT expires_ms, ended, ended_ms FROM prism_sessions WHERE digest = $1",
            )
            .bind(digest.as_slice())
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(EndOutcome {
                standing: match row {
                    Some(row) => standing_of(&row)?,
                    None => Standing::Unknown,
                },
                ended_here: false,
            })
        })
        .await
    }

    async fn sweep(&self, now_ms: u64, grace_ms: u64, keep_ms: u64) -> Result<Vec<Swept>, Error> {
        let pool = self.ready().await?;
        bounded(self.timeout, async {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(
                "UPDATE prism_sessions SET ended = $1, ended_ms = $2
                  WHERE digest IN (
                        SELECT digest FROM prism_sessions
                         WHERE ended IS NULL AND expires_ms <= $2 - $3
                         LIMIT $4 FOR UPDATE SKIP LOCKED)
                    AND ended IS NULL
              RETURNING digest, id, namespace, identity",
            )
            .bind(reason_code(EndReason::Expired))
            .bind(ms(now_ms))
            .bind(ms(grace_ms))
            .bind(SWEEP_BATCH)
            .fetch_all(&mut *tx)
            .await?;
            let mut swept = Vec::with_capacity(rows.len());
            let mut notices = Vec::with_capacity(rows.len());
            for row in rows {
                let digest: Vec<u8> = row.try_get("digest")?;
                let Ok(digest) = TokenDigest::try_from(digest.as_slice()) else {
                    continue;
                };
                notices.push(
                    EndNotice {
                        digest,
                        reason: EndReason::Expired,
                        at_ms: now_ms,
                    }
                    .encode(),
                );
                swept.push(Swept {
                    digest,
                    id: row.try_get("id")?,
                    namespace: row.try_get("namespace")?,
                    identity: row.try_get("identity")?,
                });
            }
            if !notices.is_empty() {
                sqlx::query("SELECT pg_notify($1, n) FROM unnest($2::text[]) AS n")
                    .bind(CHANNEL)
                    .bind(&notices)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM prism_sessions WHERE ended IS NOT NULL AND ended_ms < $1")
                .bind(ms(now_ms.saturating_sub(keep_ms)))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(swept)
        })
        .await
    }

    async fn broadcast(&self, topic: Topic, payload: &str) -> Result<(), Error> {
        bounded(
            self.timeout,
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel(topic))
                .bind(payload)
                .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    async fn hear(&self, topic: Topic) -> Result<BoxStream<'static, String>, Error> {
        let listener = bounded(self.timeout, async {
            let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
            listener.listen(channel(topic)).await?;
            Ok::<_, sqlx::Error>(listener)
        })
        .await?;
        Ok(Box::pin(futures::stream::unfold(
            listener,
            // `try_recv` answers `None` when the connection was lost: the
            // stream ends there, so the caller knows it may have missed some.
            |mut listener| async move {
                match listener.try_recv().await {
                    Ok(Some(n)) => Some((n.payload().to_string(), listener)),
                    Ok(None) | Err(_) => None,
                }
            },
        )))
    }
}
