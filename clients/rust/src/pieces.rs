//! Payloads delivered in pieces: a claim-checked payload larger than its
//! namespace's `claim_check.chunk_size` arrives as consecutive messages
//! with the same id, `prism-chunk: <index>/<count>` and
//! `prism-chunk-total-size` in their headers, the other headers on the
//! first. [`joined`] gives the caller one message with the whole payload;
//! a stream position moves only past whole messages ([`is_partial`]), so a
//! resumed Queue or mailbox stream starts the interrupted message again (a
//! PubSub event interrupted by a resubscription is lost with the others
//! published while the subscription was away: PubSub keeps no position).
//! Pieces that do not join up (a gap, a length other than the one
//! announced) are an error, never a short payload. The other way, a
//! payload over [`PIECE_BYTES`] is published in pieces ([`in_pieces`]).

use std::collections::HashMap;

use futures::{Stream, StreamExt};

use crate::error::{Error, Result};

/// Payloads larger than this are published over `PublishStream`, in
/// pieces of this size (a gateway whose namespace has a claim check keeps
/// them in its object store; one without takes what a request may hold).
pub(crate) const PIECE_BYTES: usize = 1024 * 1024;

/// `payload` as a `PublishStream`: `start` carrying its first piece, then
/// the rest a piece at a time.
pub(crate) fn in_pieces<T>(
    payload: &[u8],
    start: impl FnOnce(Vec<u8>) -> T,
    piece: fn(Vec<u8>) -> T,
) -> Vec<T> {
    let mut pieces = payload.chunks(PIECE_BYTES);
    let mut out = vec![start(pieces.next().unwrap_or_default().to_vec())];
    out.extend(pieces.map(|p| piece(p.to_vec())));
    out
}

const CHUNK_HEADER: &str = "prism-chunk";
const CHUNK_TOTAL_HEADER: &str = "prism-chunk-total-size";

/// A delivered message type whose payload may come in pieces.
pub(crate) trait Joinable: Send + 'static {
    fn id(&self) -> &str;
    fn headers(&self) -> &HashMap<String, String>;
    fn headers_mut(&mut self) -> &mut HashMap<String, String>;
    fn payload_mut(&mut self) -> &mut Vec<u8>;
}

/// `(index, count)` of a piece.
fn chunk(headers: &HashMap<String, String>) -> Option<(u32, u32)> {
    let (index, count) = headers.get(CHUNK_HEADER)?.split_once('/')?;
    Some((index.parse().ok()?, count.parse().ok()?))
}

/// Whether `headers` mark a piece that is not its payload's last.
pub(crate) fn is_partial(headers: &HashMap<String, String>) -> bool {
    chunk(headers).is_some_and(|(index, count)| index.saturating_add(1) < count)
}

/// Most bytes reserved ahead for a payload from its announced size (the
/// rest grows as pieces come).
const MAX_RESERVE: usize = 64 * 1024 * 1024;

/// A run of pieces being joined.
struct Run<T> {
    first: T,
    next: u32,
    total: Option<usize>,
}

/// `items` with every run of pieces joined into one message (the piece
/// headers removed). Pieces whose run broke off (the stream was resumed
/// mid-payload) are dropped: the message comes again from its first piece.
pub(crate) fn joined<T: Joinable>(
    items: impl Stream<Item = Result<T>> + Send + 'static,
) -> impl Stream<Item = Result<T>> + Send + 'static {
    let mut pending: Option<Run<T>> = None;
    items.filter_map(move |item| {
        let out = match item {
            Err(e) => Some(Err(e)),
            Ok(m) => match chunk(m.headers()) {
                None => {
                    pending = None;
                    Some(Ok(m))
                }
                Some((index, count)) => join(&mut pending, m, index, count),
            },
        };
        futures::future::ready(out)
    })
}

