//! Payloads delivered in pieces: a claim-checked payload larger than its
//! namespace's `claim_check.chunk_size` arrives as consecutive messages
//! with the same id, `prism-chunk: <index>/<count>` and
//! `prism-chunk-total-size` in their headers, the other headers on the
//! first. [`joined`] gives the caller one message with the whole payload;
//! a stream position moves only past whole messages ([`is_partial`]), so a
//! resumed stream starts the interrupted message again.

use std::collections::HashMap;

use futures::{Stream, StreamExt};

use crate::error::Result;

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
    chunk(headers).is_some_and(|(index, count)| index + 1 < count)
}

/// `items` with every run of pieces joined into one message (the piece
/// headers removed). Pieces whose run broke off (the stream was resumed
/// mid-payload) are dropped: the message comes again from its first piece.
pub(crate) fn joined<T: Joinable>(
    items: impl Stream<Item = Result<T>> + Send + 'static,
) -> impl Stream<Item = Result<T>> + Send + 'static {
    let mut pending: Option<T> = None;
    items.filter_map(move |item| {
        let out = match item {
            Err(e) => Some(Err(e)),
            Ok(mut m) => match chunk(m.headers()) {
                None => {
                    pending = None;
                    Some(Ok(m))
                }
                Some((index, count)) => {
                    let total = m
                        .headers_mut()
                        .remove(CHUNK_TOTAL_HEADER)
                        .and_then(|t| t.parse::<usize>().ok());
                    m.headers_mut().remove(CHUNK_HEADER);
                    if index == 0 {
                        let payload = m.payload_mut();
                        if let Some(total) = total {
                            payload.reserve(total.saturating_sub(payload.len()));
                        }
                        pending = Some(m);
                    } else if let Some(first) = pending.as_mut().filter(|p| p.id() == m.id()) {
                        first.payload_mut().append(m.payload_mut());
                    } else {
                        pending = None;
                    }
                    if index + 1 == count {
                        pending.take().map(Ok)
                    } else {
                        None
                    }
                }
            },
        };
        futures::future::ready(out)
    })
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
            piece("b", 1, 3, b"cd"),
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
