//! `RuleSet`: what the kernel can express of a policy, as plain values.
//!
//! Why this exists: the parser speaks YAML, the probes speak maps, and the
//! diff must compare the two without either. A `RuleSet` is the canonical
//! meeting point: ordered sets and fixed-size bitmaps only, so two policies
//! that mean the same thing produce `==` rule sets, whatever their layout.
//!
//! The invariant kept here: *absent* and *present but empty* stay distinct.
//! `SyscallRule::Unrestricted` is not an empty allowlist, `Restriction` says
//! whether an allowlist exists at all, and `EgressMode::Unrestricted` is not an
//! allowlist with no entries. Lowering produces them; nothing later collapses them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Bits in a syscall bitmap. Native tables end below 470 on both supported
/// architectures (6.18); the x32 ABI starts at 512, so every native number
/// fits and every x32 number falls outside, which the probe treats as denied.
pub const SYSCALL_BITMAP_BITS: usize = 512;
const SYSCALL_BITMAP_WORDS: usize = SYSCALL_BITMAP_BITS / 64;

/// A CPU architecture whose syscall table a policy is lowered against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[serde(rename = "x86_64")]
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture this binary runs on, or x86_64 elsewhere.
    pub const fn native() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The syscall number of `name` on this architecture, from the kernel's
    /// own table as packaged by the `syscalls` crate.
    pub fn syscall_number(self, name: &str) -> Option<u32> {
        let id = match self {
            Arch::X86_64 => syscalls::x86_64::Sysno::from_str(name).ok()?.id(),
            Arch::Aarch64 => syscalls::aarch64::Sysno::from_str(name).ok()?.id(),
        };
        u32::try_from(id).ok()
    }

    /// The name of syscall `number` on this architecture.
    pub fn syscall_name(self, number: u32) -> Option<&'static str> {
        let number = usize::try_from(number).ok()?;
        match self {
            Arch::X86_64 => syscalls::x86_64::Sysno::new(number).map(|s| s.name()),
            Arch::Aarch64 => syscalls::aarch64::Sysno::new(number).map(|s| s.name()),
        }
    }

    /// Every syscall name of this architecture.
    pub fn syscall_names(self) -> Vec<&'static str> {
        match self {
            Arch::X86_64 => syscalls::x86_64::Sysno::iter().map(|s| s.name()).collect(),
            Arch::Aarch64 => syscalls::aarch64::Sysno::iter().map(|s| s.name()).collect(),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86_64" => Ok(Arch::X86_64),
            "aarch64" => Ok(Arch::Aarch64),
            other => Err(format!(
                "unknown architecture `{other}` (expected x86_64 or aarch64)"
            )),
        }
    }
}

/// Enforce kills on a denied syscall; audit only reports it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        })
    }
}

/// The allowed syscalls of one architecture as the bitmap the probe reads:
/// bit `n` of word `n / 64` is syscall number `n`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SyscallSet {
    arch: Arch,
    words: [u64; SYSCALL_BITMAP_WORDS],
}

impl SyscallSet {
    pub fn empty(arch: Arch) -> Self {
        SyscallSet {
            arch,
            words: [0; SYSCALL_BITMAP_WORDS],
        }
    }