/// Adds piece `index` of `count` to the run; the whole message once its
/// last piece is in.
fn join<T: Joinable>(
    pending: &mut Option<Run<T>>,
    mut m: T,
    index: u32,
    count: u32,
) -> Option<Result<T>> {
    let total = m
        .headers_mut()
        .remove(CHUNK_TOTAL_HEADER)
        .and_then(|t| t.parse::<usize>().ok());
    m.headers_mut().remove(CHUNK_HEADER);
    if index == 0 {
        // A new run (after a resumption, the same message again).
        let payload = m.payload_mut();
        let ahead = total.unwrap_or(0).min(MAX_RESERVE);
        payload.reserve(ahead.saturating_sub(payload.len()));
        *pending = Some(Run {
            first: m,
            next: 1,
            total,
        });
    } else {
        match pending.as_mut() {
            Some(run) if run.first.id() == m.id() && run.next == index => {
                run.first.payload_mut().append(m.payload_mut());
                run.next = index.saturating_add(1);
            }
            _ => {
                *pending = None;
                return Some(Err(Error::InvalidInput(format!(
                    "piece {index} of message `{}` came without the pieces before it",
                    m.id()
                ))));
            }
        }
    }
    if index.saturating_add(1) < count {
        return None;
    }
    let mut run = pending.take()?;
    let len = run.first.payload_mut().len();
    match run.total {
        Some(total) if total != len => Some(Err(Error::InvalidInput(format!(
            "message `{}` joined to {len} bytes, not the {total} announced",
            run.first.id()
        )))),
        _ => Some(Ok(run.first)),
    }
}

macro_rules! joinable {
    ($t:ty, $id:ident, $headers:ident, $payload:ident) => {
        impl Joinable for $t {
            fn id(&self) -> &str {
                &self.$id
            }
            fn headers(&self) -> &HashMap<String, String> {
                &self.$headers
            }
            fn headers_mut(&mut self) -> &mut HashMap<String, String> {
                &mut self.$headers
            }
            fn payload_mut(&mut self) -> &mut Vec<u8> {
                &mut self.$payload
            }
        }
    };
}

joinable!(
    prism_proto::queue::v1::Message,
    message_id,
    headers,
    payload
);
joinable!(prism_proto::pubsub::v1::Event, event_id, metadata, payload);
joinable!(
    prism_proto::transact::v1::MailboxMessage,
    message_id,
    metadata,
    message
);

#[cfg(test)]
mod tests {
    use super::*;
    use prism_proto::queue::v1::Message;

    fn piece(id: &str, index: u32, count: u32, payload: &[u8]) -> Result<Message> {
        let mut headers = HashMap::from([
            (CHUNK_HEADER.to_string(), format!("{index}/{count}")),
            (CHUNK_TOTAL_HEADER.to_string(), "6".to_string()),
        ]);
        if index == 0 {
            headers.insert("k".into(), "v".into());
        }
        Ok(Message {
            message_id: id.into(),
            payload: payload.to_vec(),
            headers,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn gaps_and_wrong_lengths_are_errors_never_short_payloads() {
        let gap = vec![piece("a", 0, 3, b"ab"), piece("a", 2, 3, b"ef")];
        let out: Vec<Result<Message>> = joined(futures::stream::iter(gap)).collect().await;
        assert!(matches!(&out[..], [Err(Error::InvalidInput(_))]), "{out:?}");
        let short = vec![piece("a", 0, 2, b"ab"), piece("a", 1, 2, b"cd")];
        let out: Vec<Result<Message>> = joined(futures::stream::iter(short)).collect().await;
        assert!(matches!(&out[..], [Err(Error::InvalidInput(_))]), "{out:?}");
        let mut huge = piece("a", u32::MAX, 5, b"").unwrap();
        huge.headers
            .insert(CHUNK_TOTAL_HEADER.into(), u64::MAX.to_string());
        assert!(!is_partial(&huge.headers));
        let out: Vec<Result<Message>> = joined(futures::stream::iter(vec![Ok(huge)]))
            .collect()
            .await;
        assert_eq!(out.len(), 1);
    }

    #[tokio::test]
    async fn pieces_are_joined_and_a_broken_run_is_dropped() {
        let whole = Ok(Message {
            message_id: "w".into(),
            payload: b"x".to_vec(),
            ..Default::default()
        });
        let items = vec![
            piece("a", 0, 3, b"ab"),
            // Resumed mid-payload: the run starts again.
            piece("a", 0, 3, b"ab"),
            piece("a", 1, 3, b"cd"),
            piece("a", 2, 3, b"ef"),
            whole,
        ];
        assert!(is_partial(&piece("a", 1, 3, b"").unwrap().headers));
        assert!(!is_partial(&piece("a", 2, 3, b"").unwrap().headers));
        let out: Vec<Message> = joined(futures::stream::iter(items))
            .map(|m| m.unwrap())
            .collect()
            .await;
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].payload, b"abcdef");
        assert_eq!(out[0].headers, HashMap::from([("k".into(), "v".into())]));
        assert_eq!(out[1].message_id, "w");
    }
}
