//! Who is calling, proven before any message is decoded: the calling system by a client
//! certificate verified at the TLS handshake (mTLS), whose identity (`server.tls.client_identity`)
//! names a configured caller, else by `authorization: Bearer <token>` metadata matched by the
//! token's SHA-256 (unless `server.bearer_tokens` is off); and the person or job it acts for by a
//! verified OIDC token in `x-identity-token` metadata ([`crate::adapters::oidc`]). A caller set
//! to authenticate by its identity token alone (a pipeline) is found by the token's issuer and
//! audience. Tokens themselves are never stored, logged or echoed, and the identity token is
//! removed from the request once verified.
//!
//! It runs as a tower service around GrantBroker ([`RequireAuthentication`]), on the headers, before
//! the message is decoded: an unauthenticated peer cannot make the server decode (or allocate
//! for) a body at all, and the token check may await its issuer's keys. The authenticated
//! [`Caller`] (an `Arc`, shared, never copied per call) and the verified identity travel to the
//! handlers in the request's extensions.

use std::{
    collections::HashMap,
    sync::Arc,
    task::{Context, Poll},
};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tonic::{
    Request, Status,
    codegen::{BoxFuture, Service, http},
    server::NamedService,
};

use super::Current;
use super::layers::observe::AuthenticatedAs;
use super::status::{identity_keys_unavailable, identity_token_refused, unauthenticated};
use crate::{
    adapters::oidc::{Inspected, TokenError, Verifier},
    broker::Broker,
    config::CallerConfig,
    domain::Caller,
    ports::Ports,
    tls::ClientCertificate,
};

/// The metadata that carries a person's or a job's OIDC token (the raw JWT, or `Bearer <jwt>`).
pub const IDENTITY_TOKEN_HEADER: &str = "x-identity-token";

/// Maps token digests, certificate identities and identity-token bindings to callers, and
/// verifies identity tokens.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    by_digest: HashMap<[u8; 32], Arc<Caller>>,
    by_identity: HashMap<String, Arc<Caller>>,
    /// Callers a verified token alone identifies: by (issuer id, audience).
    by_token_binding: HashMap<(String, String), Arc<Caller>>,
    bearer_tokens: bool,
    verifier: Option<Arc<Verifier>>,
}

impl Authenticator {
    /// Bearer tokens only (no mTLS).
    pub fn new(callers: &[CallerConfig]) -> Self {
        Self::with_certificates(callers, true)
    }

    /// Callers by their tokens (when `bearer_tokens`) and by their certificates' identities.
    pub fn with_certificates(callers: &[CallerConfig], bearer_tokens: bool) -> Self {
        let mut by_digest = HashMap::new();
        let mut by_identity = HashMap::new();
        for config in callers {
            let caller = Arc::new(config.caller());
            if let Some(digest) = config.token_sha256 {
                by_digest.insert(digest, Arc::clone(&caller));
            }
            if let Some(identity) = &config.certificate_identity {
                by_identity.insert(identity.clone(), caller);
            }
        }
        Self {
            by_digest,
            by_identity,
            by_token_binding: HashMap::new(),
            bearer_tokens,
            verifier: None,
        }
    }

    /// Also verifies identity tokens with `verifier`; callers that authenticate by their token
    /// alone are found by its issuer and audience (their own, else the issuer's).
    pub fn with_identity(mut self, callers: &[CallerConfig], verifier: Arc<Verifier>) -> Self {
        for config in callers
            .iter()
            .filter(|config| config.authenticated_by_identity(self.bearer_tokens))
        {
            let Some(issuer) = config.identity.issuers.first() else {
                continue;
            };
            let Some(audience) = config
                .identity
                .audience
                .clone()
                .or_else(|| verifier.audience_of(issuer))
            else {
                continue;
            };
            self.by_token_binding
                .insert((issuer.clone(), audience), Arc::new(config.caller()));
        }
        self.verifier = Some(verifier);
        self
    }

