//! Development-only CPU profile of the server (`--features profiling`).
//!
//! With `SKALD_PROFILE=FILE`, `skald serve` samples every thread's stack 499
//! times per CPU-second (pprof's `SIGPROF` timer, which works where `perf`
//! does not) and, on shutdown, writes one line per distinct stack to FILE in
//! the folded format flame-graph tools read: `thread;outer;...;inner count`.

use std::io::Write;

/// A running profile; `finish` writes it.
pub struct Profile {
    guard: pprof::ProfilerGuard<'static>,
    path: std::path::PathBuf,
}

/// Starts sampling when `SKALD_PROFILE` names a file.
pub fn start() -> Option<Profile> {
    let path = std::env::var_os("SKALD_PROFILE")?;
    match pprof::ProfilerGuardBuilder::default()
        .frequency(499)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
    {
        Ok(guard) => Some(Profile {
            guard,
            path: path.into(),
        }),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the CPU profiler");
            None
        }
    }
}

impl Profile {
    /// Writes the folded stacks.
    pub fn finish(self) {
        let result = self
            .guard
            .report()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|report| {
                let mut out = std::io::BufWriter::new(
                    std::fs::File::create(&self.path).map_err(|e| e.to_string())?,
                );
                for (frames, count) in &report.data {
                    let mut line = frames.thread_name.clone();
                    for frame in frames.frames.iter().rev() {
                        for symbol in frame.iter().rev() {
                            line.push(';');
                            line.push_str(&symbol.name().replace(';', ":"));
                        }
                    }
                    writeln!(out, "{line} {count}").map_err(|e| e.to_string())?;
                }
                out.flush().map_err(|e| e.to_string())
            });
        match result {
            Ok(()) => tracing::info!(path = %self.path.display(), "CPU profile written"),
            Err(e) => tracing::error!(error = %e, "cannot write the CPU profile"),
        }
    }
}
