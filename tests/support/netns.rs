//! A network namespace of the test's own, with a fake upstream DNS server
//! and TCP listeners on the addresses it answers — so DNS-aware egress is
//! tested with real sockets, the real resolver libraries and the real
//! probes, and nothing can leave the machine: the namespace has only `lo`,
//! every address is one the test put there (198.18.0.0/15 and 2001:db8::/32,
//! both reserved for tests), and it is deleted on drop.
//!
//! Sockets are made in the namespace by threads that `setns` into it (a
//! network namespace is per thread); processes enter it with
//! `nsenter --net`, or `ip netns exec` when they should also see the
//! namespace's own resolv.conf (`/etc/netns/NAME/resolv.conf`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use simple_dns::rdata::{A, AAAA, CNAME, RData};
use simple_dns::{CLASS, Name, Packet, PacketFlag, QTYPE, RCODE, ResourceRecord, TYPE};

/// Where the fake upstream listens (port 53, UDP and TCP).
pub const UPSTREAM: &str = "198.18.0.53";
/// A second listener of the fake upstream (UDP), where a host's local stub
/// resolver would be: inside the loopback range policies often allow.
pub const LOCAL_STUB: &str = "127.0.0.53";
/// The port every answered address has a listener on.
pub const SERVICE_PORT: u16 = 8080;

/// One name's records in the fake zone.
#[derive(Clone, Debug)]
pub enum Record {
    A(&'static str, u32),
    Aaaa(&'static str, u32),
    Cname(&'static str),
}

/// The fake zone: name → records; `tcp_only` names answer over UDP with an
/// empty truncated message (which sends the client to TCP); `slow` names
/// are answered over UDP after `SLOW_ANSWER` (queries that stay in flight).
#[derive(Clone, Debug, Default)]
pub struct Zone {
    pub names: BTreeMap<&'static str, Vec<Record>>,
    pub tcp_only: Vec<&'static str>,
    pub slow: Vec<&'static str>,
}

/// How long a `slow` name's answer takes (under the resolver's 2 s).
pub const SLOW_ANSWER: Duration = Duration::from_secs(1);

impl Zone {
    /// Every address the zone answers with that gets a listener (and a
    /// place on `lo`): all but those in 198.19.0.0/16, which are for tests
    /// of how many addresses can be learned.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self
            .names
            .values()
            .flatten()
            .filter_map(|record| match record {
                Record::A(addr, _) | Record::Aaaa(addr, _) => addr.parse().ok(),
                Record::Cname(_) => None,
            })
            .filter(|addr| !matches!(addr, IpAddr::V4(v4) if v4.octets()[..2] == [198, 19]))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Queries the fake upstream received, as `name/TYPE/udp|tcp`.
pub type QueryLog = Arc<Mutex<Vec<String>>>;

pub struct NetNs {
    pub name: String,
    pub path: PathBuf,
    stop: Arc<AtomicBool>,
    pub queries: QueryLog,
}

fn run(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(status.success(), "{args:?} failed");
}

/// Runs `body` on a new thread that has entered the namespace at `path`.
fn in_netns<T: Send + 'static>(path: &PathBuf, body: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(path).expect("open netns");
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only; the file stays open meanwhile.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        body()
    })
    .join()
    .expect("netns thread")
}

impl NetNs {
    /// Creates the namespace with `lo` up, the upstream's and the zone's
    /// addresses on it, its own resolv.conf (the fake upstream), the fake
    /// upstream serving `zone`, and a listener on every zone address.
    pub fn create(tag: &str, zone: Zone) -> NetNs {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "aa-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        let netns = NetNs {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name: name.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            queries: Arc::new(Mutex::new(Vec::new())),
        };
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        let mut addresses = zone.addresses();
        addresses.push(UPSTREAM.parse().expect("upstream address"));
        for addr in &addresses {
            let cidr = match addr {
                IpAddr::V4(_) => format!("{addr}/32"),
                IpAddr::V6(_) => format!("{addr}/128"),
            };
            let mut args = vec!["ip", "-n", &name, "addr", "add", &cidr, "dev", "lo"];
            if addr.is_ipv6() {
                args.push("nodad");
            }
            run(&args);
        }
        let etc = PathBuf::from(format!("/etc/netns/{name}"));
        std::fs::create_dir_all(&etc).expect("mkdir /etc/netns/NAME");
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {UPSTREAM}\noptions timeout:2 attempts:2\n"),
        )
        .expect("write resolv.conf");