    /// Rebuilds a set from the words a probe map holds.
    pub fn from_words(arch: Arch, words: [u64; SYSCALL_BITMAP_WORDS]) -> Self {
        SyscallSet { arch, words }
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    pub fn words(&self) -> &[u64; SYSCALL_BITMAP_WORDS] {
        &self.words
    }

    /// Adds syscall `number`; numbers outside the bitmap are ignored because
    /// no native syscall has one.
    pub fn insert(&mut self, number: u32) {
        let n = number as usize;
        if n < SYSCALL_BITMAP_BITS {
            self.words[n / 64] |= 1 << (n % 64);
        }
    }

    pub fn remove(&mut self, number: u32) {
        let n = number as usize;
        if n < SYSCALL_BITMAP_BITS {
            self.words[n / 64] &= !(1 << (n % 64));
        }
    }

    pub fn contains(&self, number: u32) -> bool {
        let n = number as usize;
        n < SYSCALL_BITMAP_BITS && self.words[n / 64] & (1 << (n % 64)) != 0
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The allowed numbers in ascending order.
    pub fn numbers(&self) -> impl Iterator<Item = u32> + '_ {
        (0..SYSCALL_BITMAP_BITS as u32).filter(|&n| self.contains(n))
    }

    /// A number's name on this set's architecture, or `#n` when the table
    /// has none (only possible for bitmaps read back from a kernel map).
    pub fn name_of(&self, number: u32) -> String {
        self.arch
            .syscall_name(number)
            .map_or_else(|| format!("#{number}"), str::to_owned)
    }
}

impl fmt::Debug for SyscallSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyscallSet")
            .field("arch", &self.arch)
            .field("numbers", &self.numbers().collect::<Vec<_>>())
            .finish()
    }
}

/// What the syscall guard does for a confined task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyscallRule {
    /// `syscalls` absent: every syscall passes.
    Unrestricted,
    /// `syscalls.allow` present: only these pass (possibly none).
    Allow(SyscallSet),
}

impl SyscallRule {
    /// True only for a present-but-empty allowlist: the state that kills
    /// every confined process on its next syscall.
    pub fn is_empty_allowlist(&self) -> bool {
        matches!(self, SyscallRule::Allow(set) if set.is_empty())
    }
}

/// Whether an access kind is limited to an allowlist of path prefixes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Restriction {
    /// No `allow` list: only `deny` rules apply.
    #[default]
    Unrestricted,
    /// An `allow` list exists: anything not under an allowed prefix is denied.
    Allowlist,
}

/// The access a path rule governs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
}

impl Access {
    pub const ALL: [Access; 2] = [Access::Read, Access::Write];
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
        })
    }
}

/// What a matching path rule decides. Deny wins over allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

/// A normalised absolute path prefix, matched per component: `/srv/app`
/// covers `/srv/app` and `/srv/app/x`, never `/srv/app-evil`.
/// Deserializing validates through `parse` (see `policy::document`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PathPrefix(String);

impl PathPrefix {
    /// Normalises `raw`: must be absolute, `.` and empty components are
    /// dropped, `..` and NUL are refused (they would let a rule mean something
    /// other than it reads).
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("path is empty".into());
        }
        if raw.contains('\0') {
            return Err(format!("path {raw:?} contains a NUL byte"));
        }
        if !raw.starts_with('/') {
            return Err(format!("path `{raw}` is relative; paths must be absolute"));
        }
        let mut normalised = String::with_capacity(raw.len());
        for component in raw.split('/') {
            match component {
                "" | "." => {}
                ".." => {
                    return Err(format!(
                        "path `{raw}` contains `..`; write the resolved path"
                    ));
                }
                c => {
                    normalised.push('/');
                    normalised.push_str(c);
                }
            }
        }
        if normalised.is_empty() {
            normalised.push('/');
        }
        if normalised.len() > MAX_PATH_PREFIX_BYTES {
            return Err(format!(
                "path is {} bytes; the kernel rule map holds at most {MAX_PATH_PREFIX_BYTES}",
                normalised.len()
            ));
        }
        Ok(PathPrefix(normalised))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The strict ancestors of this prefix, nearest first, ending at `/`.
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        let path = self.0.as_str();
        let mut end = if path == "/" { 0 } else { path.len() };
        std::iter::from_fn(move || {
            if end == 0 {
                return None;
            }
            let cut = path[..end].rfind('/')?;
            end = cut;
            Some(if cut == 0 { "/" } else { &path[..cut] })
        })
    }
}

/// Lets ordered sets of prefixes be searched by `&str` without allocating.
/// Sound because the derived `Ord` of the one-field struct is `String`'s.
impl std::borrow::Borrow<str> for PathPrefix {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Longest path the probe's LPM key can hold (256 bytes minus the
/// terminating `\0` or `/` that marks a component boundary).
pub const MAX_PATH_PREFIX_BYTES: usize = 255;

impl fmt::Display for PathPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A path rule's identity: the same prefix may carry one rule per access.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PathRuleKey {
    pub access: Access,
    pub prefix: PathPrefix,
}

