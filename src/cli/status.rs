//! `aa-policyd status`: what the daemon enforces and how its last reload went.

use std::path::Path;
use std::process::ExitCode;

use aa_policyd::control::client::Client;
use aa_policyd::control::wire::{Request, Response, StatusReport};
use anyhow::bail;

pub fn run(socket: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(socket)?;
    let Response::Status(status) = client.request(&Request::Status)? else {
        bail!("unexpected reply to status");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_human(&status);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_human(status: &StatusReport) {
    println!("policy:      {}", status.policy_path);
    println!(
        "sha256:      {}",
        status
            .policy_sha256
            .as_deref()
            .unwrap_or("(none applied by this daemon)")
    );
    println!("generation:  {}", status.generation);
    println!("mode:        {}", status.mode);
    let syscalls = status
        .counts
        .syscalls
        .map_or("unrestricted".to_owned(), |n| format!("{n} allowed"));
    println!("syscalls:    {syscalls}");
    let paths: Vec<String> = status
        .counts
        .path_rules
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    println!(
        "paths:       {}",
        if paths.is_empty() {
            "no rules".to_owned()
        } else {
            paths.join(", ")
        }
    );
    println!("egress:      {} kernel rules", status.counts.egress_rules);
    let confined: Vec<String> = status.confined.iter().map(u32::to_string).collect();
    println!(
        "confined:    {}{}",
        if confined.is_empty() {
            "none".to_owned()
        } else {
            confined.join(", ")
        },
        if status.hooks_attached {
            " (hooks attached)"
        } else {
            " (hooks detached)"
        }
    );
    match &status.last_reload {
        Some(reload) => {
            println!(
                "last reload: {} ({}) at unix ms {}, {} ops, {} map ops, {:.1} ms",
                reload.outcome.as_str(),
                reload.trigger,
                reload.at_unix_ms,
                reload.ops,
                reload.map_ops,
                reload.duration_ms
            );
            if let Some(error) = &reload.error {
                println!("  error:     {error}");
            }
        }
        None => println!("last reload: none"),
    }
    println!("map ops:     {} in total", status.total_map_ops);
    println!(
        "denials:     {} syscall, {} egress, {} file, {} dns (since the daemon started)",
        status.denials.syscall, status.denials.egress, status.denials.file, status.denials.dns
    );
    println!(
        "learned egress addresses: {} ({} DNS answers, {} map writes)",
        status.learned_addresses, status.dns_answers, status.dns_map_writes
    );
    println!("event drops: {}", status.event_drops);
    println!(
        "watching:    {}",
        if status.watching {
            "yes"
        } else {
            "no (driven by `aa-policyd watch`)"
        }
    );
}
