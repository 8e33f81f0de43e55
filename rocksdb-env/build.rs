//! Compiles `src/wal_env.cc` and `src/insert_hints.cc` against the headers of the RocksDB sources that
//! librocksdb-sys builds (the version the workspace's `Cargo.lock` names).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sources = ["src/wal_env.cc", "src/insert_hints.cc"];
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        .include(rocksdb_include()?)
        // As librocksdb-sys compiles RocksDB on Linux.
        .define("NDEBUG", "1")
        .define("ROCKSDB_PLATFORM_POSIX", None)
        .define("ROCKSDB_LIB_IO_POSIX", None)
        .define("OS_LINUX", None)
        .files(sources)
        .compile("skald_rocksdb_env");
    for source in sources {
        println!("cargo:rerun-if-changed={source}");
    }
    Ok(())
}

/// The `include` directory of the RocksDB sources librocksdb-sys compiles:
/// `SKALD_ROCKSDB_INCLUDE` if set, else the unpacked crate of the version
/// the workspace's `Cargo.lock` names, in Cargo's registry.
fn rocksdb_include() -> Result<PathBuf, Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=SKALD_ROCKSDB_INCLUDE");
    if let Some(dir) = std::env::var_os("SKALD_ROCKSDB_INCLUDE") {
        return Ok(dir.into());
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let lock = manifest
        .ancestors()
        .map(|dir| dir.join("Cargo.lock"))
        .find(|lock| lock.is_file())
        .ok_or("no Cargo.lock above the skald-rocksdb-env crate")?;
    println!("cargo:rerun-if-changed={}", lock.display());
    let version = librocksdb_sys_version(&std::fs::read_to_string(&lock)?)
        .ok_or_else(|| format!("{} names no librocksdb-sys", lock.display()))?;
    let cargo_home = match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => PathBuf::from(std::env::var_os("HOME").ok_or("neither CARGO_HOME nor HOME")?)
            .join(".cargo"),
    };
    let registries = cargo_home.join("registry").join("src");
    for registry in std::fs::read_dir(&registries)? {
        let include = registry?
            .path()
            .join(format!("librocksdb-sys-{version}"))
            .join("rocksdb")
            .join("include");
        if include.join("rocksdb").join("version.h").is_file() {
            return Ok(include);
        }
    }
    Err(format!(
        "librocksdb-sys {version} is not unpacked under {}; set SKALD_ROCKSDB_INCLUDE \
         to the include directory of its RocksDB sources",
        registries.display()
    )
    .into())
}

/// The librocksdb-sys version in a `Cargo.lock`.
fn librocksdb_sys_version(lock: &str) -> Option<String> {
    let mut lines = lock.lines();
    lines.find(|line| *line == "name = \"librocksdb-sys\"")?;
    let version = lines.next()?.strip_prefix("version = \"")?;
    Some(version.strip_suffix('"')?.to_owned())
}
