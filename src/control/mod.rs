//! The control socket: how `status`, `confine`, `release`, `exec` and the
//! remote watcher talk to the daemon.
//!
//! One concept per file: `wire` (messages), `frame` (length-prefixed
//! framing), `peer` (who may talk to us), `server` (the daemon side) and
//! `client` (the CLI side).

pub mod client;
pub mod frame;
pub mod peer;
pub mod server;
pub mod wire;

/// The socket the daemon listens on unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/agent-assembly/policyd.sock";

/// The group whose members may use the socket besides root.
pub const CONTROL_GROUP: &str = "aa-policy";
