//! The Postgres queue: a table queue on the backend's pool.
//!
//! Messages are rows with a per-partition offset (a counter row per
//! partition, locked while publishing, keeps offsets dense and in order).
//! A consumer group has a row per partition with its claim cursor and
//! committed offset; a delivered message has a delivery row with its
//! attempt, visibility deadline and holder until it is acknowledged (the
//! row is deleted, and the committed offset becomes the lowest offset still
//! delivered, or the cursor). Members claim with `FOR UPDATE SKIP LOCKED`,
//! so concurrent members (in one gateway or several) never take the same
//! message. A delivery past its visibility deadline is claimed again with
//! its attempt counted; after `max_attempts` it moves to
//! `<topic>.dead-letter` instead. New messages are found by polling.
//!
//! Publishing to a topic this gateway has seen (topics are never dropped)
//! is one statement per message — take the partition's next offset and
//! insert the row ([`APPEND`]) — with no transaction around a lone message;
//! the first Publish to a topic creates it and its partitions first.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use dashmap::DashMap;

use async_trait::async_trait;
use sqlx::{Any, AnyPool, Row, Transaction};

use super::{
    epoch_ms,
    queue::{
        bad_partition, check_positions, check_within_log, choose_partition, dead_letter_topic,
        topic_not_found, ConsumerSpec, PartitionStats, PublishItem, Published, QueueBasic,
        QueueConsumer, QueueDeadLetter, QueueMessage, QueueVisibility, Start, StreamConsumerGroups,
        StreamReplay, TopicStats,
    },
    sql::SqlBackend,
};
use crate::error::Error;

pub const DDL: &[&str] = &[
    "SELECT pg_advisory_xact_lock(7236402883619144)",
    "CREATE TABLE IF NOT EXISTS prism_queue_topics (
        namespace TEXT NOT NULL, topic TEXT NOT NULL, partitions INT NOT NULL,
        PRIMARY KEY (namespace, topic))",
    "CREATE TABLE IF NOT EXISTS prism_queue_partitions (
        namespace TEXT NOT NULL, topic TEXT NOT NULL, partition INT NOT NULL,
        next_offset BIGINT NOT NULL,
        PRIMARY KEY (namespace, topic, partition))",
    "CREATE TABLE IF NOT EXISTS prism_queue_messages (
        namespace TEXT NOT NULL, topic TEXT NOT NULL, partition INT NOT NULL,
        msg_offset BIGINT NOT NULL, payload BYTEA NOT NULL, headers TEXT NOT NULL,
        ts BIGINT NOT NULL,
        PRIMARY KEY (namespace, topic, partition, msg_offset))",
    "CREATE TABLE IF NOT EXISTS prism_queue_groups (
        namespace TEXT NOT NULL, topic TEXT NOT NULL, grp TEXT NOT NULL, partition INT NOT NULL,
        cursor BIGINT NOT NULL, committed BIGINT NOT NULL,
        PRIMARY KEY (namespace, topic, grp, partition))",
    "CREATE TABLE IF NOT EXISTS prism_queue_deliveries (
        namespace TEXT NOT NULL, topic TEXT NOT NULL, grp TEXT NOT NULL, partition INT NOT NULL,
        msg_offset BIGINT NOT NULL, attempt INT NOT NULL, visible_at BIGINT NOT NULL,
        member TEXT NOT NULL,
        PRIMARY KEY (namespace, topic, grp, partition, msg_offset))",
];

/// Takes a partition's next offset and inserts the message there, in one
/// statement (`$1` namespace, `$2` topic, `$3` partition, `$4` payload,
/// `$5` headers, `$6` timestamp). No row when the partition has no counter
/// row (a topic this gateway has not created).
const APPEND: &str = "WITH o AS (UPDATE prism_queue_partitions SET next_offset = next_offset + 1 \
     WHERE namespace = $1 AND topic = $2 AND partition = $3 RETURNING next_offset - 1 AS off) \
     INSERT INTO prism_queue_messages \
     (namespace, topic, partition, msg_offset, payload, headers, ts) \
     SELECT $1, $2, $3, o.off, $4, $5, $6 FROM o RETURNING msg_offset";

/// How often an idle consumer looks for new messages.
const POLL: Duration = Duration::from_millis(50);

