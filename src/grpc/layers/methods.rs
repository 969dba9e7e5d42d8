//! The methods the API port serves, read from the descriptors it serves (GrantBroker, health,
//! reflection): which stream their responses, and the bounded set of names metrics may carry.

use std::{collections::HashMap, sync::Arc};

use prost_reflect::DescriptorPool;

use crate::grpc::proto;

/// What a layer needs to know of a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// `package.Service/Method`, as metrics and spans name it.
    pub name: &'static str,
    /// The method's own name (`RequestAccess`), as `server.call_timeouts` names it.
    pub short: &'static str,
    /// Its responses are a stream: the caller's deadline is the only bound.
    pub streams: bool,
}

/// Every method served, by path (`/package.Service/Method`).
#[derive(Debug, Clone, Default)]
pub struct Methods {
    by_path: Arc<HashMap<String, Method>>,
}

impl Methods {
    /// The methods of the services the API port serves (read once per process).
    pub fn served() -> Self {
        static SERVED: std::sync::OnceLock<Methods> = std::sync::OnceLock::new();
        SERVED.get_or_init(Self::read).clone()
    }

    fn read() -> Self {
        let sets = [
            proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut by_path = HashMap::new();
        for set in sets {
            // The embedded descriptors are the ones the code was generated from: one that does not
            // decode leaves its methods unnamed (counted as `_OTHER`), never the server down.
            let Ok(pool) = DescriptorPool::decode(set) else {
                tracing::error!("an embedded descriptor set does not decode; its methods are not named in metrics");
                continue;
            };
            for service in pool.services() {
                for method in service.methods() {
                    let name = format!("{}/{}", service.full_name(), method.name());
                    let path = format!("/{name}");
                    // Leaked once per method per process (`served` reads the descriptors once): a
                    // few dozen short strings, so that every call names its method without
                    // allocating.
                    let short: &'static str = method.name().to_owned().leak();
                    let name: &'static str = name.leak();
                    by_path.insert(
                        path,
                        Method {
                            name,
                            short,
                            streams: method.is_server_streaming(),
                        },
                    );
                }
            }
        }
        Self {
            by_path: Arc::new(by_path),
        }
    }

    /// The method at `path`, if it is one the port serves.
    pub fn get(&self, path: &str) -> Option<&Method> {
        self.by_path.get(path)
    }

    /// The own names (`RequestAccess`) of the methods that answer once, for checking
    /// `server.call_timeouts`.
    pub fn short_names_of_unary(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_path
            .values()
            .filter(|method| !method.streams)
            .map(|method| method.short)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_is_known_and_the_streams_are_the_streaming_ones() {
        let methods = Methods::served();
        let request = methods.get("/grantbroker.v1.GrantBroker/RequestAccess").unwrap();
        assert_eq!(request.name, "grantbroker.v1.GrantBroker/RequestAccess");
        assert_eq!(request.short, "RequestAccess");
        assert!(!request.streams);
        for stream in [
            "/grantbroker.v1.GrantBroker/WatchGrant",
            "/grantbroker.v1.GrantBroker/WatchAuditEvents",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(methods.get(stream).unwrap().streams, "{stream}");
        }
        assert!(!methods.get("/grpc.health.v1.Health/Check").unwrap().streams);
        assert_eq!(methods.get("/grantbroker.v1.GrantBroker/Nope"), None);
        // The 19 GrantBroker methods, Check and Watch, and one per reflection version.
        assert_eq!(methods.by_path.len(), 19 + 2 + 2);
    }
}
