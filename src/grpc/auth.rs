//! Caller authentication: `authorization: Bearer <token>` metadata, matched by the SHA-256 of the
//! token against the configured callers. Tokens themselves are never stored, logged or echoed.
//!
//! It runs as an interceptor, on the request's headers, before the message is decoded: an
//! unauthenticated peer cannot make the server decode (or allocate for) a body at all. The
//! authenticated [`Caller`] travels to the handlers in the request's extensions, as an `Arc` (shared, never copied per call).

use std::{collections::HashMap, sync::Arc};

use sha2::{Digest, Sha256};
use tonic::{Request, Status, metadata::MetadataMap};

use super::status::unauthenticated;
use crate::{config::CallerConfig, domain::Caller};

/// Maps token digests to callers.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    by_digest: HashMap<[u8; 32], Arc<Caller>>,
}

impl Authenticator {
    pub fn new(callers: &[CallerConfig]) -> Self {
        let by_digest = callers
            .iter()
            .map(|caller| (caller.token_sha256, Arc::new(caller.caller())))
            .collect();
        Self { by_digest }
    }

    /// The caller a request's metadata identifies, or UNAUTHENTICATED saying what is missing.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Arc<Caller>, Status> {
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
        let caller = self.0.authenticate(request.metadata())?;
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
