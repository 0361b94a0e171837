//! [`Subscription`]: a subscriber's view of an [`EventBus`](super::EventBus), with
//! [`RecvError`] and [`EventSource`] (the source behind a subscription of a custom bus).

use std::fmt;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;

use super::broadcast::BroadcastSubscription;
use crate::event::ProcessEvent;

/// Why [`Subscription::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The subscriber fell behind and missed this many `Output` events. Lifecycle events are
    /// never missed. Receiving again continues with the oldest event still held.
    #[error("subscriber fell behind and missed {0} output events")]
    Lagged(u64),
    /// The bus is gone and every event has been received.
    #[error("the event bus is closed")]
    Closed,
}

/// A source of events behind a [`Subscription`], for [`EventBus`](crate::EventBus)
/// implementations of your own.
///
/// ```
/// use async_trait::async_trait;
/// use core_process::services::event_bus::EventSource;
/// use core_process::{ProcessEvent, RecvError, Subscription};
/// use tokio::sync::mpsc;
///
/// struct FromChannel(mpsc::UnboundedReceiver<ProcessEvent>);
///
/// #[async_trait]
/// impl EventSource for FromChannel {
///     async fn recv(&mut self) -> Result<ProcessEvent, RecvError> {
///         self.0.recv().await.ok_or(RecvError::Closed)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (tx, rx) = mpsc::unbounded_channel();
/// let mut sub = Subscription::new(FromChannel(rx));
/// tx.send(ProcessEvent::Killed { id: "proc-1".into(), signal: core_process::Signal::Kill, timed_out: false }).unwrap();
/// drop(tx);
/// assert_eq!(sub.recv().await.unwrap().id(), "proc-1");
/// assert_eq!(sub.recv().await, Err(RecvError::Closed));
/// # }
/// ```
#[async_trait]
pub trait EventSource: Send {
    /// The next event.
    ///
    /// # Errors
    /// [`RecvError::Lagged`] when output events were missed, [`RecvError::Closed`] at the end.
    async fn recv(&mut self) -> Result<ProcessEvent, RecvError>;
}

/// A subscriber's view of an [`EventBus`](crate::EventBus): one event per
/// [`recv`](Subscription::recv), in order.
pub struct Subscription {
    inner: SubscriptionInner,
}

enum SubscriptionInner {
    Broadcast(Box<BroadcastSubscription>),
    Custom(Box<dyn EventSource>),
}

impl Subscription {
    /// A subscription reading from a custom source.
    pub fn new(source: impl EventSource + 'static) -> Self {
        Subscription {
            inner: SubscriptionInner::Custom(Box::new(source)),
        }
    }

    pub(crate) fn broadcast(sub: BroadcastSubscription) -> Self {
        Subscription {
            inner: SubscriptionInner::Broadcast(Box::new(sub)),
        }
    }

    /// Waits for the next event.
    ///
    /// Takes part in tokio's cooperative scheduling as tokio's own channels do: every 16
    /// events received use a unit of the task's budget, so a subscriber that always finds an
    /// event ready (a process printing millions of lines) still lets other tasks on its worker
    /// thread run, the one reading the process's output among them.
    ///
    /// # Errors
    /// [`RecvError::Lagged`] when this subscriber fell behind and output events were dropped
    /// for it (receive again to go on); [`RecvError::Closed`] when the bus is gone and nothing
    /// is left.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before it completes, no event is lost.
    pub fn recv(&mut self) -> impl Future<Output = Result<ProcessEvent, RecvError>> + Send + '_ {
        Recv {
            state: ManuallyDrop::new(RecvState::Ready(self)),
        }
    }

    /// The next event if one is there now, without waiting: `None` when there is none yet.
    ///
    /// A subscription over a custom [`EventSource`] polls the source's `recv` once and drops
    /// it when it is not ready, so the source's `recv` must be cancel safe.
    ///
    /// # Errors
    /// As [`recv`](Self::recv): `Some(Err(RecvError::Lagged(n)))`, `Some(Err(RecvError::Closed))`.
    pub fn try_recv(&mut self) -> Option<Result<ProcessEvent, RecvError>> {
        match &mut self.inner {
            SubscriptionInner::Broadcast(b) => {
                if let Some(event) = b.next_prepaid() {
                    return Some(Ok(event));
                }
                let result = b.try_next()?;
                b.paid_for_more();
                // Nothing to yield from here: a `recv` later need not either.
                b.take_released();
                Some(result)
            }
            SubscriptionInner::Custom(c) => {
                let mut recv = c.recv();
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match recv.as_mut().poll(&mut cx) {
                    Poll::Ready(result) => Some(result),
                    Poll::Pending => None,
                }
            }
        }
    }

    /// This subscription narrowed to the events of the processes in `ids`; every other event
    /// is dropped unread. Subscribe *before* starting a process and narrow it once its id is
    /// known, so that its `Started` cannot be missed
    /// ([`ProcessService::start_subscribed`](crate::ProcessService::start_subscribed) does
    /// both).
    ///
    /// ```
    /// use core_process::{BroadcastEventBus, EventBus, ProcessEvent, Signal};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let bus = BroadcastEventBus::default();
    /// let mut mine = bus.subscribe().only(["proc-2"]);
    /// for id in ["proc-1", "proc-2"] {
    ///     bus.publish(ProcessEvent::Killed { id: id.into(), signal: Signal::Kill, timed_out: false });
    /// }
    /// assert_eq!(mine.recv().await.unwrap().id(), "proc-2");
    /// assert!(mine.try_recv().is_none());
    /// # }
    /// ```
    pub fn only<I, S>(self, ids: I) -> Subscription
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Subscription::new(Only {
            inner: self,
            ids: ids.into_iter().map(Into::into).collect(),
        })
    }
}

