//! `prism.reader.v1.ReaderService` (seed 002 §5): Read streams pages cut by
//! keyset with signed cursors, Query streams rows, Count and Get answer
//! once. A collection is a table the session's namespace exposes on the
//! session's backend (`namespaces.<ns>.collections`). Each page or chunk is
//! fetched only when the stream is polled for it, so a slow reader holds
//! the gateway to one page.

use std::sync::Arc;

use futures::StreamExt as _;
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::{
    backends::{
        missing_interface,
        reader::{
            self, param_for, unknown_collection, Cond, Cursors, KeyValue, Op, Plan, Position,
            ReadRow, ReaderHandle, TableSchema,
        },
        Interface,
    },
    config::{CollectionSpec, Pattern},
    error::{Error, Service},
    gate::{self, Gate, GateState, GatedStream, Kind},
    proto::reader::v1::{self as pb, reader_service_server::ReaderService},
};

pub mod plan;

use plan::{check_filter, plan, query_digest};

pub struct ReaderApi {
    gate: Gate<ReaderHandle>,
    cursors: Cursors,
}

type Call = gate::Call<ReaderHandle>;

gate::session_token_field!(
    pb::ReadRequest,
    pb::QueryRequest,
    pb::CountRequest,
    pb::GetRequest,
);

/// A collection resolved for a call.
struct Target {
    spec: CollectionSpec,
    schema: Arc<TableSchema>,
}

fn row(r: ReadRow) -> pb::Row {
    pb::Row {
        fields: r.fields.into_iter().collect(),
        metadata: None,
    }
}

impl ReaderApi {
    pub fn new(gates: &GateState, config: &crate::config::GatewayConfig) -> Self {
        let secret = match &config.server.cursor_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => rand::random::<[u8; 32]>().to_vec(),
        };
        ReaderApi {
            gate: gates.gate(
                Service::Reader,
                Pattern::Reader,
                Interface::ReaderPaged,
                |b| b.reader.as_ref(),
            ),
            cursors: Cursors::new(secret),
        }
    }

    async fn target(&self, call: &Call, collection: &str) -> Result<Target, Error> {
        crate::call::note_resource(collection);
        call.entry.config.options.allow_collection(collection)?;
        let spec = call
            .policy()
            .collections
            .get(collection)
            .filter(|c| c.backend == call.backend.name)
            .cloned()
            .ok_or_else(|| unknown_collection(collection))?;
        let schema = call
            .handle
            .paged
            .schema(collection, &spec.table, &spec.id)
            .await?;
        Ok(Target { spec, schema })
    }

    /// Filters need reader_query.
    fn filter<'a>(
        &self,
        call: &Call,
        filter: Option<&'a pb::Filter>,
    ) -> Result<Option<&'a pb::Filter>, Error> {
        let filter = filter.filter(|f| f.filter.is_some());
        if filter.is_some() && call.handle.query.is_none() {
            return Err(missing_interface(
                &call.backend.name,
                call.backend.kind,
                Interface::ReaderQuery,
            ));
        }
        Ok(filter)
    }
}

/// A count from the request that must not be negative, when set.
fn non_negative(n: Option<i32>, reason: &'static str, what: &str) -> Result<Option<u64>, Error> {
    match n {
        Some(n) => u64::try_from(n)
            .map(Some)
            .map_err(|_| Error::invalid_argument(reason, format!("{what} must not be negative"))),
        None => Ok(None),
    }
}

fn page_size(requested: i32, spec: &CollectionSpec) -> Result<usize, Error> {
    match requested {
        n if n < 0 => Err(Error::invalid_argument(
            "INVALID_PAGE_SIZE",
            "page_size must not be negative (0 = the collection's default)",
        )),
        0 => Ok(spec.default_page_size),
        n => Ok((n as usize).min(spec.max_page_size)),
    }
}

/// Cuts a page to the byte budget (at least one row is kept).
fn cut_to_bytes(rows: &mut Vec<pb::Row>, keys: &mut Vec<Vec<KeyValue>>, max_bytes: usize) -> bool {
    let mut total = 0;
    for (i, r) in rows.iter().enumerate() {
        total += r.encoded_len();
        if total > max_bytes && i > 0 {
            rows.truncate(i);
            keys.truncate(i);
            return true;
        }
    }
    false
}

/// What Query streams: a plan's rows in key order, read in keyset chunks
/// after an initial OFFSET (see [`super::chunked`]).
struct QuerySource {
    reader: ReaderHandle,
    target: Target,
    plan: Plan,
    /// The last row's key, once a chunk was read.
    after: Option<Vec<KeyValue>>,
    /// Rows to skip first; only the first chunk skips.
    offset: u64,
}

#[tonic::async_trait]
impl super::Chunks for QuerySource {
    type Item = ReadRow;

    async fn next_chunk(&mut self, want: usize) -> Result<Vec<ReadRow>, Error> {
        let rows = self
            .reader
            .paged
            .rows(
                &self.target.schema,
                &self.plan,
                self.after.as_deref(),
                self.offset,
                want,
            )
            .await?;
        self.offset = 0;
        self.after = rows.last().map(|r| r.key.clone());
        Ok(rows)
    }
}

