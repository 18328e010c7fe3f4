//! `prism.reader.v1.ReaderService` (seed 002 §5): Read streams pages cut by
//! keyset with signed cursors, Query streams rows, Count and Get answer
//! once. A collection is a table the session's namespace exposes on the
//! session's backend (`namespaces.<ns>.collections`). Each page or chunk is
//! fetched only when the stream is polled for it, so a slow reader holds
//! the gateway to one page.

use std::{collections::HashMap, pin::Pin, sync::Arc};

use futures::Stream;
use prost::Message as _;
use tonic::{Request, Response, Status};

use super::{session_backend, session_token};
use crate::{
    backends::{
        missing_interface,
        reader::{
            self, param_for, plan, query_digest, unknown_collection, Cond, Cursors, KeyValue, Op,
            Plan, Position, ReadRow, ReaderHandle, TableSchema,
        },
        Backend, Backends, Interface,
    },
    config::{CollectionSpec, Pattern},
    error::{Error, Service},
    proto::reader::v1::{self as pb, reader_service_server::ReaderService},
    session::{SessionEntry, SessionRegistry},
};

pub struct ReaderApi {
    registry: Arc<SessionRegistry>,
    backends: Arc<Backends>,
    /// (namespace, collection) → its spec.
    collections: HashMap<(String, String), CollectionSpec>,
    cursors: Cursors,
}

struct Call {
    entry: Arc<SessionEntry>,
    backend: Arc<Backend>,
    reader: ReaderHandle,
}

/// A collection resolved for a call.
struct Target {
    spec: CollectionSpec,
    schema: Arc<TableSchema>,
}

fn status(e: Error) -> Status {
    e.to_status(Service::Reader)
}

fn row(r: ReadRow) -> pb::Row {
    pb::Row {
        fields: r.fields.into_iter().collect(),
        metadata: None,
    }
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl ReaderApi {
    pub fn new(
        registry: Arc<SessionRegistry>,
        backends: Arc<Backends>,
        config: &crate::config::GatewayConfig,
    ) -> Self {
        let collections = config
            .namespaces
            .iter()
            .flat_map(|(ns, spec)| {
                spec.collections
                    .iter()
                    .map(move |(name, c)| ((ns.clone(), name.clone()), c.clone()))
            })
            .collect();
        let secret = match &config.server.cursor_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => rand::random::<[u8; 32]>().to_vec(),
        };
        ReaderApi {
            registry,
            backends,
            collections,
            cursors: Cursors::new(secret),
        }
    }

    fn call<T>(&self, request: &Request<T>, field: fn(&T) -> &String) -> Result<Call, Status> {
        let token = session_token(field(request.get_ref()), request);
        let (entry, backend) =
            session_backend(&self.registry, &self.backends, token, Pattern::Reader)
                .map_err(status)?;
        let reader = backend.reader.clone().ok_or_else(|| {
            status(missing_interface(
                &backend.name,
                backend.kind,
                Interface::ReaderPaged,
            ))
        })?;
        Ok(Call {
            entry,
            backend,
            reader,
        })
    }

    async fn target(&self, call: &Call, collection: &str) -> Result<Target, Error> {
        crate::metrics::note_resource(collection);
        let spec = self
            .collections
            .get(&(call.entry.namespace().to_string(), collection.to_string()))
            .filter(|c| c.backend == call.backend.name)
            .cloned()
            .ok_or_else(|| unknown_collection(collection))?;
        let schema = call
            .reader
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
        if filter.is_some() && call.reader.query.is_none() {
            return Err(missing_interface(
                &call.backend.name,
                call.backend.kind,
                Interface::ReaderQuery,
            ));
        }
        Ok(filter)
    }
}

