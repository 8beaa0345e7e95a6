//! DNS-aware egress: host names in `network.allowlist`, enforced by the
//! kernel.
//!
//! Why this exists: the connect hooks see addresses, policies name hosts.
//! The probes send a confined process's DNS to the resolver here
//! (`resolver`), which answers only names the policy allows and, before it
//! replies, writes every address of the answer into the kernel's learned
//! maps with the record's TTL. `DnsEgress` is the state both the resolver
//! and the reconcile loop change: the host rules in force, the learned
//! addresses and who justifies them (`table`), and the maps. One mutex
//! orders them, so an address is only ever learned for a rule in force,
//! and a reload that drops a rule removes its addresses before it reports.

pub mod message;
pub mod resolver;
pub mod table;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::events::FloodWindow;
use crate::loader::LoaderError;
use crate::loader::learned::{LearnedDest, LearnedMaps, boot_time_ns};
use crate::ruleset::{HostRule, Mode};
use table::{Change, LearnedTable};

/// The longest an answered address stays allowed without a new answer.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// The default shortest: clients and runtimes that cache answers (the JVM
/// keeps them 30 s by default) connect again after a short TTL ran out.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(30);
/// Denied queries (and full maps) logged per second; the rest are counted.
const REPORTS_PER_SECOND: u32 = 50;
/// Addresses taken from one answer (real ones carry a handful; the rest of
/// a larger one is not allowed).
pub const MAX_ADDRESSES_PER_ANSWER: usize = 64;
/// Destinations one host rule may keep allowed at once: a rule whose zone
/// an agent controls (`*.example.io`) can fill only its share of the maps.
pub const MAX_LEARNED_PER_RULE: usize = 8192;
/// Entries of LEARNED4 and of LEARNED6 (`max_entries` in the probes).
const LEARNED_CAPACITY: usize = 65536;

/// Why an answer's addresses could not be allowed (it is not passed on).
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error(transparent)]
    Kernel(#[from] LoaderError),
    #[error("host rule {rule} already allows {limit} addresses (the most one rule may)")]
    RuleFull { rule: HostRule, limit: usize },
    #[error("the learned-address map for IPv{family} is full ({LEARNED_CAPACITY} entries)")]
    MapFull { family: u8 },
}

/// How the resolver forwards and how long answers count.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// Asked in order; empty: the nameservers of `/etc/resolv.conf`.
    pub upstreams: Vec<SocketAddr>,
    /// Addresses stay allowed at least this long after an answer.
    pub min_ttl: Duration,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            upstreams: Vec::new(),
            min_ttl: DEFAULT_MIN_TTL,
        }
    }
}

/// `IP`, `IP:PORT`, `[IPv6]:PORT` (port 53 when absent).
pub fn parse_upstream(raw: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Ok(addr);
    }
    raw.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("`{raw}` is not IP, IP:PORT or [IPv6]:PORT"))
}

/// The nameservers of a resolv.conf text (port 53); none listed means
/// 127.0.0.1, as glibc reads it.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    let listed: Vec<SocketAddr> = resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        // A scoped link-local server (`fe80::1%eth0`) names its interface.
        .filter_map(|addr| addr.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if listed.is_empty() {
        vec![SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 53))]
    } else {
        listed
    }
}

/// The nameservers of `/etc/resolv.conf`, read again only when the file
/// changes (one stat per query, as glibc does): the daemon's own file may
/// be rewritten by DHCP or a network manager while it runs.
#[derive(Default)]
struct ResolvConf {
    cached: Mutex<Option<(FileVersion, Vec<SocketAddr>)>>,
}

/// A file's inode and modification time: which content was read.
type FileVersion = (u64, std::time::SystemTime);

impl ResolvConf {
    const PATH: &'static str = "/etc/resolv.conf";

    fn nameservers(&self) -> Vec<SocketAddr> {
        use std::os::unix::fs::MetadataExt;
        let version = std::fs::metadata(Self::PATH)
            .ok()
            .and_then(|meta| Some((meta.ino(), meta.modified().ok()?)));
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (&*cached, version) {
            (Some((read, servers)), Some(now)) if *read == now => servers.clone(),
            _ => {
                let servers = nameservers(&std::fs::read_to_string(Self::PATH).unwrap_or_default());
                *cached = version.map(|version| (version, servers.clone()));
                servers
            }
        }
    }
}

/// A query the policy does not allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsDenial {
    pub name: String,
    pub qtype: String,
    /// Audit: answered anyway, only reported.
    pub mode: Mode,
}

impl std::fmt::Display for DnsDenial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcome = match self.mode {
            Mode::Enforce => "refused",
            Mode::Audit => "answered (audit)",
        };
        write!(
            f,
            "denied DNS query for {} ({}): not in network.allowlist; {outcome}",
            self.name, self.qtype
        )
    }
}

impl DnsDenial {
    /// To the journal, with the fields other denials carry.
    pub fn log(&self) {
        tracing::warn!(
            aa_event = "denied_dns",
            dns_name = %self.name,
            dns_type = %self.qtype,
            "{self}"
        );
    }
}