/// The source behind [`Subscription::only`].
struct Only {
    inner: Subscription,
    ids: std::collections::HashSet<String>,
}

#[async_trait]
impl EventSource for Only {
    async fn recv(&mut self) -> Result<ProcessEvent, RecvError> {
        loop {
            let event = self.inner.recv().await?;
            if self.ids.contains(event.id()) {
                return Ok(event);
            }
        }
    }
}

/// How many events a broadcast subscription yields for one unit of tokio's cooperative budget
/// (a task has 128 units per turn). Charging every event cost about 7 ns a line, a quarter of
/// a subscriber's per-line cost; a subscriber with events always ready still yields its
/// worker after about 2,000 events.
pub(crate) const EVENTS_PER_BUDGET_UNIT: u32 = 16;

/// The future of [`Subscription::recv`]. Written by hand rather than as an `async fn` so that
/// the common case (the next line of a batch already received) returns the event straight from
/// the first poll, with no state machine around it.
struct Recv<'a> {
    /// Dropped by hand (see the `Drop` impl): no drop glue to call per event.
    state: ManuallyDrop<RecvState<'a>>,
}

type Waiting<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

enum RecvState<'a> {
    /// Nothing in flight: look for an event now.
    Ready(&'a mut Subscription),
    /// The broadcast subscription found nothing and waits for its sources; then look again.
    Waiting(Waiting<'a, &'a mut Subscription>),
    /// A custom source's own receive.
    Custom(Waiting<'a, Result<ProcessEvent, RecvError>>),
    /// The event was returned.
    Done,
}

impl Future for Recv<'_> {
    type Output = Result<ProcessEvent, RecvError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The common case: the next line of the batch in hand, within the events that the last
        // unit of budget paid for. The state is left as it is (writing `Done` measured 3 ns a
        // line), so a future polled again after it completed, which callers must not do,
        // yields the next event instead of staying pending.
        if let RecvState::Ready(sub) = &mut *self.state
            && let SubscriptionInner::Broadcast(b) = &mut sub.inner
            && let Some(event) = b.next_prepaid()
        {
            return Poll::Ready(Ok(event));
        }
        // One unit of budget per `EVENTS_PER_BUDGET_UNIT` events; when it is used up, yield
        // (and be woken at once).
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            match std::mem::replace(&mut *self.state, RecvState::Done) {
                RecvState::Ready(sub) => {
                    // Two matches, not one: a custom source's future borrows `sub` for `'a`,
                    // which a single `match` would extend over the broadcast arm, where `sub`
                    // moves into the waiting future. The `else` below cannot happen.
                    if let SubscriptionInner::Custom(_) = &sub.inner {
                        if let SubscriptionInner::Custom(c) = &mut sub.inner {
                            // The source's own (already boxed) receive future, held as it is.
                            *self.state = RecvState::Custom(c.recv());
                        }
                        continue;
                    }
                    let SubscriptionInner::Broadcast(b) = &mut sub.inner else {
                        continue;
                    };
                    if b.take_released() {
                        // Let the readers this subscription woke run now (see there).
                        *self.state = RecvState::Ready(sub);
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    if let Some(result) = b.try_next() {
                        coop.made_progress();
                        b.paid_for_more();
                        return Poll::Ready(result);
                    }
                    *self.state = RecvState::Waiting(Box::pin(async move {
                        if let SubscriptionInner::Broadcast(b) = &mut sub.inner {
                            b.wait().await;
                        }
                        sub
                    }));
                }
                RecvState::Waiting(mut wait) => match wait.as_mut().poll(cx) {
                    Poll::Ready(sub) => *self.state = RecvState::Ready(sub),
                    Poll::Pending => {
                        *self.state = RecvState::Waiting(wait);
                        return Poll::Pending;
                    }
                },
                RecvState::Custom(mut recv) => match recv.as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        coop.made_progress();
                        return Poll::Ready(result);
                    }
                    Poll::Pending => {
                        *self.state = RecvState::Custom(recv);
                        return Poll::Pending;
                    }
                },
                // Polled again after an event that came through the slow path: nothing more.
                RecvState::Done => return Poll::Pending,
            }
        }
    }
}

