//! Compiles `proto/` with protox (no system `protoc`): the public API (and the encoded
//! descriptor set the reflection service serves), and the storage record's messages.

use std::{env, fs, io, path::PathBuf};

use prost::Message as _;

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["grantbroker/v1/grant_broker.proto"], ["proto"])
        .map_err(|error| io::Error::other(error.to_string()))?;

    // `compile_fds` ignores `file_descriptor_set_path`, so the bytes for reflection are written here.
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| io::Error::other("OUT_DIR unset"))?);
    fs::write(out_dir.join("grantbroker_descriptor.bin"), descriptors.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // google.rpc.Status as tonic-types defines it, so statuses convert without copying.
        .extern_path(".google.rpc.Status", "::tonic_types::Status")
        // Credentials and requests (the MFA code) get a hand-written Debug that redacts secrets.
        .skip_debug([
            "grantbroker.v1.Credentials",
            "grantbroker.v1.RequestAccessRequest",
            "grantbroker.v1.IssueCredentialsRequest",
        ])
        .compile_fds(descriptors)?;

    // What Redis holds: messages only, never served by reflection.
    let storage = protox::compile(
        [
            "grantbroker/storage/v1/record.proto",
            "grantbroker/storage/v1/service_event.proto",
        ],
        ["proto"],
    )
    .map_err(|error| io::Error::other(error.to_string()))?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(storage)
}
