//! Mailbox depth. actix does not expose how many messages wait in an
//! actor's mailbox, so every message the gateway sends to one of its actors
//! goes through a [`Mailbox`]: it wraps the message in a [`Counted`]
//! envelope that adds one to the actor's `Vitals::queued` when sent and
//! takes it off when the actor starts handling it (or when the message is
//! dropped unhandled because the actor stopped). [`counted!`] gives an actor
//! the envelope handlers for the messages it takes from outside; messages an
//! actor sends itself (`ctx.notify`) never wait in the mailbox and are not
//! counted.

use std::sync::{atomic::Ordering, Arc};

use actix::{
    dev::{Request, ToEnvelope},
    Actor, Addr, Handler, Message, Recipient,
};

use super::{supervision::Vitals, ActorNode, Observe, OBSERVE_TIMEOUT};

/// A message on its way to an actor, counted in that actor's mailbox depth
/// until it is taken.
pub struct Counted<M> {
    msg: Option<M>,
    vitals: Arc<Vitals>,
}

impl<M: Message> Message for Counted<M> {
    type Result = M::Result;
}

impl<M> Counted<M> {
    fn new(msg: M, vitals: Arc<Vitals>) -> Self {
        vitals.queued.fetch_add(1, Ordering::Relaxed);
        Counted {
            msg: Some(msg),
            vitals,
        }
    }

    /// The message, leaving the mailbox count.
    pub fn take(mut self) -> M {
        self.msg.take().expect("a counted message is taken once")
    }
}