    /// The caller of a call, from its headers and the certificate its connection presented,
    /// carrying the identity token the call verified (if any); or UNAUTHENTICATED saying what is
    /// wrong (UNAVAILABLE when an issuer's keys could not be fetched yet).
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        certificate: Option<&ClientCertificate>,
        now: OffsetDateTime,
    ) -> Result<Arc<Caller>, Status> {
        let token = identity_token(headers)?;
        let presents_credentials = headers.contains_key("authorization")
            || matches!(
                certificate,
                Some(ClientCertificate::Identity(_) | ClientCertificate::Unnamed)
            );
        if let (Some(token), false) = (token, presents_credentials)
            && !self.by_token_binding.is_empty()
        {
            // The token alone names the caller. One answer for every token that names none, so
            // that a peer with no credentials learns nothing of which issuers and audiences are
            // configured.
            let nobody = || {
                unauthenticated(
                    "missing `authorization: Bearer <token>` metadata, and the identity token names no caller that authenticates by its token",
                )
            };
            let inspected = self
                .verifier()
                .ok()
                .and_then(|verifier| verifier.inspect(token).ok())
                .ok_or_else(nobody)?;
            let caller = inspected
                .audiences()
                .into_iter()
                .find_map(|audience| {
                    self.by_token_binding
                        .get(&(inspected.issuer_id().to_owned(), audience.to_owned()))
                })
                .cloned()
                .ok_or_else(nobody)?;
            return self.with_token(caller, inspected, now).await;
        }
        let caller = self.caller(headers, certificate)?;
        match token {
            None if caller.identity.required => Err(unauthenticated(&format!(
                "caller `{}` must send its verified identity token in `{IDENTITY_TOKEN_HEADER}` metadata",
                caller.id
            ))),
            None => Ok(caller),
            Some(token) => {
                let inspected = self.verifier()?.inspect(token).map_err(|error| refused(&error))?;
                self.with_token(caller, inspected, now).await
            }
        }
    }

    /// The same bearer-token setting and identity verifier, for another list of callers (what a
    /// reload of the configuration makes).
    pub fn for_callers(&self, callers: &[CallerConfig]) -> Self {
        let fresh = Self::with_certificates(callers, self.bearer_tokens);
        match &self.verifier {
            Some(verifier) => fresh.with_identity(callers, Arc::clone(verifier)),
            None => fresh,
        }
    }

    fn verifier(&self) -> Result<&Verifier, Status> {
        self.verifier.as_deref().ok_or_else(|| {
            identity_token_refused("no identity issuers are configured: identity tokens cannot be verified")
        })
    }

    /// `caller`, carrying the token it presented once the token verifies for it: of an issuer it
    /// may present, for its audience, with its required claims. A copy of the caller, so the use
    /// cases see which person or job the call is (a caller's grants are only theirs to act on).
    async fn with_token(
        &self,
        caller: Arc<Caller>,
        inspected: Inspected<'_, '_>,
        now: OffsetDateTime,
    ) -> Result<Arc<Caller>, Status> {
        if !caller.identity.issuers.contains(inspected.issuer_id()) {
            return Err(identity_token_refused(&format!(
                "caller `{}` may not present identity tokens of issuer `{}` (its identity_issuers)",
                caller.id,
                inspected.issuer_id()
            )));
        }
        let identity = inspected
            .verify(caller.identity.audience.as_deref(), &caller.identity.claims, now)
            .await
            .map_err(|error| refused(&error))?;
        Ok(Arc::new(Caller {
            call_token: Some(Arc::new(identity)),
            ..(*caller).clone()
        }))
    }

    /// The calling system: by the client certificate its connection presented (read once, at
    /// the handshake that verified it), else by its bearer token; or UNAUTHENTICATED saying what
    /// is wrong. A token beside a certificate must name the same caller.
    fn caller(
        &self,
        metadata: &http::HeaderMap,
        certificate: Option<&ClientCertificate>,
    ) -> Result<Arc<Caller>, Status> {
        let by_certificate = match certificate {
            None | Some(ClientCertificate::Absent) => None,
            Some(ClientCertificate::Unnamed) => {
                return Err(unauthenticated(
                    "the client certificate carries no identity of the configured kind",
                ));
            }
            Some(ClientCertificate::Identity(identity)) => {
                let caller =
                    self.by_identity.get(identity).cloned().ok_or_else(|| {
                        unauthenticated("the client certificate's identity is not a configured caller")
                    })?;
                Some(caller)
            }
        };
        let header = metadata.get("authorization");
        match (by_certificate, header) {
            (Some(caller), None) => Ok(caller),
            (Some(caller), Some(_)) => {
                let by_token = self.by_token(metadata)?;
                if by_token.id == caller.id {
                    Ok(caller)
                } else {
                    Err(unauthenticated(
                        "the client certificate and the bearer token name different callers",
                    ))
                }
            }
            (None, _) => self.by_token(metadata),
        }
    }

    fn by_token(&self, metadata: &http::HeaderMap) -> Result<Arc<Caller>, Status> {
        if !self.bearer_tokens {
            return Err(unauthenticated(
                "bearer tokens are switched off: present a client certificate",
            ));
        }
        let header = metadata
            .get("authorization")
            .ok_or_else(|| unauthenticated("missing `authorization: Bearer <token>` metadata"))?;
        let header = header
            .to_str()
            .map_err(|_| unauthenticated("the authorization metadata is not printable ASCII"))?;
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => token.trim(),
            _ => {
                return Err(unauthenticated("the authorization metadata must be `Bearer <token>`"));
            }
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_digest
            .get(&digest)
            .cloned()
            .ok_or_else(|| unauthenticated("unknown caller token"))
    }
}