pub struct PgQueue {
    name: String,
    pool: AnyPool,
    /// Connections for a lone Publish to a known topic (`sql_lanes.rs`).
    lanes: Arc<super::sql_lanes::Lanes>,
    migrated: AtomicBool,
    round_robin: AtomicU64,
    /// Partition counts of the topics this gateway has published to, by
    /// (namespace, topic); topics are never dropped, so an entry stays
    /// true. One entry per topic published to (topics themselves have no
    /// limit yet, here or in the database's tables).
    known: Arc<DashMap<(String, String), i32>>,
}

impl QueueVisibility for PgQueue {}
impl QueueDeadLetter for PgQueue {}

type Tx = Transaction<'static, Any>;

/// A statement whose first three parameters (`$1`–`$3`) are a group's
/// namespace, topic and name.
fn in_group<'q>(
    sql: &'q str,
    ns: &'q str,
    topic: &'q str,
    group: &'q str,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(sql).bind(ns).bind(topic).bind(group)
}

/// APPEND for one message.
fn append_query<'q>(
    ns: &'q str,
    topic: &'q str,
    partition: i32,
    item: &'q PublishItem,
    now: i64,
) -> Result<sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>, Error> {
    let headers = serde_json::to_string(&item.headers)
        .map_err(|_| Error::internal("headers do not serialise"))?;
    Ok(sqlx::query(APPEND)
        .bind(ns)
        .bind(topic)
        .bind(partition)
        .bind(item.payload.as_slice())
        .bind(headers)
        .bind(now))
}

impl PgQueue {
    pub fn new(kv: &SqlBackend) -> Self {
        PgQueue {
            name: kv.name.clone(),
            pool: kv.pool.clone(),
            lanes: kv.lanes.clone(),
            migrated: AtomicBool::new(false),
            round_robin: AtomicU64::new(0),
            known: Arc::default(),
        }
    }

    pub fn is_migrated(&self) -> bool {
        self.migrated.load(Ordering::Acquire)
    }

    fn err(&self, e: sqlx::Error) -> Error {
        super::sql::map_db_error(&self.name, super::sql::Dialect::Postgres, e)
    }

