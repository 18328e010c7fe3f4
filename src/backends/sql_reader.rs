//! Reader on the SQL engine (SQLite and Postgres): schema introspection,
//! and plans compiled to parameterized SQL. Identifiers come only from the
//! learned schema (and are quoted anyway); every value is a bound
//! parameter. Pages are keyset-cut: `WHERE (sort key, id) after the last
//! row ORDER BY sort key, id LIMIT n`, so page N costs what page 1 does.
//!
//! Values leave the database in forms every dialect decodes the same way:
//! integers as BIGINT, numbers as DOUBLE, timestamps as RFC 3339 UTC text,
//! JSON as text (parsed into Struct/List), bytes as lowercase hex.

use std::sync::Arc;

use async_trait::async_trait;
use prost_types::{value::Kind as V, ListValue, Struct, Value};
use sqlx::{any::AnyRow, Row};

use super::{
    reader::{
        Column, Cond, KeyValue, Kind, Param, Plan, ReadRow, ReaderPaged, ReaderQuery, TableSchema,
        TextOp,
    },
    sql::{Dialect, SqlBackend},
};
use crate::error::{Error, ErrorKind};

impl ReaderQuery for SqlBackend {}

pub(super) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A statement being built, with its parameters.
pub(super) struct Sql {
    pub(super) dialect: Dialect,
    pub(super) text: String,
    pub(super) params: Vec<Param>,
}

impl Sql {
    pub(super) fn new(dialect: Dialect) -> Self {
        Sql {
            dialect,
            text: String::new(),
            params: Vec::new(),
        }
    }

    /// A placeholder for `p`, compared with a column of `column`'s kind.
    pub(super) fn param(&mut self, column: &Column, p: Param) -> String {
        let p = match (self.dialect, p) {
            (Dialect::Sqlite, Param::Bool(b)) => Param::Int(i64::from(b)),
            (_, p) => p,
        };
        self.params.push(p);
        let n = self.params.len();
        match (self.dialect, column.kind) {
            (Dialect::Postgres, Kind::Timestamp) => format!("CAST(${n} AS TIMESTAMPTZ)"),
            (Dialect::Postgres, Kind::Json) => format!("CAST(${n} AS JSONB)"),
            _ => format!("${n}"),
        }
    }

