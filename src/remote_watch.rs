//! `aa-policyd watch`: the watcher without the loader, for privilege
//! separation. It needs no BPF capability: it validates and lowers the
//! policy itself, asks the daemon what the kernel holds, and sends only the
//! delta. The daemon re-diffs against the kernel and guards it again.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::control::client::{Client, ClientError};
use crate::control::frame::MAX_FRAME;
use crate::control::wire::{DeltaSource, Outcome, ReloadRecord, Request, Response, delta_to_wire};
use crate::delta::diff;
use crate::lower::lower;
use crate::policy::Policy;
use crate::reconcile::Trigger;
use crate::ruleset::{Arch, RuleSet};

/// What one push did.
#[derive(Debug)]
pub enum PushOutcome {
    /// The policy file is invalid; nothing was sent.
    Invalid(String),
    /// Same rules as the kernel's; nothing was sent.
    Unchanged,
    /// The daemon's answer.
    Sent(ReloadRecord),
}

/// Reads the policy, diffs it against what the daemon reports as applied,
/// and sends the delta.
pub fn push(client: &mut Client, policy_path: &Path) -> Result<PushOutcome, ClientError> {
    let bytes = match crate::policy::read_policy_file(policy_path) {
        Ok(bytes) => bytes,
        Err(error) => return Ok(PushOutcome::Invalid(error.to_string())),
    };
    let policy = match Policy::parse_bytes(&bytes, policy_path) {
        Ok(policy) => policy,
        Err(error) => return Ok(PushOutcome::Invalid(error.to_string())),
    };
    let desired = lower(&policy, Arch::native()).rules;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let sha256: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // A delta computed against a generation that changed meanwhile (SIGHUP,
    // another watcher) is refused by the daemon: fetch and diff once more.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match push_once(client, policy_path, &desired, &text, &sha256) {
            Err(ClientError::Daemon(message))
                if message.starts_with("stale delta") && attempts < 3 =>
            {
                continue;
            }
            other => return other,
        }
    }
}

fn push_once(
    client: &mut Client,
    policy_path: &Path,
    desired: &RuleSet,
    text: &str,
    sha256: &str,
) -> Result<PushOutcome, ClientError> {
    let (base_generation, applied) = match client.request(&Request::Applied)? {
        Response::Applied { generation, rules } => (
            generation,
            RuleSet::try_from(&rules).map_err(ClientError::Protocol)?,
        ),
        other => return Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
    };
    let delta = diff(&applied, desired);
    if delta.is_empty() {
        return Ok(PushOutcome::Unchanged);
    }
    let mut request = Request::ApplyDelta {
        ops: delta_to_wire(&delta),
        source: DeltaSource {
            policy_path: policy_path.display().to_string(),
            sha256: sha256.to_owned(),
            text: text.to_owned(),
        },
        base_generation,
    };
    // The text only feeds the daemon's diff log; drop it rather than the
    // change when the frame would be too large.
    if serde_json::to_vec(&request).map_or(0, |b| b.len()) > MAX_FRAME
        && let Request::ApplyDelta { source, .. } = &mut request
    {
        source.text = String::from("(policy text too large to send with the delta)");
    }
    match client.request(&request)? {
        Response::Reload(record) => Ok(PushOutcome::Sent(record)),
        other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
    }
}

/// Watches `policy_path` and pushes every change to the daemon on `socket`
/// until the process is stopped.
pub fn run(policy_path: &Path, socket: &Path, periodic: Duration) -> Result<(), ClientError> {
    let (triggers, queue) = std::sync::mpsc::channel();
    let _watch = crate::watch::spawn(policy_path, periodic, move |trigger| {
        let _ = triggers.send(trigger);
    })
    .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let mut trigger = Trigger::Startup;
    loop {
        match Client::connect(socket).and_then(|mut client| push(&mut client, policy_path)) {
            Ok(PushOutcome::Invalid(error)) => {
                tracing::error!(
                    outcome = "invalid",
                    trigger = trigger.as_str(),
                    "policy invalid, nothing sent: {error}"
                )
            }
            Ok(PushOutcome::Unchanged) => tracing::debug!(outcome = "unchanged", "no rule changed"),
            Ok(PushOutcome::Sent(record)) => match record.outcome {
                Outcome::Applied | Outcome::Unchanged => tracing::info!(
                    outcome = record.outcome.as_str(),
                    generation = record.generation,
                    ops = record.ops,
                    "daemon {}: generation {}, {} ops",
                    record.outcome.as_str(),
                    record.generation,
                    record.ops
                ),
                _ => tracing::error!(
                    outcome = record.outcome.as_str(),
                    generation = record.generation,
                    "daemon {}: {}",
                    record.outcome.as_str(),
                    record.error.as_deref().unwrap_or("")
                ),
            },
            Err(error) => tracing::error!("cannot push the policy: {error}"),
        }
        match queue.recv() {
            Ok(next) => trigger = next,
            Err(_) => return Ok(()),
        }
    }
}
