//! Caller authentication: `authorization: Bearer <token>` metadata, matched by the SHA-256 of the
//! token against the configured callers. Tokens themselves are never stored, logged or echoed.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use tonic::{Status, metadata::MetadataMap};

use super::status::unauthenticated;
use crate::{config::CallerConfig, domain::Caller};

/// Maps token digests to callers.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    by_digest: HashMap<[u8; 32], Caller>,
}

impl Authenticator {
    pub fn new(callers: &[CallerConfig]) -> Self {
        let by_digest = callers
            .iter()
            .map(|caller| {
                (
                    caller.token_sha256,
                    Caller {
                        id: caller.id.clone(),
                        targets: caller.targets.clone(),
                    },
                )
            })
            .collect();
        Self { by_digest }
    }

    /// The caller a request's metadata identifies, or UNAUTHENTICATED saying what is missing.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
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
