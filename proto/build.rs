//! Generates the gRPC code from `prism/**/*.proto` with a vendored `protoc`,
//! so a fresh machine builds with cargo alone.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "prism/config/v1/client_config.proto",
    "prism/config/v1/config_service.proto",
    "prism/session/v1/session.proto",
    "prism/keyvalue/v1/keyvalue.proto",
    "prism/queue/v1/queue.proto",
    "prism/pubsub/v1/pubsub.proto",
    "prism/reader/v1/reader.proto",
    "prism/transact/v1/transact.proto",
    "prism/cache/v1/cache.proto",
    "prism/admin/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the env here.
    unsafe { env::set_var("PROTOC", protoc) };
    let include = protoc_bin_vendored::include_path()?;
    let out = PathBuf::from(env::var("OUT_DIR")?);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("prism_descriptor.bin"))
        .compile_protos(
            &PROTOS.iter().map(PathBuf::from).collect::<Vec<_>>(),
            &[PathBuf::from("."), include],
        )?;

    println!("cargo:rerun-if-changed=prism");
    Ok(())
}
