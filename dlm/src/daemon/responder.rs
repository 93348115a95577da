//! The polling loop shared by the server side of session and peer streams: read what
//! the other side sent, act on it, and answer with whatever is ready packed into one
//! message. The work happens when the response stream is polled, so a stream costs
//! no task of its own and an operation no extra hop.

use std::future::Future;
use std::task::{Context, Poll};

/// Most events packed into one answer.
pub const BATCH_MAX: usize = 1024;
/// Most inbound messages handled in one poll, for fairness between streams.
const MESSAGES_PER_POLL: usize = 64;
/// The deadline for a stream's hello (`limits.hello_timeout_ms`): a stream that has
/// not authenticated by then is refused, so idle unauthenticated connections cannot
/// pile up.
pub fn hello_deadline(timeout_ms: u64) -> std::pin::Pin<Box<tokio::time::Sleep>> {
    Box::pin(tokio::time::sleep(std::time::Duration::from_millis(timeout_ms)))
}

/// Whether the hello deadline has passed; clears it once it has.
pub fn hello_overdue(deadline: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>, cx: &mut Context<'_>) -> bool {
    let overdue = deadline.as_mut().is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
    if overdue {
        *deadline = None;
    }
    overdue
}

/// The server side of a stream.
pub trait Responder {
    /// Messages read.
    type Inbound;
    /// Messages sent.
    type Outbound;

    /// Polls the next message from the other side.
    fn poll_inbound(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Self::Inbound, tonic::Status>>>;
    /// Acts on one message.
    fn handle(&mut self, message: Self::Inbound);
    /// Moves events that are ready into the pending batch; returns the batch's length.
    fn drain_events(&mut self, cx: &mut Context<'_>) -> usize;
    /// The next message that must go out on its own (challenge, welcome, reply, refusal).
    fn next_single(&mut self) -> Option<Self::Outbound>;
    /// The pending batch as one message, if it holds anything.
    fn take_batch(&mut self) -> Option<Self::Outbound>;
    /// Whether the stream is finishing (refused, or closed by the other side).
    fn done(&self) -> bool;
    /// Marks the stream as finishing.
    fn finish(&mut self, why: Option<tonic::Status>);
}

/// One poll of a responder's answer stream.
pub fn poll_answer<R: Responder>(responder: &mut R, cx: &mut Context<'_>) -> Poll<Option<Result<R::Outbound, tonic::Status>>> {
    let mut waiting_for_input = false;
    for _ in 0..MESSAGES_PER_POLL {
        if let Some(message) = responder.next_single() {
            return Poll::Ready(Some(Ok(message)));
        }
        let buffered = responder.drain_events(cx);
        if responder.done() || buffered >= BATCH_MAX {
            break;
        }
        match responder.poll_inbound(cx) {
            Poll::Ready(Some(Ok(message))) => responder.handle(message),
            Poll::Ready(Some(Err(status))) => responder.finish(Some(status)),
            Poll::Ready(None) => responder.finish(None),
            Poll::Pending => {
                waiting_for_input = true;
                break;
            }
        }
    }
    if let Some(message) = responder.next_single().or_else(|| responder.take_batch()) {
        return Poll::Ready(Some(Ok(message)));
    }
    if responder.done() {
        return Poll::Ready(None);
    }
    if !waiting_for_input {
        // Stopped for fairness with input still to read: come back soon.
        cx.waker().wake_by_ref();
    }
    Poll::Pending
}