/// What the policy says about a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Forward, and allow the answer's addresses for these rules.
    Allowed(Vec<HostRule>),
    /// Forward without allowing anything (audit mode).
    Audited,
    Refused,
}

struct State {
    /// Empty while the generation in force has no host rules (the probes
    /// then redirect nothing; a query that still arrives is refused).
    hosts: BTreeSet<HostRule>,
    mode: Mode,
    table: LearnedTable,
    maps: LearnedMaps,
    /// Reports of denied queries and full maps: a confined process can ask
    /// as fast as it likes, the journal should not have to keep up.
    reports: FloodWindow,
}

/// The shared state of DNS-aware egress for one pin dir.
pub struct DnsEgress {
    state: Mutex<State>,
    options: DnsOptions,
    map_writes: AtomicU64,
    answers: AtomicU64,
    on_denial: Box<dyn Fn(&DnsDenial) + Send + Sync>,
    resolv_conf: ResolvConf,
}

impl DnsEgress {
    /// Takes over the learned maps of `pin_dir` (the probes must be
    /// loaded): what an earlier process learned is removed, because nobody
    /// knows any more which rules justified it, and DNS is redirected
    /// nowhere until `ResolverSockets::bind`. `on_denial` is told of each
    /// denied query (after the rate limit, which logs the rest as a count).
    pub fn open(
        pin_dir: &Path,
        options: DnsOptions,
        on_denial: Box<dyn Fn(&DnsDenial) + Send + Sync>,
    ) -> Result<DnsEgress, LoaderError> {
        let mut maps = LearnedMaps::open(pin_dir)?;
        // Nobody listens on an earlier process's port any more.
        maps.set_resolver(0, 0, 0)?;
        let stale = maps.clear()?;
        if stale > 0 {
            tracing::info!(
                removed = stale,
                "removed {stale} learned egress addresses left by an earlier process"
            );
        }
        Ok(DnsEgress {
            state: Mutex::new(State {
                hosts: BTreeSet::new(),
                mode: Mode::Enforce,
                table: LearnedTable::default(),
                maps,
                reports: FloodWindow::new(REPORTS_PER_SECOND),
            }),
            options,
            map_writes: AtomicU64::new(stale as u64),
            answers: AtomicU64::new(0),
            on_denial,
            resolv_conf: ResolvConf::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves plain data; go on with it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where allowed queries go, in order: `--dns-upstream`, else the
    /// nameservers of `/etc/resolv.conf` as it is now.
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        if self.options.upstreams.is_empty() {
            self.resolv_conf.nameservers()
        } else {
            self.options.upstreams.clone()
        }
    }

    /// Addresses allowed now.
    pub fn learned(&self) -> usize {
        self.lock().table.len()
    }

    /// Kernel writes made for learned addresses, and answers given.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.map_writes.load(Ordering::Relaxed),
            self.answers.load(Ordering::Relaxed),
        )
    }

    /// Publishes where the resolver listens (0: nowhere).
    pub fn set_resolver(
        &self,
        port4: u16,
        port6: u16,
        netns_cookie: u64,
    ) -> Result<(), LoaderError> {
        self.lock().maps.set_resolver(port4, port6, netns_cookie)
    }

    /// Before a generation with `next` host rules is applied: only the
    /// rules in force both now and then may still allow anything, and the
    /// addresses no such rule justifies are removed from the kernel now.
    pub fn prepare(&self, next: &BTreeSet<HostRule>) -> Result<usize, LoaderError> {
        let mut state = self.lock();
        let kept: BTreeSet<HostRule> = state.hosts.intersection(next).cloned().collect();
        let changes = state.table.retain_owners(&kept);
        state.hosts = kept;
        let removed = changes.len();
        self.write(&mut state, changes)?;
        Ok(removed)
    }

    /// After a generation is in force (or stayed): its host rules and mode.
    pub fn commit(&self, hosts: BTreeSet<HostRule>, mode: Mode) {
        let mut state = self.lock();
        state.hosts = hosts;
        state.mode = mode;
    }

    /// Removes what has expired, and says how many reports the last
    /// second's flood did not log; returns how many addresses expired.
    pub fn expire(&self) -> Result<usize, LoaderError> {
        let mut state = self.lock();
        if let Some(suppressed @ 1..) = state.reports.roll() {
            tracing::warn!(
                suppressed,
                "{suppressed} more denied DNS queries or full-map answers in the last second (not logged one by one)"
            );
        }
        let changes = state.table.expire(boot_time_ns());
        let removed = changes.len();
        self.write(&mut state, changes)?;
        Ok(removed)
    }