/// File access rules: a restriction per access kind plus prefix rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathRules {
    pub read: Restriction,
    pub write: Restriction,
    pub rules: BTreeMap<PathRuleKey, Verdict>,
}

impl PathRules {
    pub fn restriction(&self, access: Access) -> Restriction {
        match access {
            Access::Read => self.read,
            Access::Write => self.write,
        }
    }

    pub fn set_restriction(&mut self, access: Access, restriction: Restriction) {
        match access {
            Access::Read => self.read = restriction,
            Access::Write => self.write = restriction,
        }
    }
}

/// An IPv4 or IPv6 network in CIDR form with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpCidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl IpCidr {
    /// Refuses host bits below the prefix: `10.0.0.1/8` is almost always a
    /// typo for `10.0.0.1/32` or `10.0.0.0/8`, and guessing is unsafe.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, String> {
        let max = max_prefix_len(addr);
        if prefix_len > max {
            return Err(format!(
                "prefix length /{prefix_len} is longer than {max} bits"
            ));
        }
        let masked = mask_addr(addr, prefix_len);
        if masked != addr {
            return Err(format!(
                "{addr}/{prefix_len} has host bits set; did you mean {masked}/{prefix_len}?"
            ));
        }
        Ok(IpCidr { addr, prefix_len })
    }

    /// A single host: /32 or /128.
    pub fn host(addr: IpAddr) -> Self {
        IpCidr {
            addr,
            prefix_len: max_prefix_len(addr),
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The enclosing network of the same family with a shorter prefix.
    pub fn supernet(&self, prefix_len: u8) -> Option<IpCidr> {
        (prefix_len <= self.prefix_len).then(|| IpCidr {
            addr: mask_addr(self.addr, prefix_len),
            prefix_len,
        })
    }
}

fn max_prefix_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask_addr(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

impl FromStr for IpCidr {
    type Err = String;
    /// `addr/len` or a bare address (a single host).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        match len {
            Some(len) => {
                let len: u8 = len
                    .parse()
                    .map_err(|_| format!("`/{len}` is not a prefix length"))?;
                IpCidr::new(addr, len)
            }
            None => Ok(IpCidr::host(addr)),
        }
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// One kernel egress rule: a network and an optional destination port
/// (`None` = any port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EgressRule {
    pub net: IpCidr,
    pub port: Option<u16>,
}

impl EgressRule {
    /// True when every destination `other` allows is also allowed by `self`.
    pub fn covers(&self, other: &EgressRule) -> bool {
        let port_covered = self.port.is_none() || self.port == other.port;
        port_covered && other.net.supernet(self.net.prefix_len) == Some(self.net)
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.net.addr, self.port) {
            (_, None) => write!(f, "{}", self.net),
            (IpAddr::V4(_), Some(port)) => write!(f, "{}:{port}", self.net),
            (IpAddr::V6(_), Some(port)) => write!(f, "[{}]:{port}", self.net),
        }
    }
}

/// Whether confined processes may reach any address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    /// `network.allowlist` absent.
    #[default]
    Unrestricted,
    /// Only destinations matching an `EgressRule` are reachable.
    Allowlist,
    /// The allowlist also names hosts: confined processes' DNS goes to the
    /// daemon's resolver, and the addresses it answers for an allowed name
    /// are reachable too (see `dns`).
    #[serde(rename = "allowlist+hosts")]
    AllowlistAndHosts,
}

impl EgressMode {
    /// Whether confined processes may reach only some destinations.
    pub fn restricts(self) -> bool {
        self != EgressMode::Unrestricted
    }
}

/// An allowlisted host name, matched as upstream's gateway matches it:
/// exact and case-insensitive, `*.suffix` for any name with at least one
/// more label. `port: None` allows every port of the host's addresses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostRule {
    /// Lower case, without a trailing dot.
    pub pattern: String,
    pub port: Option<u16>,
}

