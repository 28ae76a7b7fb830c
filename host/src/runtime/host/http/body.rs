//! The response body as the guest receives it: counted, capped, and failed if the
//! server goes quiet for longer than the guest allowed between chunks.
//!
//! The cap protects the host, not the guest: without it a module could ask a hostile or
//! broken server for an endless body and hold a connection and its buffers for the
//! whole run. Past the cap the body stream fails; the bytes beyond it are never handed
//! over.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::{Error, WasiBody};

use super::client::response_error;
use super::exchange::{Ending, Exchange, SentMeter};

/// A response body on its way to the guest.
pub(super) struct MeteredBody {
    inner: Incoming,
    exchange: Exchange,
    limit: u64,
    received: u64,
    between_bytes: Option<(Duration, Pin<Box<Sleep>>)>,
    ended: bool,
}

impl MeteredBody {
    pub(super) fn new(
        inner: Incoming,
        exchange: Exchange,
        limit: u64,
        between_bytes: Option<Duration>,
    ) -> Self {
        Self {
            inner,
            exchange,
            limit,
            received: 0,
            between_bytes: between_bytes.map(|gap| {
                (
                    gap,
                    Box::pin(tokio::time::sleep_until(Instant::now() + gap)),
                )
            }),
            ended: false,
        }
    }

    fn fail(&mut self, error: Error, reason: &str) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.ended = true;
        self.exchange.end(Ending::Failed(reason));
        Poll::Ready(Some(Err(error)))
    }

    fn too_large(&mut self) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let reason = format!(
            "the response body is larger than the limit of {}",
            bytesize::ByteSize(self.limit).display().iec()
        );
        self.fail(Error::HttpResponseBodySize(Some(self.limit)), &reason)
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        // A declared length over the cap fails at once instead of after 10 MiB of reading.
        if this.received == 0 && this.inner.size_hint().lower() > this.limit {
            return this.too_large();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if this.received + len > this.limit {
                        return this.too_large();
                    }
                    this.received += len;
                    this.exchange.received(len);
                }
                if let Some((gap, timer)) = &mut this.between_bytes {
                    timer.as_mut().reset(Instant::now() + *gap);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                let reason = err.to_string();
                this.fail(response_error(&err), &reason)
            }
            Poll::Ready(None) => {
                this.ended = true;
                this.exchange.end(Ending::Completed);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some((gap, timer)) = &mut this.between_bytes
                    && timer.as_mut().poll(cx).is_ready()
                {
                    let reason = format!(
                        "no data for {} between chunks of the body",
                        humantime::format_duration(*gap)
                    );
                    return this.fail(Error::ConnectionReadTimeout, &reason);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // A body whose last frame was taken without asking for the end is complete.
        if !self.ended && self.inner.is_end_stream() {
            self.exchange.end(Ending::Completed);
        }
    }
}

/// A request body on its way out: counted as the connection sends it.
pub(super) struct SentBody {
    inner: WasiBody,
    meter: SentMeter,
}

impl SentBody {
    pub(super) fn new(inner: WasiBody, meter: SentMeter) -> Self {
        Self { inner, meter }
    }
}

impl Body for SentBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.meter.sent(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
