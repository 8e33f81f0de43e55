//! Client subcommands of the `skald` binary: append, read, read-all, tail.
//! Human-readable tables by default, NDJSON with `--json`.

use std::io::Write;

use anyhow::{bail, Context};
use futures::StreamExt;
use skald_client::{
    Client, EventData, ExpectedRevision, ReadOptions, RecordedEvent, SubscribeOptions,
    SubscriptionMessage,
};

/// Where the server is and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The server's URL.
    #[arg(
        long,
        env = "SKALD_URL",
        default_value = "http://127.0.0.1:2114",
        global = true
    )]
    pub url: String,
    /// The API token, when the server has access control on.
    #[arg(long, env = "SKALD_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Trust only this CA certificate (PEM) for an https:// URL.
    #[arg(long, env = "SKALD_CA_FILE", global = true)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Print NDJSON (one JSON object per line) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `skald append`.
#[derive(Debug, Clone, clap::Args)]
pub struct AppendArgs {
    /// The stream to append to.
    pub stream: String,
    /// The event type.
    #[arg(long = "type")]
    pub event_type: String,
    /// The event data, as JSON.
    #[arg(long)]
    pub data: String,
    /// The event metadata, as a JSON object.
    #[arg(long)]
    pub metadata: Option<String>,
    /// Expected revision: any, no_stream, stream_exists or a number.
    #[arg(long, default_value = "any")]
    pub expected: String,
    /// The event id (a UUID); a new UUIDv7 when absent.
    #[arg(long)]
    pub id: Option<uuid::Uuid>,
}

/// Read options shared by `read` and `read-all`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReadArgs {
    /// First revision (stream) or position ($all) to read.
    #[arg(long)]
    pub from: Option<u64>,
    /// Newest first.
    #[arg(long)]
    pub backward: bool,
    /// Most events to print.
    #[arg(long, default_value_t = 100)]
    pub limit: u64,
}

/// Server-side filters of `$all`.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Only streams starting with this.
    #[arg(long)]
    pub stream_prefix: Option<String>,
    /// Only event types starting with this.
    #[arg(long)]
    pub type_prefix: Option<String>,
}

/// `skald tail`.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Follow one stream instead of $all.
    #[arg(long)]
    pub stream: Option<String>,
    /// Where to start: a position (revision for --stream), or `end` (default).
    #[arg(long, default_value = "end")]
    pub from: String,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// The client of `connection`'s server, with its token and CA.
pub fn client(connection: &Connection) -> anyhow::Result<Client> {
    let mut builder = Client::builder(&connection.url);
    if let Some(token) = &connection.token {
        builder = builder.auth_token(token.trim());
    }
    if let Some(path) = &connection.ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read the CA file {}", path.display()))?;
        builder = builder.ca_certificate_pem(pem);
    }
    Ok(builder.build()?)
}

pub fn parse_expected(raw: &str) -> anyhow::Result<ExpectedRevision> {
    raw.parse()
        .map_err(|e: String| anyhow::anyhow!("--expected: {e}"))
}

pub async fn append(connection: Connection, args: AppendArgs) -> anyhow::Result<()> {
    let data: serde_json::Value = serde_json::from_str(&args.data).context("--data is not JSON")?;
    let mut event = EventData::json(args.event_type, &data)?;
    if let Some(metadata) = &args.metadata {
        let metadata: serde_json::Value =
            serde_json::from_str(metadata).context("--metadata is not JSON")?;
        event = event.metadata(&metadata)?;
    }
    if let Some(id) = args.id {
        event = event.id(id);
    }
    let result = client(&connection)?
        .append(&args.stream, parse_expected(&args.expected)?, [event])
        .await?;
    if connection.json {
        let line = serde_json::json!({
            "stream": args.stream, "first_revision": result.first_revision, "last_revision": result.last_revision,
            "first_position": result.first_position, "last_position": result.last_position,
        });
        println!("{line}");
    } else {
        println!(
            "appended to {} at revision {}, position {}",
            args.stream, result.first_revision, result.first_position
        );
    }
    Ok(())
}

pub async fn read(connection: Connection, stream: String, args: ReadArgs) -> anyhow::Result<()> {
    let events = client(&connection)?.read_stream(&stream, read_options(&args));
    print_all(events, connection.json).await
}

pub async fn read_all(
    connection: Connection,
    args: ReadArgs,
    filter: FilterArgs,
) -> anyhow::Result<()> {
    let mut options = read_options(&args);
    if let Some(p) = filter.stream_prefix {
        options = options.stream_prefix(p);
    }
    if let Some(p) = filter.type_prefix {
        options = options.type_prefix(p);
    }
    print_all(client(&connection)?.read_all(options), connection.json).await
}

pub async fn tail(connection: Connection, args: TailArgs) -> anyhow::Result<()> {
    let mut options = match args.from.as_str() {
        "end" => SubscribeOptions::default().from_end(),
        n => SubscribeOptions::default().from(n.parse().context("--from must be a number or end")?),
    };
    if let Some(p) = args.filter.stream_prefix {
        options = options.stream_prefix(p);
    }
    if let Some(p) = args.filter.type_prefix {
        options = options.type_prefix(p);
    }
    let client = client(&connection)?;
    let mut messages = match &args.stream {
        Some(stream) => client.subscribe_stream(stream, options),
        None => client.subscribe_all(options),
    };
    let mut table = Table::new(connection.json);
    while let Some(message) = messages.next().await {
        match message? {
            SubscriptionMessage::Event(event) => table.row(&event)?,
            SubscriptionMessage::CaughtUp { .. } if !connection.json => eprintln!("-- live --"),
            _ => {}
        }
    }
    Ok(())
}

fn read_options(args: &ReadArgs) -> ReadOptions {
    let mut options = ReadOptions::default().max_count(args.limit);
    if let Some(from) = args.from {
        options = options.from(from);
    }
    if args.backward {
        options = options.backward();
    }
    options
}

async fn print_all(
    mut events: futures::stream::BoxStream<'static, Result<RecordedEvent, skald_client::Error>>,
    json: bool,
) -> anyhow::Result<()> {
    let mut table = Table::new(json);
    let mut count = 0;
    while let Some(event) = events.next().await {
        table.row(&event?)?;
        count += 1;
    }
    if !json && count == 0 {
        eprintln!("(no events)");
    }
    Ok(())
}

/// Prints events as a table (header first) or as NDJSON.
struct Table {
    json: bool,
    header_printed: bool,
}

impl Table {
    fn new(json: bool) -> Self {
        Self {
            json,
            header_printed: false,
        }
    }

    fn row(&mut self, e: &RecordedEvent) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.json {
            let line = serde_json::json!({
                "stream": e.stream, "revision": e.revision, "position": e.position, "id": e.id,
                "type": e.event_type, "data": e.data, "metadata": e.metadata, "recorded_at": e.recorded_at,
            });
            writeln!(out, "{line}")?;
        } else {
            if !self.header_printed {
                writeln!(
                    out,
                    "{:>10}  {:<24} {:>8}  {:<20} {:<27} DATA",
                    "POSITION", "STREAM", "REVISION", "TYPE", "RECORDED_AT"
                )?;
                self.header_printed = true;
            }
            let mut data = e.data.to_string();
            if data.chars().count() > 60 {
                data = data.chars().take(57).collect::<String>() + "...";
            }
            writeln!(
                out,
                "{:>10}  {:<24} {:>8}  {:<20} {:<27} {}",
                e.position, e.stream, e.revision, e.event_type, e.recorded_at, data
            )?;
        }
        if out.flush().is_err() {
            bail!("stdout closed");
        }
        Ok(())
    }
}
