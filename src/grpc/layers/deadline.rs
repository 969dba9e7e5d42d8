//! Deadlines: a call is answered DEADLINE_EXCEEDED when its caller's deadline (`grpc-timeout`)
//! passes, and a unary call also when its method's cap does (`server.call_timeout_ms`,
//! `server.call_timeouts`), whichever comes first. A stream is bounded here only until its
//! first answer (its response headers); after that its caller's own deadline ends it.
//!
//! tonic's own timer on `grpc-timeout` (around every layer, not configurable away) answers
//! CANCELLED: this layer answers [`MARGIN`] before the caller's deadline, so the caller sees the
//! code gRPC defines for it.
//!
//! INVARIANT (a call is never cut between its writes): the call runs on a task of its own, to its
//! end, whether its answer is still wanted or not (past its deadline, or its caller gone). A
//! grant's change is one atomic step, but what follows it (the audit log reference, the access key
//! index, the notification) is not; a call dropped between them would leave gaps that no repair
//! knows of. Credentials a call minted after its caller stopped waiting are recorded, and never
//! returned. The layers inside this one (the bound on calls in flight) hold their place until the
//! task ends.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use tonic::codegen::{BoxFuture, Service, http};

use super::{CallSettings, answer, methods::Method};
use tracing::Instrument as _;

use crate::grpc::status::{call_lost, deadline_exceeded};

/// How long before the caller's deadline the call is answered.
pub const MARGIN: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    default_cap: Duration,
    caps: std::sync::Arc<std::collections::BTreeMap<String, Duration>>,
}

impl DeadlineLayer {
    pub fn new(settings: &CallSettings) -> Self {
        Self {
            default_cap: settings.call_timeout,
            caps: std::sync::Arc::new(settings.call_timeouts.clone()),
        }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    layer: DeadlineLayer,
}

/// `grpc-timeout`: an ASCII integer of at most 8 digits and a unit (H, M, S, m, u, n). A value that
/// is not one is no deadline, as tonic reads it.
pub fn caller_deadline(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3_600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Which deadline ends a call first, and after how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Caller(Duration),
    Cap(&'static str, Duration),
}

impl<S, B> Service<http::Request<B>> for Deadline<S>
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

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let caller = caller_deadline(request.headers()).map(|asked| Limit::Caller(asked.saturating_sub(MARGIN)));
        let cap = request
            .extensions()
            .get::<Method>()
            .filter(|method| !method.streams)
            .map(|method| {
                let cap = self
                    .layer
                    .caps
                    .get(method.short)
                    .copied()
                    .unwrap_or(self.layer.default_cap);
                Limit::Cap(method.short, cap)
            });
        let limit = match (caller, cap) {
            (Some(Limit::Caller(asked)), Some(Limit::Cap(method, cap))) if cap < asked => Some(Limit::Cap(method, cap)),
            (Some(caller), _) => Some(caller),
            (None, cap) => cap,
        };
        // Inside the call's span (the task would otherwise start outside it).
        let task = tokio::spawn(self.inner.call(request).in_current_span());
        Box::pin(async move {
            let finished = match limit {
                None => task.await,
                Some(limit) => {
                    let after = match limit {
                        Limit::Caller(after) | Limit::Cap(_, after) => after,
                    };
                    match tokio::time::timeout(after, task).await {
                        Ok(finished) => finished,
                        // The task goes on to its end; only its answer is dropped.
                        Err(_) => return Ok(answer(deadline_exceeded(&limit.why()))),
                    }
                }
            };
            finished.unwrap_or_else(|lost| {
                tracing::error!(error = %lost, "a call's task ended without an answer");
                Ok(answer(call_lost()))
            })
        })
    }
}

impl Limit {
    fn why(self) -> String {
        match self {
            Self::Caller(_) => "the call's deadline (grpc-timeout) passed before it finished".to_owned(),
            Self::Cap(method, cap) => format!(
                "{method} may take at most {} ms here (server.call_timeout_ms, server.call_timeouts), and had not finished",
                cap.as_millis()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        headers
    }

    #[test]
    fn grpc_timeout_is_read_in_every_unit_and_nonsense_is_no_deadline() {
        for (value, expected) in [
            ("1H", Some(Duration::from_secs(3_600))),
            ("2M", Some(Duration::from_secs(120))),
            ("3S", Some(Duration::from_secs(3))),
            ("250m", Some(Duration::from_millis(250))),
            ("99999999u", Some(Duration::from_micros(99_999_999))),
            ("7n", Some(Duration::from_nanos(7))),
            ("123456789S", None),
            ("S", None),
            ("10", None),
            ("-1S", None),
            ("1.5S", None),
            ("10x", None),
        ] {
            assert_eq!(caller_deadline(&with(value)), expected, "{value}");
        }
        assert_eq!(caller_deadline(&http::HeaderMap::new()), None);
    }
}