impl Drop for Recv<'_> {
    /// Only a future that waits holds anything to drop: the check is inlined where the future
    /// is dropped, once per event, instead of a call to the state's drop glue.
    #[inline(always)]
    fn drop(&mut self) {
        if matches!(*self.state, RecvState::Waiting(_) | RecvState::Custom(_)) {
            self.drop_waiting();
        }
    }
}

impl Recv<'_> {
    #[cold]
    #[inline(never)]
    fn drop_waiting(&mut self) {
        drop(ManuallyDrop::into_inner(std::mem::replace(
            &mut self.state,
            ManuallyDrop::new(RecvState::Done),
        )));
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.inner {
            SubscriptionInner::Broadcast(_) => "Subscription(broadcast)",
            SubscriptionInner::Custom(_) => "Subscription(custom)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Stream;

    #[tokio::test]
    async fn a_custom_source_is_received_from_after_waiting() {
        struct FromChannel(tokio::sync::mpsc::UnboundedReceiver<ProcessEvent>);
        #[async_trait]
        impl EventSource for FromChannel {
            async fn recv(&mut self) -> Result<ProcessEvent, RecvError> {
                self.0.recv().await.ok_or(RecvError::Closed)
            }
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut sub = Subscription::new(FromChannel(rx));
        let sender = tokio::spawn(async move {
            for i in 0..3 {
                tokio::task::yield_now().await;
                let line = format!("l{i}");
                tx.send(ProcessEvent::Output {
                    id: "p".into(),
                    line: line.into(),
                    stream: Stream::Stdout,
                })
                .unwrap();
            }
        });
        for i in 0..3 {
            match sub.recv().await.unwrap() {
                ProcessEvent::Output { line, .. } => assert_eq!(line, format!("l{i}")),
                other => panic!("expected output, got {other:?}"),
            }
        }
        sender.await.unwrap();
        assert_eq!(sub.recv().await, Err(RecvError::Closed));
    }

    #[tokio::test]
    async fn a_dropped_pending_receive_drops_what_its_source_holds() {
        // The receive future of a custom source is held, boxed, while it waits; dropping the
        // subscription's `recv` future must drop it too (it may hold a lock, a permit, a
        // connection), not leak it.
        struct Holding(std::sync::Arc<()>);
        #[async_trait]
        impl EventSource for Holding {
            async fn recv(&mut self) -> Result<ProcessEvent, RecvError> {
                let _held = self.0.clone();
                std::future::pending().await
            }
        }
        let token = std::sync::Arc::new(());
        let mut sub = Subscription::new(Holding(token.clone()));
        {
            let recv = sub.recv();
            tokio::pin!(recv);
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(recv.as_mut().poll(&mut cx).is_pending());
            assert_eq!(
                std::sync::Arc::strong_count(&token),
                3,
                "held while waiting"
            );
        }
        assert_eq!(
            std::sync::Arc::strong_count(&token),
            2,
            "the dropped receive still holds its source's future"
        );
    }

    #[test]
    fn debug_tells_the_kind_of_subscription() {
        use crate::services::event_bus::{BroadcastEventBus, EventBus};
        struct Never;
        #[async_trait]
        impl EventSource for Never {
            async fn recv(&mut self) -> Result<ProcessEvent, RecvError> {
                Err(RecvError::Closed)
            }
        }
        let bus = BroadcastEventBus::default();
        assert_eq!(format!("{:?}", bus.subscribe()), "Subscription(broadcast)");
        assert_eq!(
            format!("{:?}", Subscription::new(Never)),
            "Subscription(custom)"
        );
    }

    #[tokio::test]
    async fn try_recv_takes_what_is_there_and_only_filters() {
        use crate::services::event_bus::{BroadcastEventBus, EventBus};
        let bus = BroadcastEventBus::default();
        let mut all = bus.subscribe();
        let mut two = bus.subscribe().only(["p2".to_string()]);
        assert!(all.try_recv().is_none());
        assert!(two.try_recv().is_none());
        for id in ["p1", "p2", "p1", "p2"] {
            bus.publish(ProcessEvent::Output {
                id: id.into(),
                line: "x".into(),
                stream: Stream::Stdout,
            });
        }
        let mut seen = Vec::new();
        while let Some(event) = all.try_recv() {
            seen.push(event.unwrap().id().to_string());
        }
        assert_eq!(seen, ["p1", "p2", "p1", "p2"]);
        assert_eq!(two.try_recv().unwrap().unwrap().id(), "p2");
        assert_eq!(two.recv().await.unwrap().id(), "p2");
        assert!(two.try_recv().is_none());
    }
}
