//! The Reader model (seed 002 §5): collections are tables whose columns the
//! gateway learns from the database; reads are plans over known columns
//! only, with typed, bound values; pages are cut by keyset (the sort key
//! plus the id), never OFFSET; cursors are opaque and tamper-evident.
//!
//! - `reader_paged` ([`ReaderPaged`]): Read, Count, Get;
//! - `reader_query` ([`ReaderQuery`]): filters and Query.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use prost::Message as _;
use prost_types::{value::Kind as V, Value};
use sha2::{Digest, Sha256};

use crate::{
    error::{Error, ErrorKind},
    proto::reader::v1 as pb,
};

/// Most nodes a filter may have, and how deep it may nest.
const MAX_FILTER_NODES: usize = 256;
const MAX_FILTER_DEPTH: usize = 16;

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

fn bad(reason: &'static str, message: String) -> Error {
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

/// Checks a filter against the schema.
pub fn check_filter(schema: &TableSchema, filter: &pb::Filter) -> Result<Cond, Error> {
    let mut nodes = 0;
    check_node(schema, filter, 0, &mut nodes)
}

fn check_node(
    schema: &TableSchema,
    filter: &pb::Filter,
    depth: usize,
    nodes: &mut usize,
) -> Result<Cond, Error> {
    *nodes += 1;
    if *nodes > MAX_FILTER_NODES || depth > MAX_FILTER_DEPTH {
        return Err(bad(
            "FILTER_TOO_COMPLEX",
            format!(
                "filters may have at most {MAX_FILTER_NODES} nodes nested {MAX_FILTER_DEPTH} deep"
            ),
        ));
    }
    use pb::{
        composite_filter::LogicalOperator as L, field_filter::Operator as O, filter::Filter as F,
    };
    match &filter.filter {
        None => Err(bad(
            "INVALID_FILTER",
            "a filter must set `field` or `composite`".into(),
        )),
        Some(F::Composite(c)) => {
            let children = c
                .filters
                .iter()
                .map(|f| check_node(schema, f, depth + 1, nodes))
                .collect::<Result<Vec<_>, _>>()?;
            match L::try_from(c.op) {
                Ok(L::And) => Ok(Cond::And(children)),
                Ok(L::Or) => Ok(Cond::Or(children)),
                Ok(L::Not) => {
                    let [only]: [Cond; 1] = children.try_into().map_err(|_| {
                        bad("INVALID_FILTER", "NOT takes exactly one filter".into())
                    })?;
                    Ok(Cond::Not(Box::new(only)))
                }
                _ => Err(bad(
                    "INVALID_FILTER",
                    "a composite filter needs op AND, OR or NOT".into(),
                )),
            }
        }
        Some(F::Field(f)) => {
            let i = schema.column(&f.field)?;
            let c = &schema.columns[i];
            let value = f.value.clone().unwrap_or_default();
            let is_null = matches!(value.kind, Some(V::NullValue(_)) | None);
            let op = O::try_from(f.op).unwrap_or(O::Unspecified);
            let cmp =
                |op: Op| -> Result<Cond, Error> { Ok(Cond::Cmp(i, op, param_for(c, &value)?)) };
            match op {
                O::Equals if is_null => Ok(Cond::IsNull(i, true)),
                O::NotEquals if is_null => Ok(Cond::IsNull(i, false)),
                O::Equals => cmp(Op::Eq),
                O::NotEquals => cmp(Op::Ne),
                O::GreaterThan => cmp(Op::Gt),
                O::GreaterThanOrEquals => cmp(Op::Ge),
                O::LessThan => cmp(Op::Lt),
                O::LessThanOrEquals => cmp(Op::Le),
                O::In | O::NotIn => {
                    let Some(V::ListValue(list)) = &value.kind else {
                        return Err(bad(
                            "INVALID_FILTER",
                            format!("IN and NOT_IN on `{}` take a list value", c.name),
                        ));
                    };
                    if list.values.len() > 1000 {
                        return Err(bad(
                            "FILTER_TOO_COMPLEX",
                            "IN lists hold at most 1000 values".into(),
                        ));
                    }
                    let params = list
                        .values
                        .iter()
                        .map(|v| param_for(c, v))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(Cond::In(i, op == O::In, params))
                }
                O::Contains | O::StartsWith | O::EndsWith => {
                    let (Kind::Text, Some(V::StringValue(s))) = (c.kind, &value.kind) else {
                        return Err(bad(
                            "TYPE_MISMATCH",
                            format!(
                                "CONTAINS, STARTS_WITH and ENDS_WITH take a string and a text \
                                 field; `{}` is {}",
                                c.name,
                                kind_name(c.kind)
                            ),
                        )
                        .with("field", c.name.clone()));
                    };
                    let op = match op {
                        O::Contains => TextOp::Contains,
                        O::StartsWith => TextOp::StartsWith,
                        _ => TextOp::EndsWith,
                    };
                    Ok(Cond::Text(i, op, s.clone()))
                }
                O::Unspecified => Err(bad(
                    "INVALID_FILTER",
                    format!("the filter on `{}` has no operator", c.name),
                )),
            }
        }
    }
}

/// Builds a plan: projection, filter, and the keyset order.
pub fn plan(
    schema: &TableSchema,
    fields: &[String],
    filter: Option<&pb::Filter>,
    sort: &[pb::Sort],
) -> Result<Plan, Error> {
    let select = if fields.is_empty() {
        (0..schema.columns.len()).collect()
    } else {
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            let i = schema.column(f)?;
            if !out.contains(&i) {
                out.push(i);
            }
        }
        out
    };
    let filter = filter.map(|f| check_filter(schema, f)).transpose()?;
    let mut order = Vec::with_capacity(sort.len() + 1);
    for s in sort {
        let i = schema.column(&s.field)?;
        let c = &schema.columns[i];
        if c.nullable {
            return Err(bad(
                "UNSORTABLE_FIELD",
                format!(
                    "field `{}` may be null and cannot order pages (keyset paging needs a \
                     total order); sort by NOT NULL fields",
                    c.name
                ),
            )
            .with("field", c.name.clone()));
        }
        if matches!(c.kind, Kind::Json | Kind::Bytes) {
            return Err(bad(
                "UNSORTABLE_FIELD",
                format!(
                    "field `{}` is {} and cannot be sorted",
                    c.name,
                    kind_name(c.kind)
                ),
            ));
        }
        let desc = s.direction == pb::sort::Direction::Desc as i32;
        if order.iter().any(|(j, _)| *j == i) {
            return Err(bad(
                "INVALID_SORT",
                format!("field `{}` is sorted twice", c.name),
            ));
        }
        order.push((i, desc));
    }
    // The id breaks ties, in the last field's direction: one direction
    // throughout lets an index on (fields..., id) serve the whole order.
    if !order.iter().any(|(i, _)| *i == schema.id) {
        let desc = order.last().is_some_and(|(_, d)| *d);
        order.push((schema.id, desc));
    }
    Ok(Plan {
        select,
        filter,
        order,
    })
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

/// A digest of what makes a query: a cursor only continues the same one.
pub fn query_digest(
    ns: &str,
    collection: &str,
    filter: Option<&pb::Filter>,
    sort: &[pb::Sort],
) -> String {
    let mut h = Sha256::new();
    for part in [ns, collection] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    if let Some(f) = filter {
        h.update(f.encode_to_vec());
    }
    h.update([0]);
    for s in sort {
        h.update(s.encode_to_vec());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..12])
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
