//! Server streams that survive a failure: when a stream ends with a
//! transient error or a lost session, it is opened again (on the reopened
//! session) from where the caller's state says it got to — the next
//! Reader cursor, the PubSub messages still wanted, the Queue position —
//! with backoff, until the retry policy's attempts run out without an item
//! in between.

use std::sync::Arc;

use futures::{future::BoxFuture, stream, Stream, StreamExt};
use tonic::{Status, Streaming};

use crate::{
    error::{Error, RpcError},
    retry::{Backoff, Resend},
    session::Session,
};

/// How a stream is opened and what each item tells it about where to
/// resume.
pub(crate) trait Resumable: Send + Sync + 'static {
    type Item: Send + 'static;

    /// Opens the stream from the current position with `token`.
    fn open(&self, session: &Session, token: Arc<str>) -> Opening<Self::Item>;

    /// Moves the position past `item`.
    fn seen(&mut self, item: &Self::Item);

    /// Whether everything wanted has been received (the last page, the
    /// last of `max_messages`), so a failure after it ends the stream
    /// quietly instead of starting over.
    fn finished(&self) -> bool {
        false
    }

    /// Whether the stream can be opened again where it got to at all.
    fn resumable(&self) -> bool {
        true
    }
}

/// A server stream being opened.
pub(crate) type Opening<T> = BoxFuture<'static, Result<tonic::Response<Streaming<T>>, Status>>;

struct Resuming<R: Resumable> {
    session: Session,
    position: R,
    live: Option<Streaming<R::Item>>,
    /// Reset by every item, so only failures in a row use it up.
    backoff: Backoff,
}

/// The items of `position`'s stream, opened again after each transient
/// failure; an error item ends it.
pub(crate) fn resuming<R: Resumable>(
    session: Session,
    position: R,
) -> impl Stream<Item = Result<R::Item, Error>> + Send + 'static
where
    Streaming<R::Item>: Send,
{
    let backoff = session.shared().client.settings.retry.start();
    let start = Resuming {
        session,
        position,
        live: None,
        backoff,
    };
    stream::unfold(Some(start), |state| async move {
        let mut r = state?;
        loop {
            let live = match r.live.as_mut() {
                Some(live) => live,
                None => {
                    let (session, position) = (&r.session, &r.position);
                    let opened = session
                        .shared()
                        .call(Resend::Safe, |token| position.open(session, token))
                        .await;
                    match opened {
                        Ok(live) => r.live.insert(live),
                        Err(e) => return Some((Err(e), None)),
                    }
                }
            };
            let e = match live.message().await {
                Ok(Some(item)) => {
                    r.position.seen(&item);
                    r.backoff = r.session.shared().client.settings.retry.start();
                    return Some((Ok(item), Some(r)));
                }
                Ok(None) => return None,
                Err(status) => RpcError::from_status(&status),
            };
            r.live = None;
            if r.position.finished() {
                return None;
            }
            let again = r.position.resumable()
                && (e.is_transient() || e.is_session_lost() && r.session.shared().may_reopen());
            match r.backoff.next(e.retry_after).filter(|_| again) {
                Some(wait) => {
                    tracing::debug!(error = %e, ?wait, "prism stream failed; resuming");
                    tokio::time::sleep(wait).await;
                }
                None => return Some((Err(e.into()), None)),
            }
        }
    })
    .boxed()
}