    pub async fn migrate(&self) -> Result<(), Error> {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        for statement in DDL {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    fn ready(&self) -> Result<(), Error> {
        if self.is_migrated() {
            Ok(())
        } else {
            Err(super::kv::unavailable(&self.name, "not connected yet"))
        }
    }

    async fn partitions(&self, tx: &mut Tx, ns: &str, topic: &str) -> Result<Option<i32>, Error> {
        let row = sqlx::query(
            "SELECT partitions FROM prism_queue_topics WHERE namespace = $1 AND topic = $2",
        )
        .bind(ns)
        .bind(topic)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| self.err(e))?;
        row.map(|r| r.try_get::<i32, _>(0).map_err(|e| self.err(e)))
            .transpose()
    }

    async fn ensure_topic(
        &self,
        tx: &mut Tx,
        ns: &str,
        topic: &str,
        partitions: i32,
    ) -> Result<i32, Error> {
        sqlx::query(
            "INSERT INTO prism_queue_topics (namespace, topic, partitions) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(ns)
        .bind(topic)
        .bind(partitions.max(1))
        .execute(&mut **tx)
        .await
        .map_err(|e| self.err(e))?;
        let count = self
            .partitions(tx, ns, topic)
            .await?
            .ok_or_else(|| Error::internal("topic vanished while publishing"))?;
        // A counter row recreated for a topic that still has messages
        // (removed by hand, say) goes on after its last message.
        sqlx::query(
            "INSERT INTO prism_queue_partitions (namespace, topic, partition, next_offset) \
             SELECT $1, $2, p, COALESCE((SELECT MAX(m.msg_offset) + 1 FROM prism_queue_messages m \
               WHERE m.namespace = $1 AND m.topic = $2 AND m.partition = p), 0) \
             FROM generate_series(0, $3 - 1) AS p ON CONFLICT DO NOTHING",
        )
        .bind(ns)
        .bind(topic)
        .bind(count)
        .execute(&mut **tx)
        .await
        .map_err(|e| self.err(e))?;
        Ok(count)
    }

    /// Appends one message with `executor`; `None` if the partition has no
    /// counter row.
    async fn append<'e, E>(
        &self,
        executor: E,
        ns: &str,
        topic: &str,
        partition: i32,
        item: &PublishItem,
        now: i64,
    ) -> Result<Option<Published>, Error>
    where
        E: sqlx::Executor<'e, Database = Any>,
    {
        // All rows, not the first: reading to the statement's end is what
        // sees an autocommit's commit (or its error) before the Publish is
        // answered; a first-row fetch returns before it.
        let rows = append_query(ns, topic, partition, item, now)?
            .fetch_all(executor)
            .await
            .map_err(|e| self.err(e))?;
        self.appended(rows, partition, now)
    }

    /// A lone message appended outside a transaction: on a statement lane
    /// when one is free (no ping after it), else on the pool.
    async fn append_alone(
        &self,
        ns: &str,
        topic: &str,
        partition: i32,
        item: &PublishItem,
        now: i64,
    ) -> Result<Option<Published>, Error> {
        let query = append_query(ns, topic, partition, item, now)?;
        let rows = self
            .lanes
            .fetch_all(&self.pool, query)
            .await
            .map_err(|e| self.err(e))?;
        self.appended(rows, partition, now)
    }

    /// What APPEND's rows say: the message's offset, or `None`.
    fn appended(
        &self,
        rows: Vec<sqlx::any::AnyRow>,
        partition: i32,
        now: i64,
    ) -> Result<Option<Published>, Error> {
        rows.into_iter()
            .next()
            .map(|row| {
                let offset: i64 = row.try_get(0).map_err(|e| self.err(e))?;
                Ok(Published {
                    partition,
                    offset,
                    timestamp_ms: now,
                })
            })
            .transpose()
    }

    /// The partition for `item` among `count`, or its error.
    fn partition_for(&self, topic: &str, item: &PublishItem, count: i32) -> Result<i32, Error> {
        let rr = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let p = choose_partition(item, count, rr);
        if (0..count).contains(&p) {
            Ok(p)
        } else {
            Err(bad_partition(topic, p, count))
        }
    }

    /// Appends `items` inside `tx`, partition by partition in ascending
    /// order (two publishers of several messages lock counter rows in the
    /// same order, so they cannot deadlock); results in the items' order.
    /// `None` if a partition has no counter row (the caller rolls back).
    async fn append_all(
        &self,
        tx: &mut Tx,
        ns: &str,
        topic: &str,
        count: i32,
        items: &[PublishItem],
        now: i64,
    ) -> Result<Option<Vec<Result<Published, Error>>>, Error> {
        let mut results: Vec<Result<Published, Error>> = Vec::with_capacity(items.len());
        let mut order = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match self.partition_for(topic, item, count) {
                Ok(p) => {
                    order.push((p, i));
                    results.push(Err(Error::internal("not appended")));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        order.sort_unstable();
        for (p, i) in order {
            match self.append(&mut **tx, ns, topic, p, &items[i], now).await? {
                Some(published) => results[i] = Ok(published),
                None => return Ok(None),
            }
        }
        Ok(Some(results))
    }

    /// Publishes to a topic known to exist with `count` partitions: one
    /// statement for a lone message, a transaction for several. `None`
    /// (nothing written) if a partition's counter row is missing.
    async fn publish_known(
        &self,
        ns: &str,
        topic: &str,
        count: i32,
        items: &[PublishItem],
        now: i64,
    ) -> Result<Option<Vec<Result<Published, Error>>>, Error> {
        if let [item] = items {
            return Ok(match self.partition_for(topic, item, count) {
                Err(e) => Some(vec![Err(e)]),
                Ok(p) => self
                    .append_alone(ns, topic, p, item, now)
                    .await?
                    .map(|published| vec![Ok(published)]),
            });
        }
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let Some(results) = self
            .append_all(&mut tx, ns, topic, count, items, now)
            .await?
        else {
            // Rolled back now, so the slow path does not wait on its locks.
            tx.rollback().await.map_err(|e| self.err(e))?;
            return Ok(None);
        };
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(Some(results))
    }

    async fn next_offsets(&self, tx: &mut Tx, ns: &str, topic: &str) -> Result<Vec<i64>, Error> {
        let rows = sqlx::query(
            "SELECT next_offset FROM prism_queue_partitions \
             WHERE namespace = $1 AND topic = $2 ORDER BY partition",
        )
        .bind(ns)
        .bind(topic)
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>(0).map_err(|e| self.err(e)))
            .collect()
    }

    /// Recomputes a group partition's committed offset: the lowest offset
    /// still awaiting acknowledgement, or the cursor.
    async fn recommit(
        &self,
        tx: &mut Tx,
        ns: &str,
        topic: &str,
        group: &str,
        partition: i32,
    ) -> Result<(), Error> {
        in_group(
            "UPDATE prism_queue_groups g SET committed = COALESCE(( \
                SELECT MIN(d.msg_offset) FROM prism_queue_deliveries d \
                WHERE d.namespace = g.namespace AND d.topic = g.topic AND d.grp = g.grp \
                  AND d.partition = g.partition), g.cursor) \
             WHERE g.namespace = $1 AND g.topic = $2 AND g.grp = $3 AND g.partition = $4",
            ns,
            topic,
            group,
        )
        .bind(partition)
        .execute(&mut **tx)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[async_trait]
impl QueueBasic for PgQueue {
    async fn publish(
        &self,
        ns: &str,
        topic: &str,
        partitions: i32,
        items: Vec<PublishItem>,
    ) -> Vec<Result<Published, Error>> {
        let n = items.len();
        if n == 0 {
            return Vec::new();
        }
        let run = async {
            self.ready()?;
            let now = epoch_ms();
            let key = (ns.to_string(), topic.to_string());
            let known = self.known.get(&key).map(|c| *c);
            if let Some(count) = known {
                if let Some(results) = self.publish_known(ns, topic, count, &items, now).await? {
                    return Ok(results);
                }
            }
            // First sight of the topic (or a counter row gone): create
            // what is missing, then append in the same transaction.
            let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
            let count = self.ensure_topic(&mut tx, ns, topic, partitions).await?;
            let results = self
                .append_all(&mut tx, ns, topic, count, &items, now)
                .await?
                .ok_or_else(|| Error::internal("a partition vanished while publishing"))?;
            tx.commit().await.map_err(|e| self.err(e))?;
            self.known.insert(key, count);
            Ok::<_, Error>(results)
        };
        match run.await {
            Ok(results) => results,
            // Nothing was written: every message failed the same way.
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    async fn subscribe(
        &self,
        ns: &str,
        spec: ConsumerSpec,
    ) -> Result<Box<dyn QueueConsumer>, Error> {
        self.ready()?;
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let count = self
            .partitions(&mut tx, ns, &spec.topic)
            .await?
            .ok_or_else(|| topic_not_found(&spec.topic))?;
        let ends = self.next_offsets(&mut tx, ns, &spec.topic).await?;
        for p in 0..count {
            let end = ends.get(p as usize).copied().unwrap_or(0);
            let start = match spec.start {
                Start::Earliest | Start::Committed => 0,
                Start::Latest => end,
                Start::Offset(o) => o.clamp(0, end),
                Start::Timestamp(t) => {
                    let row = sqlx::query(
                        "SELECT MIN(msg_offset) FROM prism_queue_messages \
                         WHERE namespace = $1 AND topic = $2 AND partition = $3 AND ts >= $4",
                    )
                    .bind(ns)
                    .bind(&spec.topic)
                    .bind(p)
                    .bind(t)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
                    row.try_get::<Option<i64>, _>(0)
                        .map_err(|e| self.err(e))?
                        .unwrap_or(end)
                }
            };
            // A new group starts there; an existing one goes on.
            sqlx::query(
                "INSERT INTO prism_queue_groups (namespace, topic, grp, partition, cursor, committed) \
                 VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT DO NOTHING",
            )
            .bind(ns)
            .bind(&spec.topic)
            .bind(&spec.group)
            .bind(p)
            .bind(start)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(Box::new(PgConsumer {
            queue: PgQueue {
                name: self.name.clone(),
                pool: self.pool.clone(),
                lanes: self.lanes.clone(),
                migrated: AtomicBool::new(true),
                round_robin: AtomicU64::new(0),
                known: self.known.clone(),
            },
            ns: ns.to_string(),
            spec,
            member: hex::encode(rand::random::<[u8; 8]>()),
            partitions: count,
            next_partition: 0,
        }))
    }

    async fn acknowledge(
        &self,
        ns: &str,
        topic: &str,
        group: &str,
        partition: i32,
        offset: i64,
    ) -> Result<bool, Error> {
        self.ready()?;
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let done = in_group(
            "DELETE FROM prism_queue_deliveries WHERE namespace = $1 AND topic = $2 AND grp = $3 \
             AND partition = $4 AND msg_offset = $5",
            ns,
            topic,
            group,
        )
        .bind(partition)
        .bind(offset)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?
        .rows_affected();
        if done > 0 {
            self.recommit(&mut tx, ns, topic, group, partition).await?;
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(done > 0)
    }

    async fn forget_group(&self, ns: &str, topic: &str, group: &str) {
        let run = async {
            let mut tx = self.pool.begin().await?;
            for table in ["prism_queue_deliveries", "prism_queue_groups"] {
                in_group(
                    &format!(
                        "DELETE FROM {table} WHERE namespace = $1 AND topic = $2 AND grp = $3"
                    ),
                    ns,
                    topic,
                    group,
                )
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        };
        if let Err(e) = run.await {
            tracing::warn!(backend = %self.name, error = %e, "could not drop a private group");
        }
    }

    async fn topic_stats(&self, ns: &str, topic: &str) -> Result<TopicStats, Error> {
        self.ready()?;
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        if self.partitions(&mut tx, ns, topic).await?.is_none() {
            return Err(topic_not_found(topic));
        }
        let ends = self.next_offsets(&mut tx, ns, topic).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(TopicStats {
            partitions: ends
                .into_iter()
                .enumerate()
                .map(|(p, latest)| PartitionStats {
                    partition: p as i32,
                    earliest: 0,
                    latest,
                })
                .collect(),
        })
    }
}

#[async_trait]
impl StreamConsumerGroups for PgQueue {
    async fn commit(
        &self,
        ns: &str,
        topic: &str,
        group: &str,
        offsets: &[(i32, i64)],
    ) -> Result<Vec<(i32, i64)>, Error> {
        self.ready()?;
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let count = self
            .partitions(&mut tx, ns, topic)
            .await?
            .ok_or_else(|| topic_not_found(topic))?;
        check_positions(topic, count, offsets)?;
        let ends = self.next_offsets(&mut tx, ns, topic).await?;
        check_within_log(&ends, offsets)?;
        let mut stored = Vec::with_capacity(offsets.len());
        for &(p, o) in offsets {
            in_group("INSERT INTO prism_queue_groups (namespace, topic, grp, partition, cursor, committed) \
                 VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (namespace, topic, grp, partition) \
                 DO UPDATE SET committed = $5, cursor = GREATEST(prism_queue_groups.cursor, $5)", ns, topic, group)
            .bind(p)
            .bind(o)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            in_group(
                "DELETE FROM prism_queue_deliveries WHERE namespace = $1 AND topic = $2 \
                 AND grp = $3 AND partition = $4 AND msg_offset < $5",
                ns,
                topic,
                group,
            )
            .bind(p)
            .bind(o)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            stored.push((p, o));
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(stored)
    }
}

#[async_trait]
impl StreamReplay for PgQueue {
    async fn seek(
        &self,
        ns: &str,
        topic: &str,
        group: &str,
        positions: &[(i32, i64)],
    ) -> Result<(), Error> {
        self.ready()?;
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let count = self
            .partitions(&mut tx, ns, topic)
            .await?
            .ok_or_else(|| topic_not_found(topic))?;
        check_positions(topic, count, positions)?;
        let ends = self.next_offsets(&mut tx, ns, topic).await?;
        check_within_log(&ends, positions)?;
        for &(p, o) in positions {
            let moved = in_group(
                "UPDATE prism_queue_groups SET cursor = $5, committed = $5 \
                 WHERE namespace = $1 AND topic = $2 AND grp = $3 AND partition = $4",
                ns,
                topic,
                group,
            )
            .bind(p)
            .bind(o)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?
            .rows_affected();
            if moved == 0 {
                return Err(Error::new(
                    crate::error::ErrorKind::NotFound,
                    "GROUP_NOT_FOUND",
                    format!("consumer group `{group}` has never subscribed to topic `{topic}`"),
                ));
            }
            in_group(
                "DELETE FROM prism_queue_deliveries WHERE namespace = $1 AND topic = $2 \
                 AND grp = $3 AND partition = $4",
                ns,
                topic,
                group,
            )
            .bind(p)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(())
    }
}

struct PgConsumer {
    queue: PgQueue,
    ns: String,
    spec: ConsumerSpec,
    member: String,
    partitions: i32,
    next_partition: i32,
}

impl PgConsumer {
    /// One claiming transaction: due redeliveries first, then new messages
    /// from partitions no other member is claiming from right now.
    async fn claim(&mut self, max: usize) -> Result<Vec<QueueMessage>, Error> {
        let q = &self.queue;
        let (ns, topic, group) = (&self.ns, &self.spec.topic, &self.spec.group);
        let now = epoch_ms();
        let visible_at = now.saturating_add(self.spec.visibility_timeout.as_millis() as i64);
        let mut tx = q.pool.begin().await.map_err(|e| q.err(e))?;
        let mut claimed: Vec<(i32, i64, i32)> = Vec::new();

        let due = in_group(
            "SELECT partition, msg_offset, attempt FROM prism_queue_deliveries \
             WHERE namespace = $1 AND topic = $2 AND grp = $3 AND visible_at <= $4 \
             ORDER BY partition, msg_offset LIMIT $5 FOR UPDATE SKIP LOCKED",
            ns,
            topic,
            group,
        )
        .bind(now)
        .bind(max as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| q.err(e))?;
        let mut dead = Vec::new();
        for row in &due {
            let p: i32 = row.try_get(0).map_err(|e| q.err(e))?;
            let o: i64 = row.try_get(1).map_err(|e| q.err(e))?;
            let attempt: i32 = row.try_get(2).map_err(|e| q.err(e))?;
            if self.spec.max_attempts > 0 && attempt >= self.spec.max_attempts as i32 {
                dead.push((p, o, attempt));
                continue;
            }
            in_group("UPDATE prism_queue_deliveries SET attempt = attempt + 1, visible_at = $6, member = $7 \
                 WHERE namespace = $1 AND topic = $2 AND grp = $3 AND partition = $4 AND msg_offset = $5", ns, topic, group)
            .bind(p)
            .bind(o)
            .bind(visible_at)
            .bind(&self.member)
            .execute(&mut *tx)
            .await
            .map_err(|e| q.err(e))?;
            claimed.push((p, o, attempt + 1));
        }
        for &(p, o, attempt) in &dead {
            self.dead_letter(&mut tx, p, o, attempt, now).await?;
        }

        let mut room = max.saturating_sub(claimed.len());
        if room > 0 {
            let groups = in_group(
                "SELECT partition, cursor FROM prism_queue_groups \
                 WHERE namespace = $1 AND topic = $2 AND grp = $3 \
                 ORDER BY partition FOR UPDATE SKIP LOCKED",
                ns,
                topic,
                group,
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| q.err(e))?;
            let mut cursors: Vec<(i32, i64)> = groups
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(|e| q.err(e))?;
            // Take turns between partitions across calls.
            let turn = self.next_partition;
            self.next_partition = (self.next_partition + 1) % self.partitions.max(1);
            cursors.sort_by_key(|(p, _)| (*p - turn).rem_euclid(self.partitions.max(1)));
            for (p, cursor) in cursors {
                if room == 0 {
                    break;
                }
                let rows = sqlx::query(
                    "SELECT msg_offset FROM prism_queue_messages WHERE namespace = $1 AND topic = $2 \
                     AND partition = $3 AND msg_offset >= $4 ORDER BY msg_offset LIMIT $5",
                )
                .bind(ns)
                .bind(topic)
                .bind(p)
                .bind(cursor)
                .bind(room as i64)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| q.err(e))?;
                let mut last = None;
                for r in &rows {
                    let o: i64 = r.try_get(0).map_err(|e| q.err(e))?;
                    in_group("INSERT INTO prism_queue_deliveries \
                         (namespace, topic, grp, partition, msg_offset, attempt, visible_at, member) \
                         VALUES ($1, $2, $3, $4, $5, 1, $6, $7) ON CONFLICT DO NOTHING", ns, topic, group)
                    .bind(p)
                    .bind(o)
                    .bind(visible_at)
                    .bind(&self.member)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| q.err(e))?;
                    claimed.push((p, o, 1));
                    last = Some(o);
                    room -= 1;
                }
                if let Some(o) = last {
                    in_group(
                        "UPDATE prism_queue_groups SET cursor = $5 \
                         WHERE namespace = $1 AND topic = $2 AND grp = $3 AND partition = $4",
                        ns,
                        topic,
                        group,
                    )
                    .bind(p)
                    .bind(o + 1)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| q.err(e))?;
                }
            }
        }
        for &(p, _, _) in &dead {
            q.recommit(&mut tx, ns, topic, group, p).await?;
        }

        let mut out = Vec::with_capacity(claimed.len());
        for (p, o, attempt) in claimed {
            let row = sqlx::query(
                "SELECT payload, headers, ts FROM prism_queue_messages \
                 WHERE namespace = $1 AND topic = $2 AND partition = $3 AND msg_offset = $4",
            )
            .bind(ns)
            .bind(topic)
            .bind(p)
            .bind(o)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| q.err(e))?;
            let headers: String = row.try_get(1).map_err(|e| q.err(e))?;
            out.push(QueueMessage {
                topic: topic.clone(),
                partition: p,
                offset: o,
                payload: row.try_get(0).map_err(|e| q.err(e))?,
                headers: serde_json::from_str(&headers).unwrap_or_default(),
                timestamp_ms: row.try_get(2).map_err(|e| q.err(e))?,
                attempt,
            });
        }
        tx.commit().await.map_err(|e| q.err(e))?;
        Ok(out)
    }

    /// Moves a message that used up its attempts to the dead-letter topic.
    async fn dead_letter(
        &self,
        tx: &mut Tx,
        p: i32,
        o: i64,
        attempts: i32,
        now: i64,
    ) -> Result<(), Error> {
        let q = &self.queue;
        let (ns, topic, group) = (&self.ns, &self.spec.topic, &self.spec.group);
        let row = sqlx::query(
            "SELECT payload, headers FROM prism_queue_messages \
             WHERE namespace = $1 AND topic = $2 AND partition = $3 AND msg_offset = $4",
        )
        .bind(ns)
        .bind(topic)
        .bind(p)
        .bind(o)
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| q.err(e))?;
        let headers: String = row.try_get(1).map_err(|e| q.err(e))?;
        let mut headers: std::collections::HashMap<String, String> =
            serde_json::from_str(&headers).unwrap_or_default();
        headers.insert(
            "x-prism-dead-letter-from".into(),
            super::queue::message_id(topic, p, o),
        );
        headers.insert("x-prism-consumer-group".into(), group.clone());
        headers.insert("x-prism-attempts".into(), attempts.to_string());
        let dlq = dead_letter_topic(topic);
        q.ensure_topic(tx, ns, &dlq, 1).await?;
        let item = PublishItem {
            payload: row.try_get(0).map_err(|e| q.err(e))?,
            headers,
            partition_key: None,
            partition: Some(0),
        };
        q.append(&mut **tx, ns, &dlq, 0, &item, now)
            .await?
            .ok_or_else(|| Error::internal("the dead-letter topic's partition vanished"))?;
        in_group(
            "DELETE FROM prism_queue_deliveries WHERE namespace = $1 AND topic = $2 AND grp = $3 \
             AND partition = $4 AND msg_offset = $5",
            ns,
            topic,
            group,
        )
        .bind(p)
        .bind(o)
        .execute(&mut **tx)
        .await
        .map_err(|e| q.err(e))?;
        tracing::info!(topic = %topic, partition = p, offset = o, attempts, "message dead-lettered");
        Ok(())
    }
}

#[async_trait]
impl QueueConsumer for PgConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<QueueMessage>, Error> {
        // Polled: wait for messages, bounded by `wait`.
        let until = tokio::time::Instant::now() + wait;
        loop {
            let batch = self.claim(max.max(1)).await?;
            let now = tokio::time::Instant::now();
            if !batch.is_empty() || now >= until {
                return Ok(batch);
            }
            tokio::time::sleep(POLL.min(until - now)).await;
        }
    }

    async fn release(&mut self) {
        let q = &self.queue;
        let done = sqlx::query(
            "UPDATE prism_queue_deliveries SET visible_at = 0 \
             WHERE namespace = $1 AND topic = $2 AND grp = $3 AND member = $4",
        )
        .bind(&self.ns)
        .bind(&self.spec.topic)
        .bind(&self.spec.group)
        .bind(&self.member)
        .execute(&q.pool)
        .await;
        if let Err(e) = done {
            // The visibility timeout brings them back anyway.
            tracing::warn!(backend = %q.name, error = %e, "could not release deliveries");
        }
    }
}