/// A stream stops at its next page or chunk once its session has ended.
fn session_open(entry: &SessionEntry) -> Result<(), Error> {
    if entry.state().is_ended() {
        return Err(Error::unauthenticated(
            "SESSION_CLOSED",
            "the session ended; open a new session and read again",
        ));
    }
    Ok(())
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

#[tonic::async_trait]
impl ReaderService for ReaderApi {
    type ReadStream = Boxed<pb::Page>;

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let call = self.call(&request, |r| &r.session_token)?;
        let req = request.into_inner();
        call.entry.record_request(req.encoded_len(), 0);
        let target = self.target(&call, &req.collection).await.map_err(status)?;
        let filter = self.filter(&call, req.filter.as_ref()).map_err(status)?;
        let size = page_size(req.page_size, &target.spec).map_err(status)?;
        let plan = plan(&target.schema, &req.fields, filter, &req.sort).map_err(status)?;
        let digest = query_digest(call.entry.namespace(), &req.collection, filter, &req.sort);
        let start = match req.cursor.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => Some(self.cursors.decode(c, &digest).map_err(status)?),
            None => None,
        };
        struct State {
            call: Call,
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
            call,
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
            if let Err(e) = session_open(&st.call.entry) {
                st.done = true;
                return Some((Err(status(e)), st));
            }
            let fetched = st
                .call
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
                    return Some((Err(status(e)), st));
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
            st.call.entry.record_request(0, page.encoded_len());
            Some((Ok(page), st))
        });
        Ok(Response::new(Box::pin(pages)))
    }

    type QueryStream = Boxed<pb::Row>;

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let call = self.call(&request, |r| &r.session_token)?;
        let req = request.into_inner();
        call.entry.record_request(req.encoded_len(), 0);
        let target = self.target(&call, &req.collection).await.map_err(status)?;
        let filter = self.filter(&call, req.filter.as_ref()).map_err(status)?;
        let limit = match req.limit {
            Some(n) if n < 0 => {
                return Err(status(Error::invalid_argument(
                    "INVALID_LIMIT",
                    "limit must not be negative",
                )))
            }
            Some(n) => n as u64,
            None => u64::MAX,
        };
        let offset = match req.offset {
            Some(n) if n < 0 => {
                return Err(status(Error::invalid_argument(
                    "INVALID_OFFSET",
                    "offset must not be negative",
                )))
            }
            Some(n) => n as u64,
            None => 0,
        };
        let plan = plan(&target.schema, &req.fields, filter, &req.sort).map_err(status)?;
        let chunk = target.spec.max_page_size;
        struct State {
            call: Call,
            target: Target,
            plan: Plan,
            buffered: std::vec::IntoIter<ReadRow>,
            after: Option<Vec<KeyValue>>,
            offset: u64,
            left: u64,
            exhausted: bool,
        }
        let state = State {
            call,
            target,
            plan,
            buffered: Vec::new().into_iter(),
            after: None,
            offset,
            left: limit,
            exhausted: false,
        };
        let rows = futures::stream::unfold(state, move |mut st| async move {
            if st.left == 0 {
                return None;
            }
            if let Some(r) = st.buffered.next() {
                st.left -= 1;
                let r = row(r);
                st.call.entry.record_request(0, r.encoded_len());
                return Some((Ok(r), st));
            }
            if st.exhausted {
                return None;
            }
            if let Err(e) = session_open(&st.call.entry) {
                st.left = 0;
                return Some((Err(status(e)), st));
            }
            // The next chunk, only now that the previous one was taken.
            let want = (chunk as u64).min(st.left) as usize;
            let fetched = st
                .call
                .reader
                .paged
                .rows(
                    &st.target.schema,
                    &st.plan,
                    st.after.as_deref(),
                    st.offset,
                    want,
                )
                .await;
            match fetched {
                Err(e) => {
                    st.left = 0;
                    Some((Err(status(e)), st))
                }
                Ok(rows) => {
                    st.offset = 0;
                    st.exhausted = rows.len() < want;
                    st.after = rows.last().map(|r| r.key.clone());
                    let mut it = rows.into_iter();
                    let first = it.next()?;
                    st.buffered = it;
                    st.left -= 1;
                    Some((Ok(row(first)), st))
                }
            }
        });
        Ok(Response::new(Box::pin(rows)))
    }

    async fn count(
        &self,
        request: Request<pb::CountRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        let call = self.call(&request, |r| &r.session_token)?;
        let req = request.into_inner();
        let target = self.target(&call, &req.collection).await.map_err(status)?;
        let filter = self.filter(&call, req.filter.as_ref()).map_err(status)?;
        let cond = filter
            .map(|f| reader::check_filter(&target.schema, f))
            .transpose()
            .map_err(status)?;
        let count = call
            .reader
            .paged
            .count(&target.schema, cond.as_ref())
            .await
            .map_err(status)?;
        let response = pb::CountResponse { count };
        call.entry
            .record_request(req.encoded_len(), response.encoded_len());
        Ok(Response::new(response))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let call = self.call(&request, |r| &r.session_token)?;
        let req = request.into_inner();
        let target = self.target(&call, &req.collection).await.map_err(status)?;
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
            status(Error::invalid_argument(
                "INVALID_ID",
                format!(
                    "collection `{}` has integer ids; `{}` is not one",
                    req.collection,
                    req.id.chars().take(64).collect::<String>()
                ),
            ))
        })?;
        let id = param_for(id_column, &id_value).map_err(status)?;
        let mut plan = plan(schema, &req.fields, None, &[]).map_err(status)?;
        plan.filter = Some(Cond::Cmp(schema.id, Op::Eq, id));
        let found = call
            .reader
            .paged
            .rows(schema, &plan, None, 0, 1)
            .await
            .map_err(status)?
            .pop()
            .map(row);
        let response = pb::GetResponse {
            found: found.is_some(),
            row: found,
        };
        call.entry
            .record_request(req.encoded_len(), response.encoded_len());
        Ok(Response::new(response))
    }
}
