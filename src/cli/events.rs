//! `aa-policyd events`: follow the daemon's probe events (denied syscalls and
//! connections, execs, exits) as they happen.

use std::path::Path;
use std::process::ExitCode;

use aa_policyd::control::client::Client;
use aa_policyd::control::wire::{Request, Response};
use anyhow::bail;

pub fn run(socket: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(socket)?;
    if !matches!(client.request(&Request::Subscribe)?, Response::Done) {
        bail!("the daemon did not accept the subscription");
    }
    client.wait_forever()?;
    loop {
        match client.next_response()? {
            Response::Event(event) if json => println!("{}", serde_json::to_string(&event)?),
            Response::Event(event) => println!("{}", event.message),
            other => bail!("unexpected message from the daemon: {other:?}"),
        }
    }
}
