//! Streams end when the server starts shutting down: a stream that never ends would hold the
//! shutdown for its whole drain timeout. GrantBroker's own streams end themselves, with the
//! message that tells their clients to resume after their last cursor (`grpc::service`); this
//! layer ends the others (health `Watch`, server reflection) with UNAVAILABLE, between two
//! messages.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http_body::{Frame, SizeHint};
use tokio::sync::watch;
use tonic::codegen::{BoxFuture, Service, http};

use super::methods::Method;

/// The streams that end themselves.
const OWN_STREAMS: &str = "/grantbroker.v1.GrantBroker/";

#[derive(Debug, Clone)]
pub struct DrainLayer {
    draining: watch::Receiver<bool>,
}

impl DrainLayer {
    pub fn new(draining: watch::Receiver<bool>) -> Self {
        Self { draining }
    }
}

impl<S> tower::Layer<S> for DrainLayer {
    type Service = Drain<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Drain {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Drain<S> {
    inner: S,
    layer: DrainLayer,
}

impl<S, B> Service<http::Request<B>> for Drain<S>
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
        let ends_here = !request.uri().path().starts_with(OWN_STREAMS)
            && request
                .extensions()
                .get::<Method>()
                .is_some_and(|method| method.streams);
        let call = self.inner.call(request);
        if !ends_here {
            return Box::pin(call);
        }
        let mut draining = self.layer.draining.clone();
        Box::pin(async move {
            let response = call.await?;
            let drained: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
                // An error means the server is gone: the same.
                let _ = draining.wait_for(|draining| *draining).await;
            });
            Ok(response.map(|body| {
                tonic::body::Body::new(Ending {
                    body,
                    drained,
                    ended: false,
                })
            }))
        })
    }
}

/// A stream's body that ends with UNAVAILABLE once the drain starts.
struct Ending {
    body: tonic::body::Body,
    drained: Pin<Box<dyn Future<Output = ()> + Send>>,
    ended: bool,
}

impl http_body::Body for Ending {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.drained.as_mut().poll(cx).is_ready() {
            self.ended = true;
            let status = tonic::Status::unavailable("this grant-broker is shutting down: reconnect to any replica");
            let mut trailers = http::HeaderMap::new();
            // Only fails for a message that is not a header value: this one is.
            if status.add_header(&mut trailers).is_ok() {
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
