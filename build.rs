//! Compiles the gRPC protos with `protox` (pure Rust), so a build needs no system `protoc`.
//! The same descriptor set is written out for the reflection service.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/credbroker/v1/types.proto",
        "proto/credbroker/v1/broker.proto",
        "proto/credbroker/v1/admin.proto",
        "proto/credbroker/v1/calls.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("credbroker_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
