//! Where logs go: journald with structured fields under systemd, a plain
//! fmt layer elsewhere.
//!
//! Why this exists: under systemd, stderr is a journal stream that flattens
//! every record into a MESSAGE string; sending records to journald directly
//! keeps `GENERATION`, `POLICY_SHA256`, `OUTCOME`, `PID`, ... queryable
//! (`journalctl -o json`). systemd tells a service its stderr is such a
//! stream by setting `JOURNAL_STREAM=<dev>:<ino>` of that socket; comparing it
//! with stderr's own device and inode is the documented test, and avoids
//! sending to journald from a shell that merely inherited the variable.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing_subscriber::prelude::*;

/// Whether stderr is the journal stream systemd connected us to.
pub fn stderr_is_journal() -> bool {
    let Some(expected) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = expected.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let stderr = std::io::stderr();
    // SAFETY: fstat fills a zeroed stat for a valid, borrowed fd.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstat(std::os::fd::AsRawFd::as_raw_fd(&stderr.as_fd()), &mut stat) };
    rc == 0 && dev.parse() == Ok(stat.st_dev) && ino.parse() == Ok(stat.st_ino)
}

/// Which sink `init` chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    Journald,
    Stderr,
}

/// Installs the global subscriber: journald when stderr is the journal
/// stream and the journal socket answers, else fmt on stderr (colour only
/// on a terminal). Returns the sink chosen.
pub fn init() -> Sink {
    let filter = tracing_subscriber::filter::LevelFilter::INFO;
    if stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        let layer = journald
            .with_field_prefix(None)
            .with_syslog_identifier("aa-policyd".to_owned());
        tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .init();
        return Sink::Journald;
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .init();
    Sink::Stderr
}
