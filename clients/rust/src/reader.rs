//! Reader: pages and rows of a collection as streams that follow the
//! gateway's cursors, and resume from the last cursor they gave when a
//! stream fails; counts and single rows by id. Filters are built with
//! [`Filter`]'s constructors; values are `prost_types::Value`s (strings,
//! numbers, booleans convert with `.into()`).

use std::sync::Arc;

use futures::{Stream, StreamExt, TryStreamExt};
use prism_proto::reader::v1::{
    self as pb, composite_filter::LogicalOperator, field_filter::Operator,
    reader_service_client::ReaderServiceClient, sort::Direction,
};
use prost_types::Value;
use tonic::transport::Channel;

use crate::{
    error::Result,
    resume::{resuming, Opening, Resumable},
    retry::Resend,
    session::Session,
};

pub use pb::{Page, Row};

/// The Reader API of a session: [`Session::reader`].
#[derive(Debug, Clone)]
pub struct Reader {
    session: Session,
    stub: ReaderServiceClient<Channel>,
}

/// A condition on rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter(pub pb::Filter);

impl Filter {
    fn field(field: &str, op: Operator, value: impl Into<Value>) -> Filter {
        Filter(pb::Filter {
            filter: Some(pb::filter::Filter::Field(pb::FieldFilter {
                field: field.to_string(),
                op: op as i32,
                value: Some(value.into()),
            })),
        })
    }

    fn composite(op: LogicalOperator, filters: Vec<Filter>) -> Filter {
        Filter(pb::Filter {
            filter: Some(pb::filter::Filter::Composite(pb::CompositeFilter {
                op: op as i32,
                filters: filters.into_iter().map(|f| f.0).collect(),
            })),
        })
    }

    /// `field = value`.
    pub fn eq(field: &str, value: impl Into<Value>) -> Filter {
        Self::field(field, Operator::Equals, value)
    }

    /// `field <> value`.
    pub fn ne(field: &str, value: impl Into<Value>) -> Filter {
        Self::field(field, Operator::NotEquals, value)
    }

    /// `field > value`.
    pub fn gt(field: &str, value: impl Into<Value>) -> Filter {
        Self::field(field, Operator::GreaterThan, value)
    }

    /// `field >= value`.
    pub fn ge(field: &str, value: impl Into<Value>) -> Filter {
        Self::field(field, Operator::GreaterThanOrEquals, value)
    }

    /// `field < value`.
    pub fn lt(field: &str, value: impl Into<Value>) -> Filter {
        Self::field(field, Operator::LessThan, value)
    }

    /// `field <= value`.
    pub fn le(field: &str, value: impl Into<Value>) -> Filter {
        Self::field(field, Operator::LessThanOrEquals, value)
    }

    /// `field` is one of `values`.
    pub fn is_in(field: &str, values: impl IntoIterator<Item = impl Into<Value>>) -> Filter {
        let list: Vec<Value> = values.into_iter().map(Into::into).collect();
        Self::field(field, Operator::In, list)
    }

    /// `field` starts with `prefix`.
    pub fn starts_with(field: &str, prefix: &str) -> Filter {
        Self::field(field, Operator::StartsWith, prefix.to_string())
    }

    /// Every filter holds.
    pub fn and(filters: impl IntoIterator<Item = Filter>) -> Filter {
        Self::composite(LogicalOperator::And, filters.into_iter().collect())
    }

    /// At least one filter holds.
    pub fn or(filters: impl IntoIterator<Item = Filter>) -> Filter {
        Self::composite(LogicalOperator::Or, filters.into_iter().collect())
    }

    /// The filter does not hold.
    pub fn negate(filter: Filter) -> Filter {
        Self::composite(LogicalOperator::Not, vec![filter])
    }
}

/// A read of a collection: what to select and in which order, then
/// [`Read::pages`] or [`Read::rows`].
#[derive(Debug, Clone)]
#[must_use = "a read does nothing until its pages or rows are streamed"]
pub struct Read {
    reader: Reader,
    request: pb::ReadRequest,
}

