//! Generates the KurrentDB v1 client protocol's messages and services from
//! the vendored `.proto` files (`proto/kurrentdb`), with protox (pure Rust,
//! so building Skald needs no `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "proto/kurrentdb";
    let files = [
        "shared.proto",
        "streams.proto",
        "gossip.proto",
        "serverfeatures.proto",
        "persistent_list.proto",
        "status.proto",
        "code.proto",
    ];
    let descriptors = protox::compile(files, [dir])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed={dir}");
    Ok(())
}