    /// The verdict on `name`; reports a denial.
    pub fn judge(&self, name: &str, qtype: &str) -> Verdict {
        let mut state = self.lock();
        let rules: Vec<HostRule> = state
            .hosts
            .iter()
            .filter(|rule| rule.matches(name))
            .cloned()
            .collect();
        if !rules.is_empty() {
            return Verdict::Allowed(rules);
        }
        let mode = if state.hosts.is_empty() {
            Mode::Enforce
        } else {
            state.mode
        };
        let denial = DnsDenial {
            name: name.to_owned(),
            qtype: qtype.to_owned(),
            mode,
        };
        if state.reports.admit() {
            drop(state);
            (self.on_denial)(&denial);
        }
        match mode {
            Mode::Enforce => Verdict::Refused,
            Mode::Audit => Verdict::Audited,
        }
    }

    /// Says that answers go unanswered for want of room (rate-limited
    /// with the denials: a flood of them is one process's doing).
    fn report_full(&self, state: &mut State, error: &LearnError) {
        if state.reports.admit() {
            tracing::warn!(
                "{error}: answers that need more are SERVFAIL until addresses expire or a reload drops their rule"
            );
        }
    }

    /// Allows `addresses` (with their TTLs) for those of `rules` still in
    /// force, in the kernel, before the answer goes out. Returns how many
    /// destinations are allowed for it; `Ok(0)` with addresses means every
    /// rule went away meanwhile (the caller refuses the answer).
    pub fn learn(
        &self,
        rules: &[HostRule],
        addresses: &[(IpAddr, u32)],
    ) -> Result<usize, LearnError> {
        let mut state = self.lock();
        self.answers.fetch_add(1, Ordering::Relaxed);
        let now = boot_time_ns();
        let addresses = &addresses[..addresses.len().min(MAX_ADDRESSES_PER_ANSWER)];
        let in_force: Vec<&HostRule> = rules
            .iter()
            .filter(|rule| state.hosts.contains(*rule))
            .collect();
        // All or nothing: checked before the first write.
        let mut new = [0usize; 2];
        for rule in &in_force {
            let fresh: BTreeSet<LearnedDest> = addresses
                .iter()
                .map(|&(addr, _)| LearnedDest::new(addr, rule.port))
                .filter(|dest| !state.table.owns(rule, dest))
                .collect();
            if state.table.owned_by(rule) + fresh.len() > MAX_LEARNED_PER_RULE {
                let error = LearnError::RuleFull {
                    rule: (*rule).clone(),
                    limit: MAX_LEARNED_PER_RULE,
                };
                self.report_full(&mut state, &error);
                return Err(error);
            }
            for dest in fresh.iter().filter(|dest| !state.table.contains(dest)) {
                new[usize::from(dest.addr.is_ipv4())] += 1;
            }
        }
        for (family, ipv4) in [(6, false), (4, true)] {
            if state.table.len_of_family(ipv4) + new[usize::from(ipv4)] > LEARNED_CAPACITY {
                let error = LearnError::MapFull { family };
                self.report_full(&mut state, &error);
                return Err(error);
            }
        }
        let mut allowed = 0;
        for rule in in_force {
            for &(addr, ttl) in addresses {
                let lifetime = Duration::from_secs(u64::from(ttl))
                    .clamp(self.options.min_ttl, MAX_TTL.max(self.options.min_ttl));
                let expires = now.saturating_add(lifetime.as_nanos() as u64);
                let dest = LearnedDest::new(addr, rule.port);
                if let Some(change) = state.table.plan_learn(&dest, expires) {
                    self.write(&mut state, vec![change])?;
                }
                state.table.record(rule, &dest, expires);
                allowed += 1;
            }
        }
        Ok(allowed)
    }

    fn write(&self, state: &mut State, changes: Vec<Change>) -> Result<(), LoaderError> {
        for change in changes {
            self.map_writes.fetch_add(1, Ordering::Relaxed);
            match change {
                Change::Write(dest, expires) => state.maps.insert(&dest, expires)?,
                Change::Remove(dest) => state.maps.remove(&dest)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_parse_with_and_without_port() {
        assert_eq!(
            parse_upstream("10.0.0.2").unwrap(),
            "10.0.0.2:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("10.0.0.2:5353").unwrap(),
            "10.0.0.2:5353".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("[2001:db8::1]:54").unwrap(),
            "[2001:db8::1]:54".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("2001:db8::1").unwrap(),
            "[2001:db8::1]:53".parse().unwrap()
        );
        assert!(parse_upstream("dns.example").is_err());
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# generated\nsearch example\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\nnameserver bogus\noptions edns0\n";
        assert_eq!(
            nameservers(text),
            vec![
                "10.255.255.53:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(
            nameservers("search example\n"),
            vec!["127.0.0.1:53".parse().unwrap()]
        );
    }

    #[test]
    fn host_rules_match_as_upstream_does() {
        let rule = |p: &str| HostRule {
            pattern: p.into(),
            port: None,
        };
        assert!(rule("*.svc.test").matches("api.svc.test"));
        assert!(rule("*.svc.test").matches("a.b.svc.test"));
        assert!(!rule("*.svc.test").matches("svc.test"));
        assert!(!rule("*.svc.test").matches("evilsvc.test"));
        assert!(rule("api.svc.test").matches("api.svc.test"));
        assert!(!rule("api.svc.test").matches("x.api.svc.test"));
    }
}