impl Session {
    /// The Reader API over this session.
    pub fn reader(&self) -> Reader {
        Reader {
            stub: ReaderServiceClient::new(self.shared().client.channel.clone()),
            session: self.clone(),
        }
    }
}

impl Reader {
    /// Starts a read of `collection` (every row, every field, the
    /// collection's page size and key order, until narrowed).
    pub fn read(&self, collection: &str) -> Read {
        Read {
            reader: self.clone(),
            request: pb::ReadRequest {
                session_token: String::new(),
                collection: collection.to_string(),
                page_size: 0,
                cursor: None,
                fields: Vec::new(),
                filter: None,
                sort: Vec::new(),
            },
        }
    }

    /// How many rows of `collection` match `filter` (all when `None`).
    pub async fn count(&self, collection: &str, filter: Option<Filter>) -> Result<i64> {
        let request = pb::CountRequest {
            session_token: String::new(),
            collection: collection.to_string(),
            filter: filter.map(|f| f.0),
        };
        let counted = unary!(self, Resend::Safe, count, request)?;
        Ok(counted.count)
    }

    /// The row of `collection` with this id, or `None`.
    pub async fn get(&self, collection: &str, id: &str) -> Result<Option<Row>> {
        let request = pb::GetRequest {
            session_token: String::new(),
            collection: collection.to_string(),
            id: id.to_string(),
            fields: Vec::new(),
        };
        let got = unary!(self, Resend::Safe, get, request)?;
        Ok(got.row.filter(|_| got.found))
    }
}

impl Read {
    /// Only these fields of each row.
    pub fn fields(mut self, fields: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.request.fields = fields.into_iter().map(Into::into).collect();
        self
    }

    /// Only rows matching `filter`.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.request.filter = Some(filter.0);
        self
    }

    /// Ordered by `field`, ascending (after any earlier sort).
    pub fn sort_asc(mut self, field: &str) -> Self {
        self.request.sort.push(pb::Sort {
            field: field.to_string(),
            direction: Direction::Asc as i32,
        });
        self
    }

    /// Ordered by `field`, descending (after any earlier sort).
    pub fn sort_desc(mut self, field: &str) -> Self {
        self.request.sort.push(pb::Sort {
            field: field.to_string(),
            direction: Direction::Desc as i32,
        });
        self
    }

    /// Rows per page (the gateway caps it at the collection's maximum).
    pub fn page_size(mut self, rows: u32) -> Self {
        self.request.page_size = i32::try_from(rows).unwrap_or(i32::MAX);
        self
    }

    /// Continue a read that gave this cursor (`Page::next_cursor`).
    pub fn after(mut self, cursor: impl Into<String>) -> Self {
        self.request.cursor = Some(cursor.into());
        self
    }

    /// The pages, in order, to the last.
    pub fn pages(self) -> impl Stream<Item = Result<Page>> + Send + 'static {
        let position = Cursor {
            stub: self.reader.stub.clone(),
            request: self.request,
            last: false,
        };
        resuming(self.reader.session.clone(), position)
    }

    /// The rows of every page, in order.
    pub fn rows(self) -> impl Stream<Item = Result<Row>> + Send + 'static {
        self.pages()
            .map_ok(|page| futures::stream::iter(page.rows.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }
}

/// A read's position: the cursor after the last page received.
#[derive(Debug, Clone)]
struct Cursor {
    stub: ReaderServiceClient<Channel>,
    request: pb::ReadRequest,
    /// The last page has been received.
    last: bool,
}

impl Resumable for Cursor {
    type Item = Page;
    fn open(&self, session: &Session, token: Arc<str>) -> Opening<Page> {
        let request = session
            .shared()
            .stream_request(&token, self.request.clone());
        let mut stub = self.stub.clone();
        Box::pin(async move { stub.read(request).await })
    }

    fn seen(&mut self, page: &Page) {
        self.request.cursor = page.next_cursor.clone();
        self.last = !page.has_more;
    }

    fn finished(&self) -> bool {
        self.last
    }
}
