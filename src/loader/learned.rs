//! The kernel side of DNS-aware egress: the pinned `LEARNED4`/`LEARNED6`
//! maps (addresses the daemon's resolver answered, with their expiry) and
//! `RESOLVER` (where confined DNS is redirected to).
//!
//! Why this exists apart from the generation protocol: learned addresses
//! change with every answer, not with the policy, so they are not slotted;
//! each entry carries its own expiry, which the probe checks itself, and the
//! resolver owns them (`dns::DnsEgress`). The loader process is still their
//! only writer: the resolver runs inside it.

use std::net::IpAddr;
use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData};

use super::LoaderError;
use super::abi::{Learned4Key, Learned6Key, LearnedValue, ResolverConfig};
use super::maps::map_err;
use super::pins::PinLayout;
use super::rule_keys::remove_ignoring_missing;

/// One learned destination: an address and the port of the host rule that
/// allowed it (0: any port). IPv4-mapped IPv6 addresses are kept as IPv4,
/// which is how the probe judges them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LearnedDest {
    pub addr: IpAddr,
    pub port: u16,
}

impl LearnedDest {
    pub fn new(addr: IpAddr, port: Option<u16>) -> Self {
        LearnedDest {
            addr: addr.to_canonical(),
            port: port.unwrap_or(0),
        }
    }
}

impl std::fmt::Display for LearnedDest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.addr, self.port) {
            (addr, 0) => write!(f, "{addr}"),
            (IpAddr::V4(addr), port) => write!(f, "{addr}:{port}"),
            (IpAddr::V6(addr), port) => write!(f, "[{addr}]:{port}"),
        }
    }
}

/// Handles on the pinned maps of a pin dir's DNS-aware egress.
pub struct LearnedMaps {
    v4: HashMap<MapData, Learned4Key, LearnedValue>,
    v6: HashMap<MapData, Learned6Key, LearnedValue>,
    resolver: Array<MapData, ResolverConfig>,
}

fn open_pinned(pins: &PinLayout, name: &'static str) -> Result<MapData, LoaderError> {
    let pin = pins.map(name);
    MapData::from_pin(&pin).map_err(map_err(name, ""))
}

fn key4(dest: &LearnedDest, addr: std::net::Ipv4Addr) -> Learned4Key {
    Learned4Key {
        addr: addr.octets(),
        port: dest.port.to_be(),
        _pad: 0,
    }
}

fn key6(dest: &LearnedDest, addr: std::net::Ipv6Addr) -> Learned6Key {
    Learned6Key {
        addr: addr.octets(),
        port: dest.port.to_be(),
        _pad: 0,
    }
}

impl LearnedMaps {
    /// Opens the maps the probes of `pin_dir` read (they must be loaded).
    pub fn open(pin_dir: &Path) -> Result<LearnedMaps, LoaderError> {
        let pins = PinLayout::new(pin_dir);
        let v4 = Map::HashMap(open_pinned(&pins, "LEARNED4")?);
        let v6 = Map::HashMap(open_pinned(&pins, "LEARNED6")?);
        let resolver = Map::Array(open_pinned(&pins, "RESOLVER")?);
        Ok(LearnedMaps {
            v4: HashMap::try_from(v4).map_err(map_err("LEARNED4", ""))?,
            v6: HashMap::try_from(v6).map_err(map_err("LEARNED6", ""))?,
            resolver: Array::try_from(resolver).map_err(map_err("RESOLVER", ""))?,
        })
    }

    /// Allows `dest` until `expires_ns` (`CLOCK_BOOTTIME`).
    pub fn insert(&mut self, dest: &LearnedDest, expires_ns: u64) -> Result<(), LoaderError> {
        let value = LearnedValue { expires_ns };
        match dest.addr {
            IpAddr::V4(addr) => self
                .v4
                .insert(key4(dest, addr), value, 0)
                .map_err(map_err("LEARNED4", dest.to_string())),
            IpAddr::V6(addr) => self
                .v6
                .insert(key6(dest, addr), value, 0)
                .map_err(map_err("LEARNED6", dest.to_string())),
        }
    }

    /// Stops allowing `dest` (already absent is fine).
    pub fn remove(&mut self, dest: &LearnedDest) -> Result<(), LoaderError> {
        let result = match dest.addr {
            IpAddr::V4(addr) => self.v4.remove(&key4(dest, addr)),
            IpAddr::V6(addr) => self.v6.remove(&key6(dest, addr)),
        };
        let map = if dest.addr.is_ipv4() {
            "LEARNED4"
        } else {
            "LEARNED6"
        };
        remove_ignoring_missing(result).map_err(map_err(map, dest.to_string()))
    }

    /// Removes every learned address (a new resolver does not know who
    /// justified the ones a previous process left); returns how many.
    pub fn clear(&mut self) -> Result<usize, LoaderError> {
        let v4: Vec<Learned4Key> = self.v4.keys().filter_map(Result::ok).collect();
        let v6: Vec<Learned6Key> = self.v6.keys().filter_map(Result::ok).collect();
        let count = v4.len() + v6.len();
        for key in v4 {
            remove_ignoring_missing(self.v4.remove(&key)).map_err(map_err("LEARNED4", ""))?;
        }
        for key in v6 {
            remove_ignoring_missing(self.v6.remove(&key)).map_err(map_err("LEARNED6", ""))?;
        }
        Ok(count)
    }

    /// Points confined DNS at the resolver (`port4`/`port6` 0: nowhere).
    pub fn set_resolver(
        &mut self,
        port4: u16,
        port6: u16,
        netns_cookie: u64,
    ) -> Result<(), LoaderError> {
        let config = ResolverConfig {
            port4: port4.to_be(),
            port6: port6.to_be(),
            _pad: 0,
            netns_cookie,
        };
        self.resolver
            .set(0, config, 0)
            .map_err(map_err("RESOLVER", "0"))
    }
}

/// Now on `CLOCK_BOOTTIME`, the clock the probe compares expiries with.
pub fn boot_time_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000) + now.tv_nsec as u64
}
