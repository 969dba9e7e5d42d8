//! Caller authentication: a client certificate verified by the TLS handshake (mTLS), whose
//! identity (`server.tls.client_identity`) names a configured caller; else `authorization: Bearer
//! <token>` metadata, matched by the SHA-256 of the token against the configured callers (unless
//! `server.bearer_tokens` is off). Tokens themselves are never stored, logged or echoed.
//!
//! It runs as an interceptor, on the request's headers, before the message is decoded: an
//! unauthenticated peer cannot make the server decode (or allocate for) a body at all. The
//! authenticated [`Caller`] travels to the handlers in the request's extensions, as an `Arc` (shared, never copied per call).

use std::{collections::HashMap, sync::Arc};

use sha2::{Digest, Sha256};
use tonic::{Request, Status, metadata::MetadataMap};

use super::status::unauthenticated;
use crate::{config::CallerConfig, domain::Caller, tls::ClientCertificate};

/// Maps token digests and certificate identities to callers.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    by_digest: HashMap<[u8; 32], Arc<Caller>>,
    by_identity: HashMap<String, Arc<Caller>>,
    bearer_tokens: bool,
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
            bearer_tokens,
        }
    }

    /// The caller a request identifies: by the client certificate its connection presented
    /// (read once, at the handshake that verified it), else by its bearer token; or
    /// UNAUTHENTICATED saying what is wrong. A token beside a certificate must name the same
    /// caller.
    pub fn authenticate(
        &self,
        metadata: &MetadataMap,
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

    fn by_token(&self, metadata: &MetadataMap) -> Result<Arc<Caller>, Status> {
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

/// The interceptor: authenticates every call and attaches its [`Caller`].
#[derive(Debug, Clone)]
pub struct Authenticate(pub Arc<Authenticator>);

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self
            .0
            .authenticate(request.metadata(), request.extensions().get::<ClientCertificate>())?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller [`Authenticate`] attached to a request: shared, never copied per call.
pub fn caller_of<T>(request: &Request<T>) -> Result<Arc<Caller>, Status> {
    request
        .extensions()
        .get::<Arc<Caller>>()
        .cloned()
        .ok_or_else(|| unauthenticated("the call was not authenticated"))
}
