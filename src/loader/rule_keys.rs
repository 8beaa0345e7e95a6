//! How rules become LPM-trie keys and entries, and back.
//!
//! Why this exists: the egress and path maps are longest-prefix-match tries
//! whose keys and per-slot values follow `probes/aa_policy.h`. Turning a
//! `EgressRule` or `PathPrefix` into those bytes, reading a rule back from a
//! key, and flipping one slot's bit on one entry are the only places that
//! know the layout; the generation protocol (`generations.rs`) uses them.

use std::net::IpAddr;

use aya::maps::MapData;
use aya::maps::MapError;
use aya::maps::lpm_trie::{Key, LpmTrie};

use super::abi::{self, Egress4Data, Egress6Data, PathData, RuleValue};
use crate::ruleset::{Access, EgressRule, IpCidr, PathPrefix};

/// A map delete's result, where a key that was already gone is success
/// (aya reports it as `KeyNotFound` for some maps and as the syscall's
/// ENOENT for others).
pub(super) fn remove_ignoring_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(error))
            if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Sets (`present`) or clears `slot`'s bit on the entry for exactly `key`,
/// creating the entry when it does not exist yet.
pub(super) fn set_slot_bit<K: aya::Pod>(
    trie: &mut LpmTrie<MapData, K, RuleValue>,
    key: &Key<K>,
    slot: u32,
    present: bool,
    ops: &mut u64,
) -> Result<(), MapError> {
    *ops += 2;
    let bit = 1u8 << slot;
    let mut value = exact(trie.get(key, 0), key.prefix_len())?.unwrap_or(RuleValue {
        prefixlen: key.prefix_len(),
        ..RuleValue::default()
    });
    value.slots = if present {
        value.slots | bit
    } else {
        value.slots & !bit
    };
    trie.insert(key, value, 0)
}

/// Makes slot `to` of the entry for exactly `key` equal to slot `from`,
/// deleting the entry when no slot holds it any more.
pub(super) fn align_entry<K: aya::Pod>(
    trie: &mut LpmTrie<MapData, K, RuleValue>,
    key: &Key<K>,
    from: u32,
    to: u32,
    ops: &mut u64,
) -> Result<(), MapError> {
    *ops += 1;
    let Some(mut value) = exact(trie.get(key, 0), key.prefix_len())? else {
        return Ok(());
    };
    *ops += 1;
    if value.slots & (1 << from) != 0 {
        value.slots |= 1 << to;
        trie.insert(key, value, 0)
    } else {
        remove_ignoring_missing(trie.remove(key))
    }
}

/// An LPM lookup is a longest-prefix match; the value's own prefix length
/// tells whether it is the entry for exactly this key.
pub(super) fn exact(
    result: Result<RuleValue, MapError>,
    prefix_len: u32,
) -> Result<Option<RuleValue>, MapError> {
    match result {
        Ok(value) if value.prefixlen == prefix_len => Ok(Some(value)),
        Ok(_) | Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(super) fn access_mask(access: Access) -> u8 {
    match access {
        Access::Read => abi::ACCESS_READ,
        Access::Write => abi::ACCESS_WRITE,
    }
}

/// The key data of one egress family (`EGRESS4` or `EGRESS6`): port, then
/// address, both in network byte order; port 0 means any port.
pub(super) trait EgressKeyData: aya::Pod {
    const ADDR_BITS: u8;
    fn new(port_be: u16, addr: IpAddr) -> Self;
    fn port_be(&self) -> u16;
    fn addr(&self) -> IpAddr;
}

impl EgressKeyData for Egress4Data {
    const ADDR_BITS: u8 = 32;
    fn new(port_be: u16, addr: IpAddr) -> Self {
        let addr = match addr {
            IpAddr::V4(a) => a.octets(),
            IpAddr::V6(_) => [0; 4],
        };
        Egress4Data {
            port: port_be,
            addr,
            _pad: [0; 2],
        }
    }
    fn port_be(&self) -> u16 {
        self.port
    }
    fn addr(&self) -> IpAddr {
        IpAddr::from(self.addr)
    }
}

impl EgressKeyData for Egress6Data {
    const ADDR_BITS: u8 = 128;
    fn new(port_be: u16, addr: IpAddr) -> Self {
        let addr = match addr {
            IpAddr::V6(a) => a.octets(),
            IpAddr::V4(_) => [0; 16],
        };
        Egress6Data {
            port: port_be,
            addr,
            _pad: [0; 2],
        }
    }
    fn port_be(&self) -> u16 {
        self.port
    }
    fn addr(&self) -> IpAddr {
        IpAddr::from(self.addr)
    }
}

/// The LPM key of `rule`: 16 port bits, then the network's prefix.
pub(super) fn egress_key<D: EgressKeyData>(rule: &EgressRule) -> Key<D> {
    let data = D::new(rule.port.unwrap_or(0).to_be(), rule.net.addr());
    Key::new(16 + u32::from(rule.net.prefix_len()), data)
}

/// The rule an LPM key stands for.
pub(super) fn egress_rule<D: EgressKeyData>(key: &Key<D>) -> EgressRule {
    let data = key.data();
    let prefix = key
        .prefix_len()
        .saturating_sub(16)
        .min(u32::from(D::ADDR_BITS)) as u8;
    let host = IpCidr::host(data.addr());
    EgressRule {
        net: host.supernet(prefix).unwrap_or(host),
        port: match u16::from_be(data.port_be()) {
            0 => None,
            port => Some(port),
        },
    }
}

/// The two keys of a path rule: `P\0` (P itself) and `P/` (below P).
pub(super) fn path_keys(prefix: &PathPrefix) -> (Key<PathData>, Key<PathData>) {
    let bytes = prefix.as_str().as_bytes();
    let make = |suffix: Option<u8>| {
        let mut path = [0u8; abi::MAX_PATH];
        path[..bytes.len()].copy_from_slice(bytes);
        let mut len = bytes.len();
        if let Some(byte) = suffix {
            path[len] = byte;
            len += 1;
        }
        Key::new(8 * len as u32, PathData { path })
    };
    let exact = make(Some(0));
    let subtree = if bytes == b"/" {
        make(None)
    } else {
        make(Some(b'/'))
    };
    (exact, subtree)
}

/// The prefix of an exact (`P\0`) path key; `None` for a subtree key.
pub(super) fn exact_path(key: &Key<PathData>) -> Option<PathPrefix> {
    let len = (key.prefix_len() / 8) as usize;
    let data = key.data();
    let bytes = data.path.get(..len)?;
    let (last, path) = bytes.split_last()?;
    if *last != 0 {
        return None;
    }
    PathPrefix::parse(std::str::from_utf8(path).ok()?).ok()
}