        let (stop, queries) = (Arc::clone(&netns.stop), Arc::clone(&netns.queries));
        let zone = Arc::new(zone);
        let sockets = in_netns(&netns.path, move || {
            let upstream: SocketAddr = (UPSTREAM.parse::<IpAddr>().expect("ip"), 53).into();
            let udp = UdpSocket::bind(upstream).expect("bind fake DNS (udp)");
            let stub = UdpSocket::bind((LOCAL_STUB.parse::<IpAddr>().expect("ip"), 53))
                .expect("bind fake DNS (local stub)");
            let tcp = TcpListener::bind(upstream).expect("bind fake DNS (tcp)");
            let listeners: Vec<TcpListener> = addresses
                .iter()
                .filter(|addr| addr.to_string() != UPSTREAM)
                .map(|addr| TcpListener::bind((*addr, SERVICE_PORT)).expect("bind listener"))
                .collect();
            (udp, stub, tcp, listeners)
        });
        let (udp, stub, tcp, listeners) = sockets;
        for udp in [udp, stub] {
            let (zone, queries, stop) =
                (Arc::clone(&zone), Arc::clone(&queries), Arc::clone(&stop));
            udp.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            std::thread::spawn(move || serve_udp(&udp, &zone, &queries, &stop));
        }
        {
            let (zone, queries, stop) =
                (Arc::clone(&zone), Arc::clone(&queries), Arc::clone(&stop));
            tcp.set_nonblocking(true).expect("nonblocking");
            std::thread::spawn(move || serve_tcp(&tcp, &zone, &queries, &stop));
        }
        for listener in listeners {
            let stop = Arc::clone(&stop);
            listener.set_nonblocking(true).expect("nonblocking");
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => drop(stream),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        netns
    }

    /// `nsenter --net=PATH`: a prefix that runs a command in the namespace
    /// (file systems unchanged, so pins and sockets stay reachable).
    pub fn nsenter(&self) -> Vec<String> {
        vec!["nsenter".into(), format!("--net={}", self.path.display())]
    }

    /// `program` to be run in the namespace (through `nsenter`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path.display()))
            .arg(program);
        command
    }

    /// Queries the fake upstream saw for `name`.
    pub fn queries_for(&self, name: &str) -> Vec<String> {
        let prefix = format!("{name}/");
        self.queries
            .lock()
            .expect("query log")
            .iter()
            .filter(|q| q.starts_with(&prefix))
            .cloned()
            .collect()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
        // Made by the first namespace if the host had none; kept if in use.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

fn serve_udp(socket: &UdpSocket, zone: &Zone, queries: &QueryLog, stop: &AtomicBool) {
    let mut buffer = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, client)) = socket.recv_from(&mut buffer) else {
            continue;
        };
        let Some(reply) = answer(&buffer[..len], zone, queries, false) else {
            continue;
        };
        let slow = Packet::parse(&buffer[..len]).ok().is_some_and(|query| {
            query.questions.first().is_some_and(|question| {
                let name = question.qname.to_string().to_ascii_lowercase();
                zone.slow.contains(&name.as_str())
            })
        });
        match socket.try_clone() {
            Ok(socket) if slow => {
                std::thread::spawn(move || {
                    std::thread::sleep(SLOW_ANSWER);
                    let _ = socket.send_to(&reply, client);
                });
            }
            _ => {
                let _ = socket.send_to(&reply, client);
            }
        }
    }
}

fn serve_tcp(listener: &TcpListener, zone: &Zone, queries: &QueryLog, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut stream, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        while let Some(query) = read_framed(&mut stream) {
            let Some(reply) = answer(&query, zone, queries, true) else {
                break;
            };
            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            if stream.write_all(&framed).is_err() {
                break;
            }
        }
    }
}

fn read_framed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).ok()?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).ok()?;
    Some(message)
}

fn answer(bytes: &[u8], zone: &Zone, queries: &QueryLog, tcp: bool) -> Option<Vec<u8>> {
    let query = Packet::parse(bytes).ok()?;
    let question = query.questions.first()?.clone();
    let name = question.qname.to_string().to_ascii_lowercase();
    let qtype = question.qtype;
    queries.lock().ok()?.push(format!(
        "{name}/{qtype:?}/{}",
        if tcp { "tcp" } else { "udp" }
    ));
    let mut reply = Packet::new_reply(query.id());
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE | PacketFlag::RECURSION_DESIRED);
    reply.questions.push(question);
    if !tcp && zone.tcp_only.contains(&name.as_str()) {
        reply.set_flags(PacketFlag::TRUNCATION);
        return reply.build_bytes_vec().ok();
    }
    // Follow CNAMEs inside the zone, as a recursive server would.
    let mut current = name.clone();
    let mut found = false;
    for _ in 0..8 {
        let Some(records) = zone.names.get(current.as_str()) else {
            break;
        };
        found = true;
        let owner = Name::new_unchecked(&current).into_owned();
        let mut next = None;
        for record in records {
            let rdata = match (record, qtype) {
                (Record::A(addr, _), QTYPE::TYPE(TYPE::A)) => RData::A(A {
                    address: u32::from(addr.parse::<std::net::Ipv4Addr>().ok()?),
                }),
                (Record::Aaaa(addr, _), QTYPE::TYPE(TYPE::AAAA)) => RData::AAAA(AAAA {
                    address: u128::from(addr.parse::<std::net::Ipv6Addr>().ok()?),
                }),
                (Record::Cname(target), _) => {
                    next = Some((*target).to_owned());
                    RData::CNAME(CNAME(Name::new_unchecked(target).into_owned()))
                }
                _ => continue,
            };
            let ttl = match record {
                Record::A(_, ttl) | Record::Aaaa(_, ttl) => *ttl,
                Record::Cname(_) => 300,
            };
            reply
                .answers
                .push(ResourceRecord::new(owner.clone(), CLASS::IN, ttl, rdata));
        }
        match next {
            Some(target) => current = target,
            None => break,
        }
    }
    if !found {
        *reply.rcode_mut() = RCODE::NameError;
    }
    reply.build_bytes_vec().ok()
}
