//! The server's cross-cutting behaviour, as tower layers around every service on the API port,
//! outermost first:
//!
//! 1. [`observe`]: the request id (`x-request-id`, accepted or made, returned on the response),
//!    the W3C trace context of the caller, one server span per call, one log line at info when
//!    it ends, and the `rpc.server.call.duration` metric: everything below is inside the span;
//! 2. [`drain`]: streams other than GrantBroker's own end with UNAVAILABLE when the server
//!    starts shutting down;
//! 3. [`deadline`]: the caller's `grpc-timeout`, capped per method, answered DEADLINE_EXCEEDED;
//!    the call itself runs to its end on a task of its own, so that no deadline or departed
//!    caller cuts it between its writes;
//! 4. [`shed`]: a limit on the calls in flight (held until the call's task ends), past which
//!    calls are answered UNAVAILABLE with RetryInfo at once (never queued);
//! 5. then, for GrantBroker alone, authentication ([`super::auth::RequireAuthentication`]), on
//!    the headers before the message is decoded.
//!
//! Authorization (which caller may make which call, and act on which grant) is the broker's
//! table ([`crate::domain::access`]), asked by every use case: a grant's owner is known only once
//! the grant is read, and the use cases must refuse whatever transport calls them.

pub mod deadline;
pub mod drain;
pub mod methods;
pub mod observe;
pub mod shed;

use std::time::Duration;

use tonic::codegen::http;

pub use methods::Methods;
use tower::layer::util::{Identity, Stack};

/// How the stack behaves, from `[server]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSettings {
    /// Calls in flight at once, past which calls are shed.
    pub max_concurrent_calls: usize,
    /// The longest a unary call may take, whatever deadline its caller sets.
    pub call_timeout: Duration,
    /// Per method (its name, `RequestAccess`): a longer or shorter cap than `call_timeout`.
    pub call_timeouts: std::collections::BTreeMap<String, Duration>,
}

impl Default for CallSettings {
    fn default() -> Self {
        Self {
            max_concurrent_calls: 1_024,
            call_timeout: Duration::from_secs(30),
            call_timeouts: std::collections::BTreeMap::new(),
        }
    }
}

/// The layers, in order, for `tonic::transport::Server::layer`.
pub type ServerLayers = Stack<
    shed::ShedLayer,
    Stack<deadline::DeadlineLayer, Stack<drain::DrainLayer, Stack<observe::ObserveLayer, Identity>>>,
>;

/// The stack; `draining` turns true when the server starts shutting down.
pub fn server_layers(settings: &CallSettings, draining: tokio::sync::watch::Receiver<bool>) -> ServerLayers {
    let methods = Methods::served();
    tower::ServiceBuilder::new()
        .layer(observe::ObserveLayer::new(methods))
        .layer(drain::DrainLayer::new(draining))
        .layer(deadline::DeadlineLayer::new(settings))
        .layer(shed::ShedLayer::new(settings.max_concurrent_calls))
        .into_inner()
}

/// A status as the HTTP response a layer answers with.
fn answer(status: tonic::Status) -> http::Response<tonic::body::Body> {
    status.into_http()
}