fn refused(error: &TokenError) -> Status {
    match error {
        TokenError::Invalid(reason) => identity_token_refused(reason),
        TokenError::KeysUnavailable(reason) => identity_keys_unavailable(reason),
    }
}

/// The identity token a call carries, if any.
fn identity_token(headers: &http::HeaderMap) -> Result<Option<&str>, Status> {
    let Some(value) = headers.get(IDENTITY_TOKEN_HEADER) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| identity_token_refused("the identity token metadata is not printable ASCII"))?
        .trim();
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => value,
    };
    if token.is_empty() {
        return Err(identity_token_refused("the identity token metadata is empty"));
    }
    Ok(Some(token))
}

/// GrantBroker behind authentication: every call is authenticated on its headers before the
/// service (and its decoder) sees it; refused calls are answered here. The configuration in use
/// is taken once, here: the call is authenticated against its callers and carries its broker.
pub struct RequireAuthentication<S, P: Ports> {
    inner: S,
    current: Arc<Current<P>>,
}

impl<S: Clone, P: Ports> Clone for RequireAuthentication<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            current: Arc::clone(&self.current),
        }
    }
}

impl<S, P: Ports> RequireAuthentication<S, P> {
    pub fn new(inner: S, current: Arc<Current<P>>) -> Self {
        Self { inner, current }
    }
}

impl<S: NamedService, P: Ports> NamedService for RequireAuthentication<S, P> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, P> Service<http::Request<B>> for RequireAuthentication<S, P>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    P: Ports,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was made ready serves this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let served = self.current.load_full();
        Box::pin(async move {
            let authenticated = served
                .auth
                .authenticate(
                    request.headers(),
                    request.extensions().get::<ClientCertificate>(),
                    OffsetDateTime::now_utc(),
                )
                .await;
            match authenticated {
                Ok(caller) => {
                    // Verified: nothing after this point needs (or could leak) the token.
                    request.headers_mut().remove(IDENTITY_TOKEN_HEADER);
                    let name = AuthenticatedAs(Arc::from(caller.id.as_str()));
                    // Every line the call logs from here on names its caller.
                    tracing::Span::current().record("caller", caller.id.as_str());
                    request.extensions_mut().insert(caller);
                    request.extensions_mut().insert(Arc::clone(&served.broker));
                    let mut response = inner.call(request).await?;
                    // For the call's log line (the observing layer is outside this one).
                    response.extensions_mut().insert(name);
                    Ok(response)
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The caller [`RequireAuthentication`] attached to a request, and the broker of the
/// configuration it was authenticated under: shared, never copied per call.
pub fn called<P: Ports, T>(request: &Request<T>) -> Result<(Arc<Caller>, Arc<Broker<P>>), Status> {
    let caller = request
        .extensions()
        .get::<Arc<Caller>>()
        .cloned()
        .ok_or_else(|| unauthenticated("the call was not authenticated"))?;
    let broker = request
        .extensions()
        .get::<Arc<Broker<P>>>()
        .cloned()
        .ok_or_else(|| unauthenticated("the call was not authenticated"))?;
    Ok((caller, broker))
}