#[tonic::async_trait]
impl ReaderService for ReaderApi {
    type ReadStream = GatedStream<pb::Page>;

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let call = self.gate.open(&request, Kind::Stream).await?;
        let req = request.into_inner();
        let target = self
            .target(&call, &req.collection)
            .await
            .map_err(|e| call.fail(e))?;
        let checked = (|| {
            let filter = self.filter(&call, req.filter.as_ref())?;
            let size = page_size(req.page_size, &target.spec)?;
            let plan = plan(&target.schema, &req.fields, filter, &req.sort)?;
            let digest = query_digest(call.ns(), &req.collection, filter, &req.sort);
            let start = match req.cursor.as_deref().filter(|c| !c.is_empty()) {
                Some(c) => Some(self.cursors.decode(c, &digest)?),
                None => None,
            };
            Ok((size, plan, digest, start))
        })();
        let (size, plan, digest, start) = checked.map_err(|e| call.fail(e))?;
        struct State {
            reader: ReaderHandle,
            target: Target,
            plan: Plan,
            cursors: Cursors,
            digest: String,
            after: Option<Vec<KeyValue>>,
            page: i32,
            size: usize,
            done: bool,
        }
        let state = State {
            page: start.as_ref().map_or(0, |p| p.page),
            after: start.map(|p| p.key),
            reader: call.handle.clone(),
            target,
            plan,
            cursors: self.cursors.clone(),
            digest,
            size,
            done: false,
        };
        let pages = futures::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            let fetched = st
                .reader
                .paged
                .rows(
                    &st.target.schema,
                    &st.plan,
                    st.after.as_deref(),
                    0,
                    st.size + 1,
                )
                .await;
            let mut fetched = match fetched {
                Ok(rows) => rows,
                Err(e) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
            };
            let mut has_more = fetched.len() > st.size;
            fetched.truncate(st.size);
            let (mut keys, mut rows): (Vec<_>, Vec<_>) =
                fetched.into_iter().map(|r| (r.key.clone(), row(r))).unzip();
            has_more |= cut_to_bytes(&mut rows, &mut keys, st.target.spec.max_page_bytes);
            st.page += 1;
            let next_cursor = match (has_more, keys.last()) {
                (true, Some(key)) => Some(st.cursors.encode(&Position {
                    q: st.digest.clone(),
                    page: st.page,
                    key: key.clone(),
                })),
                _ => None,
            };
            st.after = keys.pop();
            st.done = !has_more;
            let page = pb::Page {
                metadata: Some(pb::PageMetadata {
                    row_count: rows.len() as i32,
                    page_number: st.page,
                    generated_at: Some(crate::backends::timestamp_ms(crate::backends::epoch_ms())),
                }),
                rows,
                next_cursor,
                has_more,
            };
            Some((Ok(page), st))
        });
        Ok(Response::new(call.stream(pages)))
    }

    type QueryStream = GatedStream<pb::Row>;

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let call = self.gate.open(&request, Kind::Stream).await?;
        let req = request.into_inner();
        let target = self
            .target(&call, &req.collection)
            .await
            .map_err(|e| call.fail(e))?;
        let checked = (|| {
            let filter = self.filter(&call, req.filter.as_ref())?;
            let limit = non_negative(req.limit, "INVALID_LIMIT", "limit")?.unwrap_or(u64::MAX);
            let offset = non_negative(req.offset, "INVALID_OFFSET", "offset")?.unwrap_or(0);
            let plan = plan(&target.schema, &req.fields, filter, &req.sort)?;
            Ok((limit, offset, plan))
        })();
        let (limit, offset, plan) = checked.map_err(|e| call.fail(e))?;
        let chunk = target.spec.max_page_size;
        let source = QuerySource {
            reader: call.handle.clone(),
            target,
            plan,
            after: None,
            offset,
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let rows = super::chunked(source, limit, chunk).map(|r| r.map(row));
        Ok(Response::new(call.stream(rows)))
    }

    async fn count(
        &self,
        request: Request<pb::CountRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let target = self.target(call, &req.collection).await?;
                let filter = self.filter(call, req.filter.as_ref())?;
                let cond = filter
                    .map(|f| check_filter(&target.schema, f))
                    .transpose()?;
                let count = call
                    .handle
                    .paged
                    .count(&target.schema, cond.as_ref())
                    .await?;
                Ok(pb::CountResponse { count })
            })
            .await
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let target = self.target(call, &req.collection).await?;
                let schema = &target.schema;
                let id_column = &schema.columns[schema.id];
                let id_value = match id_column.kind {
                    reader::Kind::Int => req.id.parse::<f64>().ok().map(|n| prost_types::Value {
                        kind: Some(prost_types::value::Kind::NumberValue(n)),
                    }),
                    _ => Some(prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(req.id.clone())),
                    }),
                }
                .ok_or_else(|| {
                    Error::invalid_argument(
                        "INVALID_ID",
                        format!(
                            "collection `{}` has integer ids; `{}` is not one",
                            req.collection,
                            req.id.chars().take(64).collect::<String>()
                        ),
                    )
                })?;
                let id = param_for(id_column, &id_value)?;
                let mut plan = plan(schema, &req.fields, None, &[])?;
                plan.filter = Some(Cond::Cmp(schema.id, Op::Eq, id));
                let found = call
                    .handle
                    .paged
                    .rows(schema, &plan, None, 0, 1)
                    .await?
                    .pop()
                    .map(row);
                Ok(pb::GetResponse {
                    found: found.is_some(),
                    row: found,
                })
            })
            .await
    }
}
