//! `--json`: every message the command prints, written by the proto3 JSON mapping from the
//! descriptors compiled into the binary (the ones server reflection serves), so the output says
//! exactly what the proto says and cannot drift from it. Field names as the proto spells them
//! (snake_case), enums by name (`GRANT_STATE_APPROVED`), timestamps in RFC 3339, durations as
//! `"3600s"`, every field present (zeros and empty lists too, so a script need not know that
//! proto3 leaves them out), 64-bit integers as numbers.

use std::sync::LazyLock;

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

use super::{ClientError, Exit};
use crate::grpc::proto;

/// A message the command line prints, by its full proto name.
pub(super) trait Printed: prost::Message + Sized {
    const FULL_NAME: &'static str;
}

macro_rules! printed {
    ($($message:ident),* $(,)?) => {
        $(impl Printed for proto::$message {
            const FULL_NAME: &'static str = concat!("grantbroker.v1.", stringify!($message));
        })*
        /// Every printed message's name, for the test that each is in the descriptors.
        #[cfg(test)]
        const PRINTED: &[&str] = &[$(<proto::$message as Printed>::FULL_NAME),*];
    };
}

printed!(
    AuditEvent,
    Credentials,
    ExplainResponse,
    FindGrantByAccessKeyResponse,
    GetGrantHistoryResponse,
    Grant,
    GrantChange,
    IssueCredentialsResponse,
    ListGrantsResponse,
    ListTargetsResponse,
    RequestAccessResponse,
    RevokeGranteeResponse,
    RevokeTargetSessionsResponse,
);

/// The API's descriptors, with the error details an embedded `google.rpc.Status` carries
/// (`ErrorInfo`, `BadRequest`, ...), which tonic-types describes.
static POOL: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(|| {
    let mut pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).map_err(|error| error.to_string())?;
    let details = prost_types::FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .map_err(|error| error.to_string())?;
    for file in details.file {
        // google.rpc.Status is in both (tonic-types' status.proto, the API's
        // google/rpc/status.proto): the same message, described once.
        let defined = file.message_type.iter().any(|message| {
            pool.get_message_by_name(&format!("{}.{}", file.package(), message.name()))
                .is_some()
        });
        if !defined {
            pool.add_file_descriptor_proto(file)
                .map_err(|error| error.to_string())?;
        }
    }
    Ok(pool)
});

const OPTIONS: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .skip_default_fields(false)
    .stringify_64_bit_integers(false);

/// The message as JSON.
pub(super) fn json<M: Printed>(message: &M) -> Result<Value, ClientError> {
    let broken =
        |what: String| ClientError::new(Exit::Refused, format!("cannot print {} as JSON: {what}", M::FULL_NAME));
    let pool = POOL.as_ref().map_err(|error| broken(error.clone()))?;
    let descriptor = pool
        .get_message_by_name(M::FULL_NAME)
        .ok_or_else(|| broken("not in the descriptors".to_owned()))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|error| broken(error.to_string()))?;
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &OPTIONS)
        .map_err(|error| broken(error.to_string()))
}

/// The message as one line of JSON.
pub(super) fn json_line<M: Printed>(message: &M) -> Result<String, ClientError> {
    json(message).map(|value| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_printed_message_is_in_the_descriptors() {
        let pool = POOL.as_ref().unwrap();
        for name in PRINTED {
            assert!(pool.get_message_by_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn a_grant_prints_as_the_proto3_json_mapping_with_every_field() {
        let grant = proto::Grant {
            id: "01a22180-6fe5-70f8-b92d-ba90419e8bc4".into(),
            state: i32::from(proto::GrantState::Approved),
            end_time: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
            issuance_count: 3,
            ..proto::Grant::default()
        };
        let printed = json(&grant).unwrap();
        assert_eq!(printed["id"], "01a22180-6fe5-70f8-b92d-ba90419e8bc4");
        assert_eq!(printed["state"], "GRANT_STATE_APPROVED");
        assert_eq!(printed["end_time"], "2027-01-15T08:00:00Z");
        assert_eq!(printed["issuance_count"], 3);
        // Defaults are there, by the proto's own names.
        assert_eq!(printed["break_glass"], false);
        assert_eq!(printed["scopes"], Value::Array(Vec::new()));
        assert_eq!(printed["ticket"], "");
    }

    #[test]
    fn an_error_inside_a_message_prints_with_its_details() {
        let status = crate::grpc::status::rich_status(tonic::Status::from(crate::broker::BrokerError::GrantNotFound(
            crate::domain::GrantId::from_uuid(uuid::Uuid::nil()),
        )));
        let response = proto::RevokeGranteeResponse {
            outcomes: vec![proto::GranteeRevocationOutcome {
                grant_id: "g".into(),
                grant: None,
                error: Some(status),
            }],
            ..proto::RevokeGranteeResponse::default()
        };
        let printed = json(&response).unwrap();
        let error = &printed["outcomes"][0]["error"];
        assert_eq!(error["code"], 5, "{printed}");
        assert_eq!(
            error["details"][0]["@type"], "type.googleapis.com/google.rpc.ErrorInfo",
            "{printed}"
        );
        assert_eq!(error["details"][0]["reason"], "GRANT_NOT_FOUND", "{printed}");
    }
}
