//! `AttemptSpan`: each attempt of a traced request gets its own span (`attempt N`), with the
//! endpoint it went to and how it ended; the upstream's spans nest under it. Untraced requests
//! pass through untouched.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use breakwater_resilience::{BoxError, timeout::Timed};
use tower::{Layer, Service};
use tracing::{Instrument as _, instrument::Instrumented};

use super::{
    classify::error_type,
    request::{HttpRequest, HttpResponse},
};
use crate::{proxy::error::GRPC_STATUS, telemetry::spans};

/// Gives each attempt of a traced request a span.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttemptSpanLayer;

impl<S> Layer<S> for AttemptSpanLayer {
    type Service = AttemptSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptSpan { inner }
    }
}

/// A service whose attempts are spans of the request's span.
#[derive(Debug, Clone)]
pub struct AttemptSpan<S> {
    inner: S,
}

impl<S> Service<HttpRequest> for AttemptSpan<S>
where
    S: Service<HttpRequest, Response = HttpResponse, Error = BoxError>,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = SpanFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        // An attempt span only inside a recorded request.
        if tracing::Span::current().is_disabled() {
            return SpanFuture::Plain { future: self.inner.call(req) };
        }
        let span = spans::attempt(req.attempt());
        let future = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        SpanFuture::Traced { future: future.instrument(span) }
    }
}

pin_project_lite::pin_project! {
    /// An attempt, in its span or not.
    #[project = SpanFutureProj]
    pub enum SpanFuture<F> {
        /// Not traced.
        Plain { #[pin] future: F },
        /// In its attempt span, which records how it ended.
        Traced { #[pin] future: Instrumented<F> },
    }
}

impl<F> Future for SpanFuture<F>
where
    F: Future<Output = Result<HttpResponse, BoxError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            SpanFutureProj::Plain { future } => future.poll(cx),
            SpanFutureProj::Traced { future } => {
                let span = future.span().clone();
                let result = ready!(future.poll(cx));
                match &result {
                    Ok(r) => {
                        let failure = r.outcome.failure.map(|f| f.reason());
                        span.record("breakwater.outcome", failure.unwrap_or("ok"));
                        let status = r.inner.headers().get(GRPC_STATUS).and_then(|v| v.to_str().ok());
                        spans::record_response(&span, r.inner.status().as_u16(), failure, status);
                    }
                    Err(e) => {
                        let cause = error_type(e);
                        span.record("breakwater.outcome", cause);
                        span.record("error.type", cause);
                        span.record("otel.status_code", "ERROR");
                    }
                }
                Poll::Ready(result)
            }
        }
    }
}
