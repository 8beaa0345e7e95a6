//! The `aa-policyd` command line: argument parsing and exit codes only.
//!
//! Why this exists apart from the library: the daemon core and the engine
//! never parse arguments or pick exit codes; each subcommand in `cli/` is a
//! thin adapter that calls the library and maps its outcome to a status.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if args.quiet_on_closed_stdout() {
        // SAFETY: restoring the default disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    aa_policyd::logging::init();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("aa-policyd: {error:#}");
            ExitCode::from(cli::EXIT_INVALID)
        }
    }
}