impl<M> Drop for Counted<M> {
    fn drop(&mut self) {
        // Taken (being handled) or dropped unhandled: it left the mailbox.
        self.vitals.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An actor's address together with the vitals its mailbox depth is
/// counted in.
pub struct Mailbox<A: Actor> {
    addr: Addr<A>,
    vitals: Arc<Vitals>,
}

impl<A: Actor> Clone for Mailbox<A> {
    fn clone(&self) -> Self {
        Mailbox {
            addr: self.addr.clone(),
            vitals: self.vitals.clone(),
        }
    }
}

impl<A: Actor> Mailbox<A> {
    pub fn new(addr: Addr<A>, vitals: Arc<Vitals>) -> Self {
        Mailbox { addr, vitals }
    }

    /// Sends and waits for the answer (dropping the request does not take
    /// the message back: it stays queued until the actor handles it).
    pub fn send<M>(&self, msg: M) -> Request<A, Counted<M>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<Counted<M>>,
        A::Context: ToEnvelope<A, Counted<M>>,
    {
        self.addr.send(Counted::new(msg, self.vitals.clone()))
    }

    /// Sends without waiting; the message is lost only if the actor has
    /// stopped (then nothing is counted either).
    pub fn do_send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<Counted<M>>,
        A::Context: ToEnvelope<A, Counted<M>>,
    {
        self.addr.do_send(Counted::new(msg, self.vitals.clone()))
    }

    /// A handle that can send only `M`, counted the same way.
    pub fn recipient<M>(&self) -> CountedRecipient<M>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<Counted<M>>,
        A::Context: ToEnvelope<A, Counted<M>>,
    {
        CountedRecipient {
            recipient: self.addr.clone().recipient(),
            vitals: self.vitals.clone(),
        }
    }

    pub fn connected(&self) -> bool {
        self.addr.connected()
    }

    pub fn vitals(&self) -> &Arc<Vitals> {
        &self.vitals
    }
}

impl<A> Mailbox<A>
where
    A: Actor + Handler<Counted<Observe>>,
    A::Context: ToEnvelope<A, Counted<Observe>>,
{
    /// The actor's node, or `failed()` (its node described from saved
    /// state) when it cannot answer within [`OBSERVE_TIMEOUT`].
    pub async fn observe_or(&self, failed: impl FnOnce() -> ActorNode) -> ActorNode {
        match tokio::time::timeout(OBSERVE_TIMEOUT, self.send(Observe)).await {
            Ok(Ok(node)) => node,
            _ => failed(),
        }
    }
}

/// [`Mailbox::recipient`]: one message type, actor type erased.
pub struct CountedRecipient<M: Message + Send>
where
    M::Result: Send,
{
    recipient: Recipient<Counted<M>>,
    vitals: Arc<Vitals>,
}

impl<M: Message + Send + 'static> CountedRecipient<M>
where
    M::Result: Send,
{
    pub fn do_send(&self, msg: M) {
        self.recipient
            .do_send(Counted::new(msg, self.vitals.clone()))
    }
}

/// `counted!(Actor: MsgA, MsgB)` lets `Actor` take `Counted<MsgA>` and
/// `Counted<MsgB>` by handing the message to its own `Handler<MsgA>` and
/// `Handler<MsgB>`. (One impl per pair: a blanket impl over every actor is
/// ruled out by the orphan rule.)
macro_rules! counted {
    ($actor:ty: $($msg:ty),+ $(,)?) => {
        $(
            impl actix::Handler<$crate::actors::mailbox::Counted<$msg>> for $actor {
                type Result = <$actor as actix::Handler<$msg>>::Result;

                fn handle(
                    &mut self,
                    msg: $crate::actors::mailbox::Counted<$msg>,
                    ctx: &mut <$actor as actix::Actor>::Context,
                ) -> Self::Result {
                    <$actor as actix::Handler<$msg>>::handle(self, msg.take(), ctx)
                }
            }
        )+
    };
}
pub(crate) use counted;

#[cfg(test)]
mod tests {
    use actix::{ActorContext, AsyncContext, Context};
    use tokio::sync::oneshot;

    use super::*;

    /// Handles `Hold` by waiting for its release before taking anything
    /// else; counts what it handled.
    struct Busy {
        handled: usize,
    }

    impl Actor for Busy {
        type Context = Context<Self>;
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Hold(oneshot::Receiver<()>);

    #[derive(Message)]
    #[rtype(result = "usize")]
    struct Count;

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Halt;

    impl Handler<Hold> for Busy {
        type Result = ();

        fn handle(&mut self, Hold(release): Hold, ctx: &mut Context<Self>) {
            self.handled += 1;
            ctx.wait(actix::fut::wrap_future(async move {
                let _ = release.await;
            }));
        }
    }

    impl Handler<Count> for Busy {
        type Result = usize;

        fn handle(&mut self, _: Count, _: &mut Context<Self>) -> usize {
            self.handled += 1;
            self.handled
        }
    }

    impl Handler<Halt> for Busy {
        type Result = ();

        fn handle(&mut self, _: Halt, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }

    counted!(Busy: Hold, Count, Halt);

    fn depth(vitals: &Vitals) -> u64 {
        vitals.queued.load(Ordering::Relaxed)
    }

    #[actix_rt::test]
    async fn depth_counts_what_waits_and_falls_as_it_is_handled() {
        let vitals = Arc::new(Vitals::default());
        let mailbox = Mailbox::new(Busy { handled: 0 }.start(), vitals.clone());
        let (release, held) = oneshot::channel();
        // Handled (and so no longer queued) once the answer comes back.
        mailbox.send(Hold(held)).await.unwrap();
        assert_eq!(depth(&vitals), 0);

        // The actor is busy: three messages wait.
        let waiting: Vec<_> = (0..3).map(|_| mailbox.send(Count)).collect();
        mailbox.do_send(Count);
        assert_eq!(depth(&vitals), 4);

        release.send(()).unwrap();
        let mut answers = Vec::new();
        for request in waiting {
            answers.push(request.await.unwrap());
        }
        assert_eq!(answers, vec![2, 3, 4]);
        assert_eq!(mailbox.send(Count).await.unwrap(), 6);
        assert_eq!(depth(&vitals), 0);
    }

    #[actix_rt::test]
    async fn messages_dropped_by_a_stopped_actor_leave_the_count() {
        let vitals = Arc::new(Vitals::default());
        let mailbox = Mailbox::new(Busy { handled: 0 }.start(), vitals.clone());
        let (release, held) = oneshot::channel();
        mailbox.send(Hold(held)).await.unwrap();
        mailbox.do_send(Halt);
        let pending = mailbox.send(Count);
        mailbox.recipient::<Count>().do_send(Count);
        assert_eq!(depth(&vitals), 3);
        release.send(()).unwrap();
        // Halt stops the actor; the two Counts behind it are dropped.
        assert!(pending.await.is_err());
        assert_eq!(depth(&vitals), 0);
        assert!(!mailbox.connected());
    }
}
