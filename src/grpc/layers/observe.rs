//! What every call leaves behind: a request id, a server span, one log line and one measurement.
//!
//! - The request id is the caller's `x-request-id` when it is a plain token (1-128 of
//!   `A-Za-z0-9._:-`), else a new UUIDv7; it is returned in the response's `x-request-id` and is
//!   a field of the span, so every log line of the call carries it.
//! - The span continues the caller's trace when its metadata carries a W3C `traceparent`, and
//!   is named and attributed by the gRPC semantic conventions (`rpc.system.name`, `rpc.method`,
//!   `rpc.response.status_code`); its trace id and (when traces are exported) its span id are
//!   fields too, so logs and traces join up.
//! - The call ends when its status is known: at once for an answer without a body
//!   (trailers-only, as errors are), else at the body's trailers, or when the body is dropped
//!   unfinished, or the call before its answer (the caller went away: CANCELLED). Then one line
//!   at info (method, caller, status, duration; at debug for health checks) and
//!   `rpc.server.call.duration`.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Frame, SizeHint};
use opentelemetry::trace::TraceContextExt as _;
use tonic::codegen::{BoxFuture, Service, http};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::Methods;
use crate::{grpc::status::code_name, telemetry::metrics::metrics};

/// The metadata that carries the request id, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The caller a call was authenticated as, in the response's extensions (set by the
/// authentication step), for the call's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedAs(pub Arc<str>);

/// What a method that is not served is named in metrics (a bounded set of names whatever paths
/// callers make up), as the semantic conventions name it.
const OTHER_METHOD: &str = "_OTHER";

const MAX_REQUEST_ID_CHARS: usize = 128;

/// The call's request id (the `x-request-id` of logs and traces, not RequestAccess's
/// idempotency `request_id`): the caller's when it is a plain token, else a new one.
pub fn request_id(headers: &http::HeaderMap) -> String {
    let offered = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|value| {
            (1..=MAX_REQUEST_ID_CHARS).contains(&value.len())
                && value
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b':' | b'-'))
        });
    match offered {
        Some(offered) => offered.to_owned(),
        None => uuid::Uuid::now_v7().to_string(),
    }
}

/// Reads the W3C trace context from a call's metadata.
struct Metadata<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[derive(Debug, Clone)]
pub struct ObserveLayer {
    methods: Methods,
}

impl ObserveLayer {
    pub fn new(methods: Methods) -> Self {
        Self { methods }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            methods: self.methods.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    methods: Methods,
}

/// The span and what its end reports.
struct Call {
    span: tracing::Span,
    method: &'static str,
    caller: Option<Arc<str>>,
    started: Instant,
}

impl Call {
    fn finish(self, code: tonic::Code) {
        let name = code_name(code);
        let took = self.started.elapsed();
        self.span.record("rpc.response.status_code", name);
        // The codes that say the server failed, as the semantic conventions list them; the rest
        // are the caller's business (a denied or invalid request is not a server error).
        if matches!(
            code,
            tonic::Code::Unknown
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unimplemented
                | tonic::Code::Internal
                | tonic::Code::Unavailable
                | tonic::Code::DataLoss
        ) {
            self.span.record("otel.status_code", "ERROR");
        }
        let caller = self.caller.as_deref().unwrap_or("-");
        // In the span, so that the line carries its fields (request id, trace id) like every
        // other line of the call.
        // Health checks at debug: a load balancer's probes every few seconds would drown the rest.
        let probe = self.method.starts_with("grpc.health.v1.Health/");
        self.span.in_scope(|| {
            let duration_ms = took.as_secs_f64() * 1_000.0;
            if probe {
                tracing::debug!(
                    method = self.method,
                    caller,
                    status = name,
                    duration_ms,
                    "call finished"
                );
            } else {
                tracing::info!(
                    method = self.method,
                    caller,
                    status = name,
                    duration_ms,
                    "call finished"
                );
            }
        });
        metrics().rpc_finished(self.method, name, took);
    }
}

/// `grpc-status` in a header map (the headers of a trailers-only answer, or the trailers).
fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(tonic::Code::from_i32(value.parse().ok()?))
}

