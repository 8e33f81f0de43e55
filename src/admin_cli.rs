//! Administration subcommands of the `skald` binary: streams, stream, delete,
//! meta, scavenge, verify, stats.

use std::time::Duration;

use anyhow::{bail, Context};
use skald_client::{ExpectedRevision, JobKind, JobReport, JobResult, StreamInfo, StreamMetadata};

use crate::cli::{client, parse_expected, Connection};

/// `skald meta`: limits to set; without any flag, prints the current metadata.
#[derive(Debug, Clone, clap::Args)]
pub struct MetaArgs {
    /// The stream.
    pub stream: String,
    /// Keep only the newest N events.
    #[arg(long)]
    pub max_count: Option<u64>,
    /// Keep only events younger than this (e.g. 30d, 12h, 90s).
    #[arg(long)]
    pub max_age: Option<String>,
    /// Hide revisions below N.
    #[arg(long)]
    pub truncate_before: Option<u64>,
    /// Custom metadata, a JSON object.
    #[arg(long)]
    pub custom: Option<String>,
    /// Change the metadata only while it is at this version (`any`,
    /// `no_stream`: never set, `stream_exists`: set before, or a number, as
    /// `version` shows it); otherwise nothing changes and the command fails.
    #[arg(long, value_name = "VERSION")]
    pub expected_version: Option<String>,
}

pub async fn streams(connection: Connection, prefix: Option<String>) -> anyhow::Result<()> {
    let client = client(&connection)?;
    let mut after: Option<String> = None;
    let mut header = !connection.json;
    loop {
        let page = client
            .list_streams(prefix.as_deref(), after.as_deref(), 500)
            .await?;
        for info in &page.streams {
            print_stream(info, connection.json, header);
            header = false;
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(()),
        }
    }
}

pub async fn stream(connection: Connection, name: String) -> anyhow::Result<()> {
    let info = client(&connection)?.stream_info(&name).await?;
    if connection.json {
        print_stream(&info, true, false);
    } else {
        println!("stream            {}", info.stream);
        println!("state             {}", state_word(&info));
        println!(
            "revisions         {} .. {}",
            opt(info.first_revision),
            opt(info.last_revision)
        );
        println!("events            {}", info.event_count);
        println!("bytes             {}", info.bytes);
        println!(
            "created at        {}",
            info.created_at.as_deref().unwrap_or("-")
        );
        println!(
            "last appended at  {}",
            info.last_appended_at.as_deref().unwrap_or("-")
        );
        println!("max count         {}", opt(info.metadata.max_count));
        println!("max age (s)       {}", opt(info.metadata.max_age_secs));
        println!("truncate before   {}", opt(info.metadata.truncate_before));
        println!(
            "custom            {}",
            info.metadata.custom.map_or("-".into(), |c| c.to_string())
        );
    }
    Ok(())
}

pub async fn delete(
    connection: Connection,
    stream: String,
    hard: bool,
    expected: String,
) -> anyhow::Result<()> {
    let expected: ExpectedRevision = parse_expected(&expected)?;
    client(&connection)?
        .delete_stream(&stream, expected, hard)
        .await?;
    if !connection.json {
        println!("{} {stream}", if hard { "tombstoned" } else { "deleted" });
    }
    Ok(())
}

pub async fn meta(connection: Connection, args: MetaArgs) -> anyhow::Result<()> {
    let client = client(&connection)?;
    let changing = args.max_count.is_some()
        || args.max_age.is_some()
        || args.truncate_before.is_some()
        || args.custom.is_some();
    let expected = match &args.expected_version {
        Some(_) if !changing => {
            anyhow::bail!("--expected-version needs a change (--max-count, --max-age, --truncate-before or --custom)")
        }
        Some(raw) => raw
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--expected-version: {e}"))?,
        None => skald_client::ExpectedRevision::Any,
    };
    let metadata = if changing {
        let max_age_secs = args
            .max_age
            .as_deref()
            .map(|text| {
                humantime::parse_duration(text).with_context(|| format!("--max-age {text:?}"))
            })
            .transpose()?
            .map(|d| d.as_secs());
        let custom = args
            .custom
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .context("--custom is not JSON")?;
        let wanted = StreamMetadata {
            max_count: args.max_count,
            max_age_secs,
            truncate_before: args.truncate_before,
            custom,
        };
        client
            .set_stream_metadata_expecting(&args.stream, &wanted, expected)
            .await?
    } else {
        client.stream_metadata_versioned(&args.stream).await?
    };
    println!("{}", serde_json::to_string(&metadata)?);
    Ok(())
}

