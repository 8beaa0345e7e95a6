//! `aa-policyd confine PID` and `release PID`, through the daemon.

use std::path::Path;
use std::process::ExitCode;

use aa_policyd::control::client::Client;
use aa_policyd::control::wire::Request;

pub fn confine(socket: &Path, pid: u32) -> anyhow::Result<ExitCode> {
    Client::connect(socket)?.request(&Request::Confine { pid })?;
    println!("confined pid {pid}");
    Ok(ExitCode::SUCCESS)
}

pub fn release(socket: &Path, pid: u32) -> anyhow::Result<ExitCode> {
    Client::connect(socket)?.request(&Request::Release { pid })?;
    println!("released pid {pid}");
    Ok(ExitCode::SUCCESS)
}
