//! Fuzz target `reader`: arbitrary bytes as a Reader QueryRequest (filter,
//! sort, projection) planned against a collection with a column of every
//! kind, and the same bytes as a cursor. Planning must never panic (its
//! node, depth and bound-value limits are checked on the way); a plan
//! orders ties by the id, each column once; a cursor not signed by the
//! gateway is always refused.

use prism::{
    backends::reader::{Column, Cursors, Kind, TableSchema},
    proto::reader::v1 as pb,
    services::reader::plan,
};
use prost::Message as _;

fn schema() -> TableSchema {
    let column = |name: &str, kind, nullable| Column {
        name: name.into(),
        kind,
        nullable,
    };
    TableSchema::new(
        "things",
        "things",
        "id",
        vec![
            column("id", Kind::Int, false),
            column("price", Kind::Float, false),
            column("name", Kind::Text, true),
            column("done", Kind::Bool, false),
            column("at", Kind::Timestamp, false),
            column("doc", Kind::Json, true),
            column("blob", Kind::Bytes, true),
        ],
    )
    .expect("the schema is valid")
}

pub fn run(data: &[u8]) {
    let schema = schema();
    if let Ok(request) = pb::QueryRequest::decode(data) {
        let planned = plan::plan(
            &schema,
            &request.fields,
            request.filter.as_ref(),
            &request.sort,
        );
        if let Ok(planned) = planned {
            // Keyset paging: the id orders last ties, each column once.
            assert!(planned.order.iter().any(|(i, _)| *i == schema.id));
            let mut columns: Vec<usize> = planned.order.iter().map(|(i, _)| *i).collect();
            columns.sort_unstable();
            columns.dedup();
            assert_eq!(columns.len(), planned.order.len());
        }
        let _ = plan::query_digest("ns", "things", request.filter.as_ref(), &request.sort);
    }
    if let Ok(cursor) = std::str::from_utf8(data) {
        let cursors = Cursors::new(b"fuzz-secret".to_vec());
        assert!(
            cursors.decode(cursor, "digest").is_err(),
            "forged cursor `{cursor}`"
        );
    }
}