pub async fn job(
    connection: Connection,
    kind: JobKind,
    dry_run: bool,
    wait: bool,
) -> anyhow::Result<()> {
    let client = client(&connection)?;
    let id = client.start_job(kind, dry_run).await?;
    if !wait {
        println!("{id}");
        return Ok(());
    }
    let bar = (!connection.json).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let report = loop {
        let report = client.job(kind, &id).await?;
        if let Some(bar) = &bar {
            bar.set_message(progress_line(kind, &report));
        }
        if !report.is_running() {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if connection.json {
        println!(
            "{}",
            serde_json::json!({"id": report.id, "result": report.result, "counters": report.counters, "problems": report.problems})
        );
    } else {
        println!("{} {}: {}", kind_word(kind), report.id, report.result);
        for (name, value) in &report.counters {
            println!("  {name:<24} {value}");
        }
        for problem in &report.problems {
            let at = problem
                .position
                .map(|p| format!(" at {p}"))
                .unwrap_or_default();
            println!("  problem{at}: {}", problem.message);
        }
    }
    match report.result {
        JobResult::Completed if report.counter("problems_found") > 0 => bail!(
            "verify found {} problem(s)",
            report.counter("problems_found")
        ),
        JobResult::Completed => Ok(()),
        other => bail!(
            "{} ended {other}{}",
            kind_word(kind),
            report.error.map(|e| format!(": {e}")).unwrap_or_default()
        ),
    }
}

pub async fn stats(connection: Connection) -> anyhow::Result<()> {
    let stats = client(&connection)?.stats().await?;
    if connection.json {
        println!("{}", serde_json::to_string(&stats)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    }
    Ok(())
}

fn progress_line(kind: JobKind, r: &JobReport) -> String {
    match kind {
        JobKind::Scavenge => format!(
            "scavenge {}: {} streams, {} events scanned, {} removed, {} bytes reclaimed",
            r.phase,
            r.counter("streams_scanned"),
            r.counter("events_scanned"),
            r.counter("events_removed"),
            r.counter("bytes_reclaimed")
        ),
        JobKind::Verify => format!(
            "verify {}: {} events, {} index entries checked, {} problems",
            r.phase,
            r.counter("events_checked"),
            r.counter("index_entries_checked"),
            r.counter("problems_found")
        ),
        JobKind::Backup => format!(
            "backup {}: head position {}, {} files, {} bytes",
            r.phase,
            r.counter("head_position"),
            r.counter("files"),
            r.counter("bytes")
        ),
    }
}

fn kind_word(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Scavenge => "scavenge",
        JobKind::Verify => "verify",
        JobKind::Backup => "backup",
    }
}

/// `skald restore`: turns a backup directory into a new data directory (the
/// server must not run on it).
pub fn restore(from: &std::path::Path, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let head = skald_server::storage::Store::restore(from, data_dir).with_context(|| {
        format!(
            "cannot restore {} into {}",
            from.display(),
            data_dir.display()
        )
    })?;
    match head {
        Some(head) => println!(
            "restored {} into {}: head position {head}",
            from.display(),
            data_dir.display()
        ),
        None => println!(
            "restored {} into {}: an empty store",
            from.display(),
            data_dir.display()
        ),
    }
    Ok(())
}

fn opt(value: Option<u64>) -> String {
    value.map_or("-".into(), |v| v.to_string())
}

fn state_word(info: &StreamInfo) -> &'static str {
    if info.tombstoned {
        "tombstoned"
    } else if info.deleted {
        "deleted"
    } else {
        "live"
    }
}

fn print_stream(info: &StreamInfo, json: bool, header: bool) {
    if json {
        let line = serde_json::json!({
            "stream": info.stream, "first_revision": info.first_revision, "last_revision": info.last_revision,
            "event_count": info.event_count, "bytes": info.bytes, "deleted": info.deleted, "tombstoned": info.tombstoned,
            "last_appended_at": info.last_appended_at, "metadata": info.metadata,
        });
        println!("{line}");
        return;
    }
    if header {
        println!(
            "{:<32} {:>10} {:>10} {:>10} {:>12}  {:<10} LAST_APPENDED_AT",
            "STREAM", "FIRST", "LAST", "EVENTS", "BYTES", "STATE"
        );
    }
    println!(
        "{:<32} {:>10} {:>10} {:>10} {:>12}  {:<10} {}",
        info.stream,
        opt(info.first_revision),
        opt(info.last_revision),
        info.event_count,
        info.bytes,
        state_word(info),
        info.last_appended_at.as_deref().unwrap_or("-")
    );
}