impl<S, B> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        // Looked up once: the layers inside read it from the request's extensions.
        let served = self.methods.get(request.uri().path()).copied();
        let method = served.map_or(OTHER_METHOD, |method| method.name);
        if let Some(served) = served {
            request.extensions_mut().insert(served);
        }
        let id = request_id(request.headers());
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&Metadata(request.headers()))
        });
        let span = tracing::info_span!(
            "rpc",
            otel.name = method,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system.name = "grpc",
            rpc.method = method,
            rpc.response.status_code = tracing::field::Empty,
            request_id = id.as_str(),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            caller = tracing::field::Empty,
        );
        let parent_trace = parent.span().span_context().trace_id();
        // Only fails when the span is disabled (then nothing is exported either).
        let _ = span.set_parent(parent);
        let exported = span.context().span().span_context().clone();
        // The trace the call is part of (the caller's, when telemetry is off and only it knows).
        let trace_id = if exported.trace_id() == opentelemetry::trace::TraceId::INVALID {
            parent_trace
        } else {
            exported.trace_id()
        };
        if trace_id != opentelemetry::trace::TraceId::INVALID {
            span.record("trace_id", tracing::field::display(trace_id));
        }
        if exported.span_id() != opentelemetry::trace::SpanId::INVALID {
            span.record("span_id", tracing::field::display(exported.span_id()));
        }
        let header = http::HeaderValue::from_str(&id).ok();
        // The inner layers start inside the span too (the deadline layer's task takes it along).
        let answer = span.in_scope(|| self.inner.call(request)).instrument(span.clone());
        // Until the answer's headers: a call dropped before them (its caller went away) ends
        // CANCELLED, logged and measured like any other.
        let mut unanswered = Unanswered(Some(Call {
            span,
            method,
            caller: None,
            started,
        }));
        Box::pin(async move {
            let answered = answer.await;
            let Some(mut call) = unanswered.0.take() else {
                return answered;
            };
            let mut response = match answered {
                Ok(response) => response,
                Err(error) => {
                    // tonic answers the error itself (as UNKNOWN unless it is a status).
                    call.finish(tonic::Code::Unknown);
                    return Err(error);
                }
            };
            if let Some(header) = header {
                response.headers_mut().insert(REQUEST_ID_HEADER, header);
            }
            call.caller = response
                .extensions()
                .get::<AuthenticatedAs>()
                .map(|caller| Arc::clone(&caller.0));
            if let Some(caller) = &call.caller {
                call.span.record("caller", &**caller);
            }
            match status_in(response.headers()) {
                Some(code) => {
                    call.finish(code);
                    Ok(response)
                }
                None => Ok(response.map(|body| tonic::body::Body::new(Observed { body, call: Some(call) }))),
            }
        })
    }
}

/// A call whose answer has not come yet: finished CANCELLED when dropped so.
struct Unanswered(Option<Call>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(call) = self.0.take() {
            call.finish(tonic::Code::Cancelled);
        }
    }
}

/// A response body that ends its call at its trailers, or when dropped before them.
struct Observed {
    body: tonic::body::Body,
    call: Option<Call>,
}

impl http_body::Body for Observed {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = self.call.take()
                {
                    call.finish(status_in(trailers).unwrap_or(tonic::Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(status))) => {
                if let Some(call) = self.call.take() {
                    call.finish(status.code());
                }
            }
            Poll::Ready(None) => {
                // A body that ends without trailers: gRPC requires them, so the caller sees an
                // error of its own making.
                if let Some(call) = self.call.take() {
                    call.finish(tonic::Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.finish(tonic::Code::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(value: &str) -> String {
        let mut headers = http::HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, value.parse().unwrap());
        request_id(&headers)
    }

    #[test]
    fn a_plain_request_id_is_kept_and_anything_else_replaced() {
        assert_eq!(&*offered("portal-7f3a:retry.2_x"), "portal-7f3a:retry.2_x");
        let long = "a".repeat(MAX_REQUEST_ID_CHARS);
        assert_eq!(&*offered(&long), long.as_str());
        for unfit in [
            "",
            "with space",
            "new\u{7f}line",
            "quote\"",
            &"a".repeat(MAX_REQUEST_ID_CHARS + 1),
        ] {
            let Ok(value) = http::HeaderValue::from_str(unfit) else {
                continue;
            };
            let mut headers = http::HeaderMap::new();
            headers.insert(REQUEST_ID_HEADER, value);
            let made = request_id(&headers);
            assert_ne!(&*made, unfit);
            assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
        }
        let made = request_id(&http::HeaderMap::new());
        assert_eq!(uuid::Uuid::parse_str(&made).unwrap().get_version_num(), 7);
    }
}
