//! gRPC services, one file each. A service is a plain struct holding shared
//! state in `Arc`s; every data call enters through [`crate::gate`], so a
//! service holds only request validation, the backend call and the reply.

use futures::Stream;

use crate::error::Error;

pub mod cache;
pub mod claim_check;
pub mod config;
pub mod group_commit;
pub mod keys;
pub mod keyvalue;
pub mod kv_cache;
pub mod pubsub;
pub mod queue;
pub mod reader;
pub mod session;
pub mod transact;

pub use crate::clock::duration_from_proto as duration;

/// An optional stream bound given as a duration (Subscribe's timeout or
/// max_duration): unset is `None`; under a millisecond, negative or
/// malformed is INVALID_ARGUMENT.
pub fn optional_positive_duration(
    d: Option<prost_types::Duration>,
    reason: &'static str,
    what: &str,
) -> Result<Option<std::time::Duration>, Error> {
    match d {
        None => Ok(None),
        Some(d) => duration(&d)
            .filter(|d| *d >= std::time::Duration::from_millis(1))
            .map(Some)
            .ok_or_else(|| {
                Error::invalid_argument(reason, format!("{what} must be at least 1ms when set"))
            }),
    }
}

/// An optional stream bound given as a count (max_messages): unset is
/// `None`; zero or negative is INVALID_ARGUMENT `INVALID_MAX_MESSAGES`.
pub fn optional_max_messages(n: Option<i32>) -> Result<Option<u64>, Error> {
    match n {
        Some(n) if n <= 0 => Err(Error::invalid_argument(
            "INVALID_MAX_MESSAGES",
            "max_messages must be positive when set",
        )),
        other => Ok(other.map(|n| n as u64)),
    }
}

/// A source a stream reads in chunks (see [`chunked`]).
#[tonic::async_trait]
pub trait Chunks: Send + 'static {
    type Item: Send;

    /// Up to `want` items after those already given, moving past them;
    /// fewer than `want` means the source has no more.
    async fn next_chunk(&mut self, want: usize) -> Result<Vec<Self::Item>, Error>;
}

/// Up to `limit` items of `source`, read `chunk` at a time, each chunk only
/// once the client has taken the previous one (backpressure). An error is
/// sent, then the stream ends.
pub fn chunked<C: Chunks>(
    source: C,
    limit: usize,
    chunk: usize,
) -> impl Stream<Item = Result<C::Item, Error>> + Send {
    struct State<C: Chunks> {
        source: C,
        buffered: std::vec::IntoIter<C::Item>,
        left: usize,
        exhausted: bool,
    }
    let state = State {
        source,
        buffered: Vec::new().into_iter(),
        left: limit,
        exhausted: false,
    };
    futures::stream::unfold(state, move |mut st| async move {
        if st.left == 0 {
            return None;
        }
        if st.buffered.len() == 0 {
            if st.exhausted {
                return None;
            }
            let want = st.left.min(chunk);
            match st.source.next_chunk(want).await {
                Ok(items) => {
                    st.exhausted = items.len() < want;
                    st.buffered = items.into_iter();
                }
                Err(e) => {
                    st.left = 0;
                    return Some((Err(e), st));
                }
            }
        }
        let item = st.buffered.next()?;
        st.left -= 1;
        Some((Ok(item), st))
    })
}
