//! aa-policyd: confines AI agents on Linux with eBPF and lets operators change
//! the rules live.
//!
//! The data flow, one module per arrow (see `ARCHITECTURE.md`):
//! policy YAML → [`policy`] → [`lower`] → [`ruleset::RuleSet`] → [`delta::diff`]
//! against the rules in force → [`guard`] → the loader applies the ops.
//! Everything in this crate up to the loader is pure: values in, values out.

pub mod control;
pub mod daemon;
pub mod delta;
pub mod dns;
pub mod events;
pub mod fault;
pub mod guard;
pub mod lifecycle;
pub mod loader;
pub mod logging;
pub mod lower;
pub mod pin_watch;
pub mod policy;
pub mod reconcile;
pub mod remote_watch;
pub mod report;
pub mod ruleset;
pub mod watch;
