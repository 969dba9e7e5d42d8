//! A small fake STS for what moto does not check or cannot fail at: it speaks STS's XML,
//! captures what it was sent, and fails or stalls on demand.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;

/// What the fake STS endpoint does with an AssumeRole call.
#[derive(Clone)]
pub enum StsBehaviour {
    Succeed,
    /// Answers with STS's XML error document.
    Fail {
        status: u16,
        code: &'static str,
        message: &'static str,
    },
    /// Succeeds after a delay.
    Delay(Duration),
}

/// A fake STS endpoint on loopback that records every call's form parameters.
pub struct FakeSts {
    pub url: String,
    calls: Arc<Mutex<Vec<HashMap<String, String>>>>,
    role_ids: RoleIds,
}

/// The RoleId the fake reports for each role name (`AROAFAKE` for any other).
type RoleIds = Arc<Mutex<HashMap<String, String>>>;

/// Called with each AssumeRole call's parameters before the answer is sent.
pub type Hook = Arc<dyn Fn(&HashMap<String, String>) + Send + Sync>;

impl FakeSts {
    pub async fn start(behaviour: StsBehaviour) -> Self {
        Self::start_with_hook(behaviour, Arc::new(|_| {})).await
    }

    /// `hook` runs on every call, before the answer is sent.
    pub async fn start_with_hook(behaviour: StsBehaviour, hook: Hook) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let counter = Arc::new(AtomicUsize::new(0));
        let role_ids = RoleIds::default();
        let state = (Arc::clone(&calls), behaviour, hook, counter, Arc::clone(&role_ids));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: hyper::Request<Incoming>| {
                        let (calls, behaviour, hook, counter, role_ids) = state.clone();
                        async move {
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let params: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
                            calls.lock().unwrap().push(params.clone());
                            hook(&params);
                            let n = counter.fetch_add(1, Ordering::SeqCst);
                            let role = params.get("RoleArn").and_then(|arn| arn.rsplit('/').next());
                            let role_id = role
                                .and_then(|role| role_ids.lock().unwrap().get(role).cloned())
                                .unwrap_or_else(|| "AROAFAKE".to_owned());
                            Ok::<_, hyper::Error>(answer(&behaviour, &params, n, &role_id).await)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, calls, role_ids }
    }

    /// Sessions of role `role_name` are reported under `role_id` from now on, as STS reports
    /// the RoleId of the role's current incarnation.
    pub fn set_role_id(&self, role_name: &str, role_id: &str) {
        self.role_ids
            .lock()
            .unwrap()
            .insert(role_name.to_owned(), role_id.to_owned());
    }

    pub fn calls(&self) -> Vec<HashMap<String, String>> {
        self.calls.lock().unwrap().clone()
    }
}

pub fn fake_secret(n: usize) -> String {
    format!("FakeSecretAccessKey{n:04}wJalrXUtnFEMIK7MDENGbPxRfiCY")
}

pub fn fake_token(n: usize) -> String {
    format!("FakeSessionToken{n:04}IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ")
}

async fn answer(
    behaviour: &StsBehaviour,
    params: &HashMap<String, String>,
    n: usize,
    role_id: &str,
) -> Response<Full<Bytes>> {
    let xml = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/xml")
            // As STS does: the request id in a header too (what the SDK reads).
            .header("x-amzn-requestid", format!("fake-{n}"))
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    match behaviour {
        StsBehaviour::Fail { status, code, message } => xml(
            *status,
            format!(
                r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>fake-{n}</RequestId></ErrorResponse>"#
            ),
        ),
        StsBehaviour::Delay(delay) => {
            tokio::time::sleep(*delay).await;
            xml(200, success(params, n, role_id))
        }
        StsBehaviour::Succeed => xml(200, success(params, n, role_id)),
    }
}

fn success(params: &HashMap<String, String>, n: usize, role_id: &str) -> String {
    let role_arn = &params["RoleArn"];
    let session = &params["RoleSessionName"];
    let account = role_arn.split(':').nth(4).unwrap();
    let role = role_arn.rsplit('/').next().unwrap();
    let duration: i64 = params["DurationSeconds"].parse().unwrap();
    let expiration = (OffsetDateTime::now_utc() + time::Duration::seconds(duration))
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    format!(
        r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><SourceIdentity>{source}</SourceIdentity><AssumedRoleUser><AssumedRoleId>{role_id}:{session}</AssumedRoleId><Arn>arn:aws:sts::{account}:assumed-role/{role}/{session}</Arn></AssumedRoleUser><Credentials><AccessKeyId>ASIAFAKE{n:012}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey><SessionToken>{token}</SessionToken><Expiration>{expiration}</Expiration></Credentials><PackedPolicySize>7</PackedPolicySize></AssumeRoleResult><ResponseMetadata><RequestId>fake-{n}</RequestId></ResponseMetadata></AssumeRoleResponse>"#,
        source = params.get("SourceIdentity").cloned().unwrap_or_default(),
        secret = fake_secret(n),
        token = fake_token(n),
    )
}