impl HostRule {
    /// Whether `name` (lower case, no trailing dot) is one this rule allows.
    pub fn matches(&self, name: &str) -> bool {
        match self.pattern.strip_prefix("*.") {
            Some(suffix) => {
                name.len() > suffix.len() + 1
                    && name.ends_with(suffix)
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
            }
            None => self.pattern == name,
        }
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.pattern),
            None => f.write_str(&self.pattern),
        }
    }
}

/// The egress part of a rule set. In `Unrestricted` mode `rules` is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressRules {
    pub mode: EgressMode,
    pub rules: BTreeSet<EgressRule>,
}

/// Everything the kernel enforces for confined processes, in canonical form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub mode: Mode,
    pub syscalls: SyscallRule,
    pub paths: PathRules,
    pub egress: EgressRules,
}

impl RuleSet {
    /// The rule set that restricts nothing: what an empty kernel holds.
    pub fn unrestricted() -> Self {
        RuleSet {
            mode: Mode::Enforce,
            syscalls: SyscallRule::Unrestricted,
            paths: PathRules::default(),
            egress: EgressRules::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefix_normalises_dots_and_slashes() {
        let p = PathPrefix::parse("//srv/./app//data/").unwrap();
        assert_eq!(p.as_str(), "/srv/app/data");
        assert_eq!(PathPrefix::parse("/").unwrap().as_str(), "/");
        assert_eq!(PathPrefix::parse("/./").unwrap().as_str(), "/");
    }

    #[test]
    fn path_prefix_refuses_relative_dotdot_and_nul() {
        assert!(PathPrefix::parse("srv").is_err());
        assert!(PathPrefix::parse("/srv/../etc").is_err());
        assert!(PathPrefix::parse("/srv\0x").is_err());
        assert!(PathPrefix::parse("").is_err());
        assert!(PathPrefix::parse(&format!("/{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn path_ancestors_walk_components_up_to_root() {
        let p = PathPrefix::parse("/a/bc/d").unwrap();
        assert_eq!(p.ancestors().collect::<Vec<_>>(), ["/a/bc", "/a", "/"]);
        assert_eq!(PathPrefix::parse("/").unwrap().ancestors().count(), 0);
    }

    #[test]
    fn cidr_refuses_host_bits_and_long_prefixes() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let err = IpCidr::new(a, 8).unwrap_err();
        assert!(err.contains("did you mean 10.0.0.0/8"), "{err}");
        assert!(IpCidr::new(a, 33).is_err());
        assert!(IpCidr::new("::".parse().unwrap(), 0).is_ok());
    }

    #[test]
    fn egress_rule_covers_narrower_net_with_same_or_any_port() {
        let wide = EgressRule {
            net: IpCidr::new("10.0.0.0".parse().unwrap(), 8).unwrap(),
            port: None,
        };
        let narrow = EgressRule {
            net: IpCidr::host("10.1.2.3".parse().unwrap()),
            port: Some(443),
        };
        assert!(wide.covers(&narrow));
        assert!(!narrow.covers(&wide));
        let wide_443 = EgressRule {
            port: Some(443),
            ..wide
        };
        assert!(wide_443.covers(&narrow));
        let wide_80 = EgressRule {
            port: Some(80),
            ..wide
        };
        assert!(!wide_80.covers(&narrow));
    }

    #[test]
    fn syscall_set_round_trips_numbers_and_names() {
        let mut set = SyscallSet::empty(Arch::X86_64);
        set.insert(0);
        set.insert(511);
        set.insert(600);
        assert_eq!(set.numbers().collect::<Vec<_>>(), [0, 511]);
        assert_eq!(set.name_of(0), "read");
        set.remove(511);
        assert_eq!(set.len(), 1);
        assert_eq!(Arch::Aarch64.syscall_number("openat"), Some(56));
        assert_eq!(Arch::Aarch64.syscall_number("open"), None);
    }
}
