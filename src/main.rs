//! The `skald` binary: `skald serve` runs the server; the other subcommands are
//! a command-line client of a running server.

mod admin_cli;
mod cli;
#[cfg(feature = "profiling")]
mod profiling;

/// mimalloc instead of glibc's malloc: the server allocates on tokio's
/// threads and frees on the writer's (and back), which glibc serves with
/// arena locks and consolidation (measured: docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "skald",
    version,
    about = "Skald: an event-store database server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<skald_server::ServeArgs>),
    /// Append one event to a stream.
    Append {
        #[command(flatten)]
        connection: cli::Connection,
        #[command(flatten)]
        args: cli::AppendArgs,
    },
    /// Read a stream.
    Read {
        #[command(flatten)]
        connection: cli::Connection,
        /// The stream to read.
        stream: String,
        #[command(flatten)]
        args: cli::ReadArgs,
    },
    /// Read the global log ($all).
    ReadAll {
        #[command(flatten)]
        connection: cli::Connection,
        #[command(flatten)]
        args: cli::ReadArgs,
        #[command(flatten)]
        filter: cli::FilterArgs,
    },
    /// Follow new events live ($all or one stream).
    Tail {
        #[command(flatten)]
        connection: cli::Connection,
        #[command(flatten)]
        args: cli::TailArgs,
    },
    /// List streams (the catalog), in name order.
    Streams {
        #[command(flatten)]
        connection: cli::Connection,
        /// Only streams starting with this.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Show one stream: revisions, size, times, state, metadata.
    Stream {
        #[command(flatten)]
        connection: cli::Connection,
        /// The stream.
        name: String,
    },
    /// Delete a stream (soft; --hard tombstones it for good).
    Delete {
        #[command(flatten)]
        connection: cli::Connection,
        /// The stream.
        stream: String,
        /// Tombstone: the name can never be used again.
        #[arg(long)]
        hard: bool,
        /// Expected revision: any, stream_exists or a number.
        #[arg(long, default_value = "any")]
        expected: String,
    },
    /// Show or set a stream's limits and custom metadata.
    Meta {
        #[command(flatten)]
        connection: cli::Connection,
        #[command(flatten)]
        args: admin_cli::MetaArgs,
    },
    /// Start a scavenge (reclaims the space of deleted and expired events).
    Scavenge {
        #[command(flatten)]
        connection: cli::Connection,
        /// Only estimate; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Wait for the end, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Start a verify (checks every record's CRC and the indexes).
    Verify {
        #[command(flatten)]
        connection: cli::Connection,
        /// Wait for the end, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Take a consistent backup while the server runs, into a new directory
    /// under its `--backup-dir` (named by the job id).
    Backup {
        #[command(flatten)]
        connection: cli::Connection,
        /// Wait for the end, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Restore a backup into a new data directory (offline: no server may run
    /// on it); then `skald serve --data-dir` it.
    Restore {
        /// The backup directory (`--backup-dir/<id>`).
        #[arg(long)]
        from: std::path::PathBuf,
        /// The new data directory (must not exist, or be empty).
        #[arg(long)]
        data_dir: std::path::PathBuf,
    },
    /// API tokens for the server's --auth-file.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Server statistics.
    Stats {
        #[command(flatten)]
        connection: cli::Connection,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a fresh random token: prints the token (for the client, shown
    /// only now) and the auth-file entry holding its hash.
    New {
        /// The token's name, as logs and 403 answers show it.
        #[arg(long)]
        name: String,
        /// reader, writer or admin.
        #[arg(long, value_parser = parse_role)]
        role: skald_server::auth::Role,
        /// Limit the token to streams starting with this (repeatable).
        #[arg(long = "stream-prefix")]
        stream_prefixes: Vec<String>,
    },
}

fn parse_role(text: &str) -> Result<skald_server::auth::Role, String> {
    use skald_server::auth::Role;
    match text {
        "reader" => Ok(Role::Reader),
        "writer" => Ok(Role::Writer),
        "admin" => Ok(Role::Admin),
        other => Err(format!("'{other}' is not a role: reader, writer or admin")),
    }
}

/// `skald token new`: the token on stdout's first line, then the entry.
fn new_token(
    name: &str,
    role: skald_server::auth::Role,
    prefixes: &[String],
) -> anyhow::Result<()> {
    use skald_server::auth;
    if prefixes.iter().any(String::is_empty) {
        anyhow::bail!("--stream-prefix must not be empty");
    }
    let token = auth::new_token().context("cannot read the system's random source")?;
    let entry = auth::file_entry(name, role, prefixes, &token);
    // Check the entry as the server will read it.
    auth::TokenTable::parse(&entry).context("the entry would not be accepted")?;
    eprintln!("The token (give it to the client; only its hash is stored):");
    println!("{token}");
    eprintln!("\nAdd this to the auth file, then send the server SIGHUP:");
    println!("\n{entry}");
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One readable line (with causes), not a backtrace.
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Command::Serve(args) = &cli.command {
        runtime.worker_threads(args.worker_threads());
    }
    let runtime = runtime.build().context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Append { connection, args } => cli::append(connection, args).await,
            Command::Read {
                connection,
                stream,
                args,
            } => cli::read(connection, stream, args).await,
            Command::ReadAll {
                connection,
                args,
                filter,
            } => cli::read_all(connection, args, filter).await,
            Command::Tail { connection, args } => cli::tail(connection, args).await,
            Command::Streams { connection, prefix } => admin_cli::streams(connection, prefix).await,
            Command::Stream { connection, name } => admin_cli::stream(connection, name).await,
            Command::Delete {
                connection,
                stream,
                hard,
                expected,
            } => admin_cli::delete(connection, stream, hard, expected).await,
            Command::Meta { connection, args } => admin_cli::meta(connection, args).await,
            Command::Scavenge {
                connection,
                dry_run,
                wait,
            } => admin_cli::job(connection, skald_client::JobKind::Scavenge, dry_run, wait).await,
            Command::Verify { connection, wait } => {
                admin_cli::job(connection, skald_client::JobKind::Verify, false, wait).await
            }
            Command::Backup { connection, wait } => {
                admin_cli::job(connection, skald_client::JobKind::Backup, false, wait).await
            }
            Command::Restore { from, data_dir } => admin_cli::restore(&from, &data_dir),
            Command::Stats { connection } => admin_cli::stats(connection).await,
            Command::Token(TokenCommand::New {
                name,
                role,
                stream_prefixes,
            }) => new_token(&name, role, &stream_prefixes),
        }
    });
    // The server has already waited for its tasks and flushed; a blocking call
    // still running (a compaction range of a cancelled scavenge) need not hold
    // the exit: whatever RocksDB was doing is crash-safe.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn serve(args: skald_server::ServeArgs) -> anyhow::Result<()> {
    let config = args.validate()?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let server = skald_server::Server::bind(config).await?;
    let addr = server.local_addr()?;
    let worker_threads = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(%addr, scheme, worker_threads, "listening");
    // The one line on stdout: scripts and tests read the address from it.
    println!("skald listening on {scheme}://{addr}");
    if let Some(grpc) = server.grpc_local_addr() {
        let grpc = grpc?;
        tracing::info!(%grpc, "KurrentDB-compatible gRPC listening");
        // The second line, only with --grpc-listen.
        println!("skald grpc listening on {grpc}");
    }
    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signal(stop.clone()));
    #[cfg(feature = "profiling")]
    let profile = profiling::start();
    server.serve(stop).await?;
    #[cfg(feature = "profiling")]
    if let Some(profile) = profile {
        profile.finish();
    }
    Ok(())
}

async fn stop_on_signal(stop: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    stop.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("signal received");
    stop.cancel();
}