    fn cond(&mut self, schema: &TableSchema, cond: &Cond) -> String {
        let col = |i: usize| quote(&schema.columns[i].name);
        match cond {
            Cond::Cmp(i, op, p) => {
                let ph = self.param(&schema.columns[*i], p.clone());
                format!("{} {} {ph}", col(*i), op.sql())
            }
            Cond::IsNull(i, true) => format!("{} IS NULL", col(*i)),
            Cond::IsNull(i, false) => format!("{} IS NOT NULL", col(*i)),
            Cond::In(_, true, list) if list.is_empty() => "1 = 0".into(),
            Cond::In(_, false, list) if list.is_empty() => "1 = 1".into(),
            Cond::In(i, positive, list) => {
                let phs: Vec<String> = list
                    .iter()
                    .map(|p| self.param(&schema.columns[*i], p.clone()))
                    .collect();
                let not = if *positive { "" } else { "NOT " };
                format!("{} {not}IN ({})", col(*i), phs.join(", "))
            }
            Cond::Text(i, op, s) => self.text_match(&schema.columns[*i], *op, s),
            Cond::And(list) if list.is_empty() => "1 = 1".into(),
            Cond::Or(list) if list.is_empty() => "1 = 0".into(),
            Cond::And(list) | Cond::Or(list) => {
                let joiner = if matches!(cond, Cond::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                let parts: Vec<String> = list.iter().map(|c| self.cond(schema, c)).collect();
                format!("({})", parts.join(joiner))
            }
            Cond::Not(inner) => format!("NOT ({})", self.cond(schema, inner)),
        }
    }

    /// CONTAINS / STARTS_WITH / ENDS_WITH, case-sensitive on both
    /// dialects: LIKE with `\`, `%` and `_` escaped on Postgres; instr and
    /// substr on SQLite (whose LIKE ignores ASCII case).
    fn text_match(&mut self, c: &Column, op: TextOp, s: &str) -> String {
        let q = quote(&c.name);
        match self.dialect {
            Dialect::Postgres => {
                let escaped = s
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                let pattern = match op {
                    TextOp::Contains => format!("%{escaped}%"),
                    TextOp::StartsWith => format!("{escaped}%"),
                    TextOp::EndsWith => format!("%{escaped}"),
                };
                let ph = self.param(c, Param::Text(pattern));
                format!("{q} LIKE {ph} ESCAPE '\\'")
            }
            Dialect::Sqlite => {
                if s.is_empty() {
                    return format!("{q} IS NOT NULL");
                }
                let ph = self.param(c, Param::Text(s.to_string()));
                match op {
                    TextOp::Contains => format!("instr({q}, {ph}) > 0"),
                    TextOp::StartsWith => format!("substr({q}, 1, length({ph})) = {ph}"),
                    TextOp::EndsWith => format!("substr({q}, -length({ph})) = {ph}"),
                }
            }
        }
    }

    /// `(k0, k1, ...)` strictly after `key` in the plan's order: a row-value
    /// comparison when every direction is the same (indexes serve it),
    /// else its expansion.
    fn after(&mut self, schema: &TableSchema, order: &[(usize, bool)], key: &[KeyValue]) -> String {
        if order.iter().all(|(_, d)| *d == order[0].1) {
            let cmp = if order[0].1 { "<" } else { ">" };
            let cols: Vec<String> = order
                .iter()
                .map(|(i, _)| quote(&schema.columns[*i].name))
                .collect();
            let phs: Vec<String> = order
                .iter()
                .zip(key)
                .map(|((i, _), k)| self.param(&schema.columns[*i], k.clone().into()))
                .collect();
            return format!("({}) {cmp} ({})", cols.join(", "), phs.join(", "));
        }
        let mut ors = Vec::with_capacity(order.len());
        for (n, (i, desc)) in order.iter().enumerate() {
            let mut ands = Vec::with_capacity(n + 1);
            for (j, _) in &order[..n] {
                let ph = self.param(&schema.columns[*j], key[ands.len()].clone().into());
                ands.push(format!("{} = {ph}", quote(&schema.columns[*j].name)));
            }
            let ph = self.param(&schema.columns[*i], key[n].clone().into());
            let cmp = if *desc { "<" } else { ">" };
            ands.push(format!("{} {cmp} {ph}", quote(&schema.columns[*i].name)));
            ors.push(format!("({})", ands.join(" AND ")));
        }
        format!("({})", ors.join(" OR "))
    }

    pub(super) fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for p in &self.params {
            q = match p {
                Param::Int(i) => q.bind(*i),
                Param::Float(f) => q.bind(*f),
                Param::Text(s) => q.bind(s.as_str()),
                Param::Bool(b) => q.bind(*b),
            };
        }
        q
    }
}

