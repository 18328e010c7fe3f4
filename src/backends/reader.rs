//! The Reader model (seed 002 §5): collections are tables whose columns the
//! gateway learns from the database; reads are plans over known columns
//! only, with typed, bound values; pages are cut by keyset (the sort key
//! plus the id), never OFFSET; cursors are opaque and tamper-evident.
//!
//! - `reader_paged` ([`ReaderPaged`]): Read, Count, Get;
//! - `reader_query` ([`ReaderQuery`]): filters and Query.
//!
//! A request's filter and sort are compiled into a [`Plan`] by the Reader
//! service (`services/reader/plan.rs`); backends see only plans.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use prost_types::{value::Kind as V, Value};
use sha2::Sha256;

use crate::error::{Error, ErrorKind};

/// How the gateway treats a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Float,
    Text,
    Bool,
    /// Rendered as RFC 3339 UTC strings.
    Timestamp,
    /// JSON/JSONB, rendered as Struct/List values.
    Json,
    /// Rendered as lowercase hex strings.
    Bytes,
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
    pub nullable: bool,
}

/// A collection's table as learned from the database.
#[derive(Debug, Clone)]
pub struct TableSchema {
    pub collection: String,
    pub table: String,
    pub id: usize,
    pub columns: Vec<Column>,
    /// Each column's type as the database names it.
    pub sql_types: Vec<String>,
    by_name: HashMap<String, usize>,
}

impl TableSchema {
    pub fn new(
        collection: &str,
        table: &str,
        id_column: &str,
        columns: Vec<Column>,
    ) -> Result<Self, String> {
        let by_name: HashMap<String, usize> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let id = *by_name
            .get(id_column)
            .ok_or_else(|| format!("table `{table}` has no id column `{id_column}`"))?;
        Ok(TableSchema {
            collection: collection.to_string(),
            table: table.to_string(),
            id,
            sql_types: vec![String::new(); columns.len()],
            columns,
            by_name,
        })
    }

    /// The column `name`, or INVALID_ARGUMENT naming it.
    pub fn column(&self, name: &str) -> Result<usize, Error> {
        self.by_name.get(name).copied().ok_or_else(|| {
            Error::invalid_argument(
                "UNKNOWN_FIELD",
                format!(
                    "collection `{}` has no field `{}`; its fields are: {}",
                    self.collection,
                    name.chars().take(64).collect::<String>(),
                    self.columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .with("field", name.chars().take(64).collect::<String>())
        })
    }
}

/// A value bound to a statement parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
}

/// What to read: projection, filter and order, checked against the schema.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Columns returned to the client.
    pub select: Vec<usize>,
    pub filter: Option<Cond>,
    /// The order: the requested sort, then the id (the tiebreaker, in the
    /// last field's direction).
    pub order: Vec<(usize, bool)>,
}

/// A checked filter.
#[derive(Debug, Clone)]
pub enum Cond {
    Cmp(usize, Op, Param),
    IsNull(usize, bool),
    In(usize, bool, Vec<Param>),
    Text(usize, TextOp, String),
    And(Vec<Cond>),
    Or(Vec<Cond>),
    Not(Box<Cond>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    pub fn sql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "<>",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextOp {
    Contains,
    StartsWith,
    EndsWith,
}

/// INVALID_ARGUMENT with `reason`, for a request a plan cannot be made of.
pub fn bad(reason: &'static str, message: String) -> Error {
    Error::invalid_argument(reason, message)
}

/// The parameter for `value` compared with column `c`, or INVALID_ARGUMENT
/// naming the field when the types do not fit.
pub fn param_for(c: &Column, value: &Value) -> Result<Param, Error> {
    value_param(c, value, "compared with it")
}

/// The parameter for `value` used with column `c` (`use_` completes "… cannot
/// be": "compared with it", "stored in it").
pub fn value_param(c: &Column, value: &Value, use_: &str) -> Result<Param, Error> {
    let mismatch = |what: &str| {
        bad(
            "TYPE_MISMATCH",
            format!(
                "field `{}` is {}; {what} cannot be {use_}",
                c.name,
                kind_name(c.kind)
            ),
        )
        .with("field", c.name.clone())
    };
    let kind = value.kind.as_ref();
    Ok(match (c.kind, kind) {
        (Kind::Int, Some(V::NumberValue(n))) => {
            if n.fract() != 0.0 || !n.is_finite() || n.abs() > 9.0e15 {
                return Err(mismatch("a non-integral number"));
            }
            Param::Int(*n as i64)
        }
        (Kind::Float, Some(V::NumberValue(n))) if n.is_finite() => Param::Float(*n),
        (Kind::Text | Kind::Json | Kind::Bytes, Some(V::StringValue(s))) => Param::Text(s.clone()),
        (Kind::Timestamp, Some(V::StringValue(s))) => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| mismatch("a string that is not an RFC 3339 time"))?;
            Param::Text(s.clone())
        }
        (Kind::Bool, Some(V::BoolValue(b))) => Param::Bool(*b),
        (_, Some(V::NumberValue(_))) => return Err(mismatch("a number")),
        (_, Some(V::StringValue(_))) => return Err(mismatch("a string")),
        (_, Some(V::BoolValue(_))) => return Err(mismatch("a boolean")),
        (_, Some(V::NullValue(_)) | None) => return Err(mismatch("null")),
        (_, Some(V::ListValue(_))) => return Err(mismatch("a list")),
        (_, Some(V::StructValue(_))) => return Err(mismatch("an object")),
    })
}

pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Int => "an integer",
        Kind::Float => "a number",
        Kind::Text => "a string",
        Kind::Bool => "a boolean",
        Kind::Timestamp => "a timestamp",
        Kind::Json => "JSON",
        Kind::Bytes => "bytes",
    }
}

// ---- cursors ----------------------------------------------------------------

type HmacSha256 = Hmac<Sha256>;

/// Where a page ends: the order key of its last row, and its number.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// The query the cursor belongs to (a digest).
    pub q: String,
    pub page: i32,
    pub key: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum KeyValue {
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
}

impl From<KeyValue> for Param {
    fn from(k: KeyValue) -> Param {
        match k {
            KeyValue::Int(i) => Param::Int(i),
            KeyValue::Float(f) => Param::Float(f),
            KeyValue::Text(s) => Param::Text(s),
            KeyValue::Bool(b) => Param::Bool(b),
        }
    }
}

/// Signs and encodes cursors with the gateway's secret.
#[derive(Clone)]
pub struct Cursors {
    secret: Arc<Vec<u8>>,
}

fn invalid_cursor(why: &str) -> Error {
    bad(
        "INVALID_CURSOR",
        format!("the cursor is not valid ({why}); start again without a cursor"),
    )
}

impl Cursors {
    pub fn new(secret: Vec<u8>) -> Self {
        Cursors {
            secret: Arc::new(secret),
        }
    }

    fn mac(&self, body: &[u8]) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("hmac takes any key");
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }

    pub fn encode(&self, p: &Position) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let body = serde_json::to_vec(p).expect("positions serialize");
        format!("{}.{}", b64.encode(&body), b64.encode(self.mac(&body)))
    }

    /// Decodes a cursor of this query, refusing anything tampered with.
    pub fn decode(&self, cursor: &str, digest: &str) -> Result<Position, Error> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (body, tag) = cursor
            .split_once('.')
            .ok_or_else(|| invalid_cursor("malformed"))?;
        let body = b64.decode(body).map_err(|_| invalid_cursor("malformed"))?;
        let tag = b64.decode(tag).map_err(|_| invalid_cursor("malformed"))?;
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("hmac takes any key");
        mac.update(&body);
        mac.verify_slice(&tag)
            .map_err(|_| invalid_cursor("it was not issued by this gateway or was modified"))?;
        let p: Position = serde_json::from_slice(&body).map_err(|_| invalid_cursor("malformed"))?;
        if p.q != digest {
            return Err(invalid_cursor("it belongs to another query"));
        }
        Ok(p)
    }
}

/// A row as read: the order key, then the selected values.
#[derive(Debug, Clone)]
pub struct ReadRow {
    pub key: Vec<KeyValue>,
    pub fields: Vec<(String, Value)>,
}

/// reader_paged.
#[async_trait]
pub trait ReaderPaged: Send + Sync {
    /// The schema of a table (learned from the database, then remembered).
    async fn schema(
        &self,
        collection: &str,
        table: &str,
        id: &str,
    ) -> Result<Arc<TableSchema>, Error>;

    /// Rows in plan order after `after` (a key from a previous page),
    /// skipping `offset`, at most `limit`.
    async fn rows(
        &self,
        schema: &TableSchema,
        plan: &Plan,
        after: Option<&[KeyValue]>,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<ReadRow>, Error>;

    async fn count(&self, schema: &TableSchema, filter: Option<&Cond>) -> Result<i64, Error>;
}

/// reader_query: filters and Query.
pub trait ReaderQuery: ReaderPaged {}

#[derive(Clone)]
pub struct ReaderHandle {
    pub paged: Arc<dyn ReaderPaged>,
    pub query: Option<Arc<dyn ReaderQuery>>,
}

/// Declares a Reader backend's interfaces: its registry entry and its
/// [`ReaderHandle`] come from this one list.
#[macro_export]
macro_rules! reader_interfaces {
    ($ty:ty: paged $(, $iface:ident)*) => {
        impl $ty {
            pub const READER_INTERFACES: &'static [$crate::backends::Interface] = &[
                $crate::backends::Interface::ReaderPaged,
                $($crate::reader_interfaces!(@interface $iface),)*
            ];

            pub fn reader_handle(
                self: &std::sync::Arc<Self>,
            ) -> $crate::backends::reader::ReaderHandle {
                #[allow(unused_mut)]
                let mut handle = $crate::backends::reader::ReaderHandle {
                    paged: self.clone(),
                    query: None,
                };
                $(handle.$iface = Some(self.clone());)*
                handle
            }
        }
    };
    (@interface query) => { $crate::backends::Interface::ReaderQuery };
}

/// An error for a collection the session's namespace does not expose.
pub fn unknown_collection(name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        "COLLECTION_NOT_FOUND",
        format!(
            "this session's namespace exposes no collection `{}` on its backend",
            name.chars().take(64).collect::<String>()
        ),
    )
    .with("collection", name.chars().take(64).collect::<String>())
}
