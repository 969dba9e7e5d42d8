//! A fault-injecting IAM endpoint for the failures moto cannot produce: a small HTTP server on
//! loopback that forwards every request to a moto server (which does not check signatures, so a
//! request signed for this endpoint is still good there) unless told to fail, answering then with
//! IAM's query-protocol XML error document. It counts calls by `Action` and keeps the last
//! `PolicyDocument` forwarded per role, so tests can assert what reached IAM.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};

/// What the endpoint does instead of forwarding.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answers with IAM's XML error document, e.g. 400 `Throttling`, 403 `AccessDenied`.
    Error {
        status: u16,
        code: &'static str,
        message: &'static str,
    },
    /// Forwards after a delay (for timeouts).
    Delay(Duration),
}

impl Fault {
    pub fn throttling() -> Self {
        Self::Error {
            status: 400,
            code: "Throttling",
            message: "Rate exceeded",
        }
    }

    pub fn access_denied() -> Self {
        Self::Error {
            status: 403,
            code: "AccessDenied",
            message: "User: arn:aws:sts::123456789012:assumed-role/grant-broker/x is not authorized to perform: iam:GetRole",
        }
    }

    pub fn unavailable() -> Self {
        Self::Error {
            status: 503,
            code: "ServiceUnavailable",
            message: "Service is unavailable",
        }
    }
}

/// How many of the coming requests fail, and how.
#[derive(Default)]
struct Faults {
    fault: Option<Fault>,
    /// `None`: every request until [`FakeIam::recover`].
    remaining: Option<usize>,
}

#[derive(Default)]
struct State {
    faults: Mutex<Faults>,
    calls: Mutex<HashMap<String, usize>>,
    policies: Mutex<HashMap<String, String>>,
}

impl State {
    /// The fault for this request, if any, using one up.
    fn take_fault(&self) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap();
        let fault = faults.fault.clone()?;
        match &mut faults.remaining {
            None => Some(fault),
            Some(0) => {
                faults.fault = None;
                None
            }
            Some(remaining) => {
                *remaining -= 1;
                if *remaining == 0 {
                    faults.fault = None;
                    faults.remaining = None;
                }
                Some(fault)
            }
        }
    }
}

/// The endpoint; the server runs until the test's runtime ends.
pub struct FakeIam {
    pub url: String,
    state: Arc<State>,
}

impl FakeIam {
    /// Listens on `127.0.0.1:0` and forwards to `upstream` (moto's URL).
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State::default());
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let upstream: Arc<str> = upstream.trim_end_matches('/').into();
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                let (state, client, upstream) = (Arc::clone(&shared), client.clone(), Arc::clone(&upstream));
                tokio::spawn(async move {
                    let service = service_fn(move |request: hyper::Request<Incoming>| {
                        let (state, client, upstream) = (Arc::clone(&state), client.clone(), Arc::clone(&upstream));
                        async move { Ok::<_, hyper::Error>(handle(&state, &client, &upstream, request).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, state }
    }

    /// The next `n` requests get `fault`, then requests are forwarded again.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        *self.state.faults.lock().unwrap() = Faults {
            fault: Some(fault),
            remaining: Some(n),
        };
    }

    /// Every request gets `fault` until [`Self::recover`].
    pub fn fail_all(&self, fault: Fault) {
        *self.state.faults.lock().unwrap() = Faults {
            fault: Some(fault),
            remaining: None,
        };
    }

    /// Forwards every request again.
    pub fn recover(&self) {
        *self.state.faults.lock().unwrap() = Faults::default();
    }

    /// Requests received with this `Action` (`GetRole`, `PutRolePolicy`), failed or forwarded.
    pub fn calls(&self, action: &str) -> usize {
        self.state.calls.lock().unwrap().get(action).copied().unwrap_or(0)
    }

    /// Requests received in all.
    pub fn total_calls(&self) -> usize {
        self.state.calls.lock().unwrap().values().sum()
    }

    /// The last `PolicyDocument` of a PutRolePolicy forwarded for `role_name`.
    pub fn last_policy(&self, role_name: &str) -> Option<String> {
        self.state.policies.lock().unwrap().get(role_name).cloned()
    }
}

async fn handle(
    state: &State,
    client: &Client<HttpConnector, Full<Bytes>>,
    upstream: &str,
    request: hyper::Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let params: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let action = params.get("Action").cloned().unwrap_or_default();
    *state.calls.lock().unwrap().entry(action.clone()).or_default() += 1;
    match state.take_fault() {
        Some(Fault::Error { status, code, message }) => {
            let request_id = uuid::Uuid::now_v7();
            return Response::builder()
                .status(status)
                .header("content-type", "text/xml")
                .body(Full::new(Bytes::from(format!(
                    r#"<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"#
                ))))
                .unwrap();
        }
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    if action == "PutRolePolicy"
        && let (Some(role), Some(document)) = (params.get("RoleName"), params.get("PolicyDocument"))
    {
        state.policies.lock().unwrap().insert(role.clone(), document.clone());
    }
    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let mut forwarded = hyper::Request::builder()
        .method(parts.method)
        .uri(format!("{upstream}{path}"));
    for (name, value) in &parts.headers {
        if name != hyper::header::HOST {
            forwarded = forwarded.header(name, value);
        }
    }
    let response = client.request(forwarded.body(Full::new(body)).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Response::from_parts(parts, Full::new(body))
}