/// The expression that reads column `c` in a dialect-neutral form.
pub(super) fn read_expr(dialect: Dialect, c: &Column, sql_type: &str) -> String {
    let q = quote(&c.name);
    match (dialect, c.kind) {
        (Dialect::Postgres, Kind::Int) => format!("CAST({q} AS BIGINT)"),
        (Dialect::Postgres, Kind::Float) => format!("CAST({q} AS DOUBLE PRECISION)"),
        (Dialect::Postgres, Kind::Bool) => q,
        (Dialect::Postgres, Kind::Timestamp) if sql_type == "date" => {
            format!("to_char({q}, 'YYYY-MM-DD')")
        }
        (Dialect::Postgres, Kind::Timestamp) if sql_type == "timestamp with time zone" => {
            format!("to_char({q} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        }
        (Dialect::Postgres, Kind::Timestamp) => {
            format!("to_char({q}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        }
        (Dialect::Postgres, Kind::Bytes) => format!("encode({q}, 'hex')"),
        (Dialect::Postgres, _) => format!("CAST({q} AS TEXT)"),
        (Dialect::Sqlite, Kind::Int | Kind::Bool) => format!("CAST({q} AS INTEGER)"),
        (Dialect::Sqlite, Kind::Float) => format!("CAST({q} AS REAL)"),
        (Dialect::Sqlite, Kind::Bytes) => format!("lower(hex({q}))"),
        (Dialect::Sqlite, _) => format!("CAST({q} AS TEXT)"),
    }
}

/// A JSON value as a protobuf Value (numbers as f64).
pub fn json_to_value(j: serde_json::Value) -> Value {
    let kind = match j {
        serde_json::Value::Null => V::NullValue(0),
        serde_json::Value::Bool(b) => V::BoolValue(b),
        serde_json::Value::Number(n) => V::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => V::StringValue(s),
        serde_json::Value::Array(a) => V::ListValue(ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => V::StructValue(Struct {
            fields: o.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

fn null() -> Value {
    Value {
        kind: Some(V::NullValue(0)),
    }
}

/// Column `idx` of `row`, read with `read_expr`, as a protobuf value.
pub(super) fn decode(row: &AnyRow, idx: usize, kind: Kind) -> Result<Value, sqlx::Error> {
    let value = match kind {
        Kind::Int => row
            .try_get::<Option<i64>, _>(idx)?
            .map(|i| V::NumberValue(i as f64)),
        Kind::Float => row.try_get::<Option<f64>, _>(idx)?.map(V::NumberValue),
        Kind::Bool => match row.try_get::<Option<bool>, _>(idx) {
            Ok(b) => b.map(V::BoolValue),
            Err(_) => row
                .try_get::<Option<i64>, _>(idx)?
                .map(|i| V::BoolValue(i != 0)),
        },
        Kind::Json => {
            return Ok(match row.try_get::<Option<String>, _>(idx)? {
                None => null(),
                Some(text) => serde_json::from_str(&text)
                    .map(json_to_value)
                    .unwrap_or(Value {
                        kind: Some(V::StringValue(text)),
                    }),
            })
        }
        Kind::Text | Kind::Timestamp | Kind::Bytes => {
            row.try_get::<Option<String>, _>(idx)?.map(V::StringValue)
        }
    };
    Ok(value.map_or_else(null, |k| Value { kind: Some(k) }))
}

/// Column `idx` of `row` as an order key: exact (integers stay i64, never
/// pass through a float), so keyset paging never skips or repeats a row.
fn key_of(row: &AnyRow, idx: usize, kind: Kind) -> Result<KeyValue, sqlx::Error> {
    Ok(match kind {
        Kind::Int => KeyValue::Int(row.try_get::<i64, _>(idx)?),
        Kind::Float => KeyValue::Float(row.try_get::<f64, _>(idx)?),
        Kind::Bool => match row.try_get::<bool, _>(idx) {
            Ok(b) => KeyValue::Bool(b),
            Err(_) => KeyValue::Bool(row.try_get::<i64, _>(idx)? != 0),
        },
        Kind::Text | Kind::Timestamp | Kind::Json | Kind::Bytes => {
            KeyValue::Text(row.try_get::<String, _>(idx)?)
        }
    })
}

fn classify_postgres(data_type: &str) -> Kind {
    match data_type {
        "smallint" | "integer" | "bigint" => Kind::Int,
        "real" | "double precision" | "numeric" => Kind::Float,
        "boolean" => Kind::Bool,
        "date" | "timestamp with time zone" | "timestamp without time zone" => Kind::Timestamp,
        "json" | "jsonb" => Kind::Json,
        "bytea" => Kind::Bytes,
        _ => Kind::Text,
    }
}

/// SQLite's affinity rules, plus BOOL, TIME/DATE and JSON by declared type.
fn classify_sqlite(declared: &str) -> Kind {
    let t = declared.to_ascii_uppercase();
    if t.contains("BOOL") {
        Kind::Bool
    } else if t.contains("INT") {
        Kind::Int
    } else if t.contains("TIME") || t.contains("DATE") {
        Kind::Timestamp
    } else if t.contains("JSON") {
        Kind::Json
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        Kind::Text
    } else if t.contains("BLOB") {
        Kind::Bytes
    } else if t.contains("REAL")
        || t.contains("FLOA")
        || t.contains("DOUB")
        || t.contains("NUM")
        || t.contains("DEC")
    {
        Kind::Float
    } else {
        Kind::Text
    }
}

impl SqlBackend {
    /// Learns every configured collection's table (at connect); a missing
    /// table is logged, and its calls answer FAILED_PRECONDITION until it
    /// exists.
    pub async fn learn_collections(&self) {
        for (collection, table, id) in &self.collections {
            match self.schema(collection, table, id).await {
                Ok(schema) => tracing::info!(
                    backend = %self.name,
                    collection = %collection,
                    columns = schema.columns.len(),
                    "collection schema learned"
                ),
                Err(e) => tracing::warn!(
                    backend = %self.name,
                    collection = %collection,
                    error = %e.message,
                    "collection not readable yet"
                ),
            }
        }
    }

    async fn learn(&self, table: &str) -> Result<Vec<(Column, String)>, Error> {
        let rows = match self.dialect {
            Dialect::Postgres => sqlx::query(
                "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT), CAST(is_nullable AS TEXT) \
                 FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            ),
            Dialect::Sqlite => sqlx::query(
                "SELECT name, type, CASE WHEN \"notnull\" = 1 OR pk > 0 THEN 'NO' ELSE 'YES' END \
                 FROM pragma_table_info($1)",
            ),
        }
        .bind(table)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        rows.iter()
            .map(|r| {
                let name: String = r.try_get(0)?;
                let sql_type: String = r.try_get(1)?;
                let nullable: String = r.try_get(2)?;
                let kind = match self.dialect {
                    Dialect::Postgres => classify_postgres(&sql_type),
                    Dialect::Sqlite => classify_sqlite(&sql_type),
                };
                Ok((
                    Column {
                        name,
                        kind,
                        nullable: nullable == "YES",
                    },
                    sql_type,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(|e| self.db_error(e))
    }
}

#[async_trait]
impl ReaderPaged for SqlBackend {
    async fn schema(
        &self,
        collection: &str,
        table: &str,
        id: &str,
    ) -> Result<Arc<TableSchema>, Error> {
        let cache_key = format!("{collection}\u{0}{table}");
        if let Some(s) = self.schemas.get(&cache_key) {
            return Ok(s.clone());
        }
        let learned = self.learn(table).await?;
        if learned.is_empty() {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                "COLLECTION_TABLE_MISSING",
                format!(
                    "collection `{collection}`'s table does not exist on backend `{}`; create it",
                    self.name
                ),
            )
            .with("collection", collection));
        }
        let (columns, types): (Vec<Column>, Vec<String>) = learned.into_iter().unzip();
        let mut schema = TableSchema::new(collection, table, id, columns).map_err(|e| {
            Error::new(ErrorKind::FailedPrecondition, "COLLECTION_TABLE_MISSING", e)
        })?;
        schema.sql_types = types;
        let schema = Arc::new(schema);
        self.schemas.insert(cache_key, schema.clone());
        Ok(schema)
    }

    async fn rows(
        &self,
        schema: &TableSchema,
        plan: &Plan,
        after: Option<&[KeyValue]>,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<ReadRow>, Error> {
        let mut sql = Sql::new(self.dialect);
        let exprs: Vec<String> = plan
            .order
            .iter()
            .map(|(i, _)| *i)
            .chain(plan.select.iter().copied())
            .enumerate()
            // Aliased: an output named like a column would capture that
            // name in ORDER BY (Postgres) and defeat its index.
            .map(|(n, i)| {
                format!(
                    "{} AS prism_c{n}",
                    read_expr(self.dialect, &schema.columns[i], &schema.sql_types[i])
                )
            })
            .collect();
        let mut wheres = Vec::new();
        if let Some(cond) = &plan.filter {
            wheres.push(sql.cond(schema, cond));
        }
        if let Some(key) = after {
            if key.len() != plan.order.len() {
                return Err(Error::invalid_argument(
                    "INVALID_CURSOR",
                    "the cursor is not valid (malformed); start again without a cursor",
                ));
            }
            wheres.push(sql.after(schema, &plan.order, key));
        }
        let order: Vec<String> = plan
            .order
            .iter()
            .map(|(i, desc)| {
                format!(
                    "{} {}",
                    quote(&schema.columns[*i].name),
                    if *desc { "DESC" } else { "ASC" }
                )
            })
            .collect();
        sql.params.push(Param::Int(limit as i64));
        let limit_ph = sql.params.len();
        sql.params.push(Param::Int(offset as i64));
        let offset_ph = sql.params.len();
        sql.text = format!(
            "SELECT {} FROM {}{} ORDER BY {} LIMIT ${limit_ph} OFFSET ${offset_ph}",
            exprs.join(", "),
            quote(&schema.table),
            if wheres.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", wheres.join(" AND "))
            },
            order.join(", ")
        );
        // A lone SELECT: on a statement lane when one is free.
        let rows = self
            .lanes
            .fetch_all(&self.pool, sql.query())
            .await
            .map_err(|e| self.db_error(e))?;
        let keys = plan.order.len();
        rows.iter()
            .map(|row| {
                let mut key = Vec::with_capacity(keys);
                for (n, (i, _)) in plan.order.iter().enumerate() {
                    key.push(key_of(row, n, schema.columns[*i].kind)?);
                }
                let mut fields = Vec::with_capacity(plan.select.len());
                for (n, i) in plan.select.iter().enumerate() {
                    let c = &schema.columns[*i];
                    fields.push((c.name.clone(), decode(row, keys + n, c.kind)?));
                }
                Ok(ReadRow { key, fields })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(|e| self.db_error(e))
    }

    async fn count(&self, schema: &TableSchema, filter: Option<&Cond>) -> Result<i64, Error> {
        let mut sql = Sql::new(self.dialect);
        let cond = filter.map(|c| sql.cond(schema, c));
        sql.text = format!(
            "SELECT COUNT(*) FROM {}{}",
            quote(&schema.table),
            cond.map(|c| format!(" WHERE {c}")).unwrap_or_default()
        );
        let rows = self
            .lanes
            .fetch_all(&self.pool, sql.query())
            .await
            .map_err(|e| self.db_error(e))?;
        let row = rows
            .first()
            .ok_or_else(|| self.db_error(sqlx::Error::RowNotFound))?;
        row.try_get::<i64, _>(0).map_err(|e| self.db_error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_types_classified() {
        assert_eq!(quote("id; DROP TABLE x"), "\"id; DROP TABLE x\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(classify_sqlite("INTEGER"), Kind::Int);
        assert_eq!(classify_sqlite("TEXT"), Kind::Text);
        assert_eq!(classify_sqlite("REAL"), Kind::Float);
        assert_eq!(classify_sqlite("TIMESTAMP"), Kind::Timestamp);
        assert_eq!(
            classify_postgres("timestamp with time zone"),
            Kind::Timestamp
        );
        assert_eq!(classify_postgres("jsonb"), Kind::Json);
        assert_eq!(classify_postgres("uuid"), Kind::Text);
    }
}
