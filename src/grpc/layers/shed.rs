//! A bound on the calls in flight, with load shedding: a call past the bound is answered
//! UNAVAILABLE with RetryInfo at once, never queued (a queue in front of a saturated broker only
//! turns overload into timeouts, and the calls it holds into memory). Callers retry after the
//! delay, or on another replica.
//!
//! A permit is held from the call's arrival until its response headers (a stream's messages
//! come after, and are bounded by HTTP/2's streams per connection instead). Health checks are
//! never shed: a replica at its limit is busy, not dead, and a probe that failed then would
//! have the orchestrator restart it at the worst moment.
//!
//! Written on tokio's semaphore rather than tower's `ConcurrencyLimit` and `LoadShed`: those
//! decide in `poll_ready`, before the request (and its path) is known, and tonic makes a layer
//! per connection, so the limit would be per connection, not per process.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use tokio::sync::Semaphore;
use tonic::codegen::{BoxFuture, Service, http};

use super::answer;
use crate::grpc::status::overloaded;

/// The path prefix no limit applies to.
const HEALTH: &str = "/grpc.health.v1.Health/";

#[derive(Debug, Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl ShedLayer {
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            permits: Arc::clone(&self.permits),
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Shed<S> {
    inner: S,
    permits: Arc<Semaphore>,
    limit: usize,
}

impl<S, B> Service<http::Request<B>> for Shed<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let permit = if request.uri().path().starts_with(HEALTH) {
            None
        } else {
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let limit = self.limit;
                    return Box::pin(async move { Ok(answer(overloaded(limit))) });
                }
            }
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            drop(permit);
            response
        })
    }
}
