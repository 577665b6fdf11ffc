//! Generates the workload API's client side from the repository's `proto/` with `protox` (pure
//! Rust, no system `protoc`), the same generator the daemon uses.
//!
//! The messages that carry a token or a secret get no derived `Debug`: `src/proto.rs` writes one
//! that redacts them, so no `{:?}` anywhere prints a credential.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let protos = [
        root.join("credbroker/v1/types.proto"),
        root.join("credbroker/v1/broker.proto"),
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let fds = protox::compile(&protos, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .skip_debug([
            ".credbroker.v1.Credential",
            ".credbroker.v1.BeginTaskRequest",
            ".credbroker.v1.RenewTaskRequest",
        ])
        .compile_fds(fds)?;
    Ok(())
}
