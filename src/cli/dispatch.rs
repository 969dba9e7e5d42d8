//! The client commands: each one's request built from its arguments, sent, and its answer
//! rendered ([`super::client`]).

use super::{
    ClientError, CredentialFormat, Exit,
    args::{AuditCommand, Command, Connection, ExplainArgs, IssueArgs, ListArgs, RequestArgs},
    client,
};
use crate::grpc::proto;

pub(crate) async fn run_client(command: Command) -> Result<String, ClientError> {
    let connect = |connection: &Connection| {
        let address = connection.server.clone();
        // An empty token (`--token ''`, to drop an exported one beside a certificate) is none.
        let token = connection.token.clone().filter(|token| !token.is_empty());
        let tls = client::TlsFiles {
            ca: connection.ca.clone(),
            identity: connection.cert.clone().zip(connection.key.clone()),
        };
        let identity_token = connection.identity_token.clone().filter(|token| !token.is_empty());
        let identity_file = connection.identity_token_file.clone();
        async move {
            let identity = match (identity_token, identity_file) {
                (Some(token), _) => Some(token),
                (None, Some(path)) => Some(std::fs::read_to_string(&path).map_err(|error| {
                    ClientError::new(Exit::Usage, format!("cannot read {}: {error}", path.display()))
                })?),
                (None, None) => None,
            };
            if token.is_none() && tls.identity.is_none() && identity.is_none() {
                return Err(ClientError::new(
                    Exit::Usage,
                    "no credentials: pass --token (GRANT_BROKER_TOKEN), --cert and --key for mTLS, or an identity token (--identity-token, --identity-token-file)",
                ));
            }
            client::connect(&address, token.as_deref(), identity.as_deref(), &tls).await
        }
    };
    match command {
        Command::Targets { connection } => client::targets(&mut connect(&connection).await?, connection.json).await,
        Command::Get { connection, id } => client::get(&mut connect(&connection).await?, id, connection.json).await,
        Command::History { connection, id } => {
            client::history(&mut connect(&connection).await?, id, connection.json).await
        }
        Command::List(arguments) | Command::Audit(AuditCommand::List(arguments)) => {
            let ListArgs {
                connection,
                page_size,
                page_token,
                requester,
                grantee,
                caller,
                target,
                account,
                state,
                live,
                break_glass,
                since,
                until,
            } = *arguments;
            let message = proto::ListGrantsRequest {
                page_size,
                page_token,
                requester,
                grantee,
                caller,
                target,
                account_id: account,
                states: state.into_iter().map(i32::from).collect(),
                live,
                break_glass,
                create_time_from: since,
                create_time_to: until,
                ..proto::ListGrantsRequest::default()
            };
            client::list(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Queue {
            connection,
            approver,
            page_size,
            page_token,
        } => {
            let message = proto::ListGrantsRequest {
                page_size,
                page_token,
                waiting_for_approver: approver,
                ..proto::ListGrantsRequest::default()
            };
            client::list(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Issue(arguments) => {
            let IssueArgs {
                connection,
                id,
                mfa_serial,
                mfa_code,
                export,
                credential_process,
            } = *arguments;
            let format = CredentialFormat::chosen(connection.json, export, credential_process);
            let message = proto::IssueCredentialsRequest {
                id,
                mfa_serial,
                mfa_code,
            };
            client::issue(&mut connect(&connection).await?, message, format).await
        }
        Command::Approve {
            connection,
            id,
            approver,
            comment,
        } => {
            let message = proto::ApproveGrantRequest { id, approver, comment };
            client::approve(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Deny {
            connection,
            id,
            approver,
            reason,
        } => {
            let message = proto::DenyGrantRequest { id, approver, reason };
            client::deny(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Review {
            connection, id: None, ..
        } => {
            let message = proto::ListGrantsRequest {
                break_glass_unreviewed: true,
                ..proto::ListGrantsRequest::default()
            };
            client::list(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Review {
            connection,
            id: Some(id),
            reviewer,
            comment,
        } => {
            let reviewer = match (reviewer, &connection.identity_token, &connection.identity_token_file) {
                (Some(reviewer), _, _) => reviewer,
                // Their identity token names them.
                (None, Some(_), _) | (None, None, Some(_)) => String::new(),
                (None, None, None) => {
                    return Err(ClientError::new(
                        Exit::Usage,
                        "--reviewer (or GRANT_BROKER_APPROVER), or their identity token, is required",
                    ));
                }
            };
            let message = proto::ReviewGrantRequest { id, reviewer, comment };
            client::review(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Watch {
            connection,
            id,
            after,
            until_approved,
        } => {
            let message = proto::WatchGrantRequest { id, after_event: after };
            client::watch(
                &mut connect(&connection).await?,
                message,
                until_approved,
                connection.json,
            )
            .await
        }
        Command::Extend {
            connection,
            id,
            by,
            justification,
            request_id,
        } => {
            let message = proto::ExtendGrantRequest {
                id,
                additional_duration: Some(prost_types::Duration { seconds: by, nanos: 0 }),
                justification,
                request_id,
            };
            client::extend(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Revoke {
            connection,
            id,
            reason,
            revoker,
            wait,
        } => {
            let message = proto::RevokeGrantRequest { id, reason, revoker };
            let wait = wait.map(|seconds| std::time::Duration::from_secs(u64::try_from(seconds).unwrap_or(0)));
            client::revoke(&mut connect(&connection).await?, message, wait, connection.json).await
        }
        Command::RevokeGrantee {
            connection,
            grantee,
            reason,
            revoker,
        } => {
            let message = proto::RevokeGranteeRequest {
                grantee,
                reason,
                revoker,
            };
            client::revoke_grantee(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::RevokeTargetSessions {
            connection,
            target,
            reason,
            revoker,
        } => {
            let message = proto::RevokeTargetSessionsRequest {
                target,
                reason,
                revoker,
            };
            client::revoke_target_sessions(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Audit(AuditCommand::Events {
            connection,
            since,
            until,
            grant,
            actor,
            event,
            target,
            account,
            newest_first,
            page_size,
            page_token,
        }) => {
            let message = proto::ListAuditEventsRequest {
                from_time: since,
                to_time: until,
                grant_id: grant,
                actor,
                events: event,
                target,
                account_id: account,
                newest_first,
                page_size,
                page_token,
            };
            client::audit_events(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Audit(AuditCommand::Export {
            connection,
            since,
            output,
            cursor_file,
            follow,
        }) => {
            let export = client::Export {
                since,
                output,
                cursor_file,
                follow,
            };
            client::audit_export(&mut connect(&connection).await?, export).await
        }
        Command::Audit(AuditCommand::Tail { connection, after }) => {
            let message = proto::WatchAuditEventsRequest { after_cursor: after };
            client::audit_tail(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::FindKey {
            connection,
            access_key_id,
        } => {
            let message = proto::FindGrantByAccessKeyRequest { access_key_id };
            client::find_key(&mut connect(&connection).await?, message, connection.json).await
        }
        Command::Cancel { connection, id, reason } => {
            client::cancel(&mut connect(&connection).await?, id, reason, connection.json).await
        }
        Command::Request(arguments) => {
            let RequestArgs {
                connection,
                fields,
                export,
                credential_process,
            } = *arguments;
            let format = CredentialFormat::chosen(connection.json, export, credential_process);
            client::request(&mut connect(&connection).await?, fields.into_message(), format).await
        }
        Command::Explain(arguments) => {
            let ExplainArgs { connection, fields } = *arguments;
            client::explain(&mut connect(&connection).await?, fields.into_message(), connection.json).await
        }
        Command::Serve { .. } | Command::CheckConfig { .. } | Command::Audit(AuditCommand::Verify { .. }) => {
            Err(ClientError::new(Exit::Usage, "not a client command"))
        }
    }
}
