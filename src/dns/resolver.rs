//! The daemon's resolver: where the probes send confined processes' DNS.
//!
//! Why this exists: an address may be reached because a name the policy
//! allows resolved to it, so the answer itself must pass through code that
//! checks the name and tells the kernel before the client sees it. It
//! listens on loopback only (UDP and TCP, 127.0.0.1 and ::1, one port each),
//! forwards allowed queries unchanged but for their ID to the upstream
//! servers, and answers everything else itself (REFUSED, FORMERR, ...).
//! It is not an open resolver: nothing outside this host reaches it, and
//! only names the policy allows can make it allow an address.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use simple_dns::RCODE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::message::{self, Query};
use super::{DnsEgress, Verdict};

/// How long one upstream has to answer over UDP, and over TCP.
const UDP_TIMEOUT: Duration = Duration::from_secs(2);
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// A client's TCP connection may stay idle this long between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Queries in flight at once (UDP), in all and from one client socket, and
/// client TCP connections: a confined process may flood the resolver, not
/// exhaust the daemon, and one socket cannot take every slot. Clients are
/// told apart by their socket (address and port): the resolver cannot see
/// which process sent a datagram.
const MAX_IN_FLIGHT: usize = 1024;
const MAX_IN_FLIGHT_PER_CLIENT: usize = 16;
const MAX_TCP_CLIENTS: usize = 512;
/// A client's TCP connection is closed after this long, busy or not, so
/// held connections cannot keep the slots.
const TCP_LIFETIME: Duration = Duration::from_secs(30);
/// Largest UDP message read (EDNS payloads stay well below).
const UDP_BUFFER: usize = 4096;

/// The resolver's bound sockets, before it serves.
pub struct ResolverSockets {
    udp4: std::net::UdpSocket,
    tcp4: std::net::TcpListener,
    /// `None` when this namespace has no IPv6 loopback.
    v6: Option<(std::net::UdpSocket, std::net::TcpListener)>,
}

fn bind_pair(ip: IpAddr, port: u16) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let udp = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
    let port = udp.local_addr()?.port();
    let tcp = std::net::TcpListener::bind(SocketAddr::new(ip, port))?;
    Ok((udp, tcp))
}

/// Binds UDP and TCP on one free port of `ip` (a few tries: the UDP port
/// the kernel picks may be taken for TCP).
fn bind_free_pair(ip: IpAddr) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let mut last = io::Error::other("no port");
    for _ in 0..16 {
        match bind_pair(ip, 0) {
            Ok(pair) => return Ok(pair),
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// `SO_NETNS_COOKIE` of a socket: which network namespace it lives in, as
/// `bpf_get_netns_cookie` names it.
fn netns_cookie(socket: &impl AsRawFd) -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}

impl ResolverSockets {
    /// Binds the loopback sockets and tells the probes where they are.
    pub fn bind(dns: &DnsEgress) -> io::Result<ResolverSockets> {
        let (udp4, tcp4) = bind_free_pair(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
        let port4 = udp4.local_addr()?.port();
        let v6 = bind_pair(IpAddr::V6(Ipv6Addr::LOCALHOST), port4)
            .or_else(|_| bind_free_pair(IpAddr::V6(Ipv6Addr::LOCALHOST)))
            .ok();
        let port6 = match &v6 {
            Some((udp, _)) => udp.local_addr()?.port(),
            None => 0,
        };
        let cookie = netns_cookie(&udp4)?;
        dns.set_resolver(port4, port6, cookie)
            .map_err(|e| io::Error::other(e.to_string()))?;
        tracing::info!(
            port4,
            port6,
            "DNS resolver for confined processes on 127.0.0.1:{port4}{}",
            if port6 != 0 {
                format!(" and [::1]:{port6}")
            } else {
                " (no IPv6 loopback)".to_owned()
            }
        );
        Ok(ResolverSockets { udp4, tcp4, v6 })
    }

    /// Serves until the runtime stops, expiring learned addresses as it goes.
    pub async fn serve(self, dns: Arc<DnsEgress>) -> io::Result<()> {
        let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut pairs = vec![(self.udp4, self.tcp4)];
        pairs.extend(self.v6);
        let mut tasks = tokio::task::JoinSet::new();
        for (udp, tcp) in pairs {
            udp.set_nonblocking(true)?;
            tcp.set_nonblocking(true)?;
            let udp = Arc::new(UdpSocket::from_std(udp)?);
            let tcp = TcpListener::from_std(tcp)?;
            tasks.spawn(serve_udp(udp, Arc::clone(&dns), Arc::clone(&limit)));
            tasks.spawn(serve_tcp(tcp, Arc::clone(&dns)));
        }
        tasks.spawn(expire_periodically(Arc::clone(&dns)));
        while let Some(result) = tasks.join_next().await {
            if let Ok(Err(error)) = result {
                tracing::error!("DNS resolver stopped: {error}");
                return Err(error);
            }
        }
        Ok(())
    }
}

async fn expire_periodically(dns: Arc<DnsEgress>) -> io::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if let Err(error) = dns.expire() {
            // The probe checks expiry itself: a failed removal only keeps
            // a dead entry in the map.
            tracing::warn!("could not remove expired learned addresses: {error}");
        }
    }
}

/// Queries in flight per client socket.
type InFlight = Arc<std::sync::Mutex<HashMap<SocketAddr, usize>>>;

/// Takes one of `client`'s in-flight slots, unless it holds its share.
fn take_slot(in_flight: &InFlight, client: SocketAddr) -> bool {
    let mut counts = in_flight
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let count = counts.entry(client).or_insert(0);
    if *count >= MAX_IN_FLIGHT_PER_CLIENT {
        return false;
    }
    *count += 1;
    true
}

fn release_slot(in_flight: &InFlight, client: SocketAddr) {
    let mut counts = in_flight
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(count) = counts.get_mut(&client) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&client);
        }
    }
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    dns: Arc<DnsEgress>,
    limit: Arc<Semaphore>,
) -> io::Result<()> {
    let mut buffer = vec![0u8; UDP_BUFFER];
    let in_flight: InFlight = Arc::default();
    loop {
        let (len, client) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            // A client that went away (an ICMP error for an earlier reply)
            // is no reason to stop serving the others.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                ) =>
            {
                continue;
            }
            // Anything else (out of memory): wait instead of spinning, and
            // go on serving.
            Err(error) => {
                tracing::warn!("DNS resolver: receiving a query: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Saturated (in all, or this client): dropped, the client retries.
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            continue;
        };
        if !take_slot(&in_flight, client) {
            continue;
        }
        let query = buffer[..len].to_vec();
        let (socket, dns, in_flight) = (
            Arc::clone(&socket),
            Arc::clone(&dns),
            Arc::clone(&in_flight),
        );
        tokio::spawn(async move {
            if let Some(reply) = answer(&dns, &query, Transport::Udp).await {
                let _ = socket.send_to(&reply, client).await;
            }
            release_slot(&in_flight, client);
            drop(permit);
        });
    }
}

/// Serves TCP clients. When all slots are taken, the oldest connection is
/// closed for the new one: a process holding connections open cannot lock
/// the others out, only make them reconnect.
async fn serve_tcp(listener: TcpListener, dns: Arc<DnsEgress>) -> io::Result<()> {
    type Open = std::sync::Mutex<VecDeque<(u64, tokio::task::AbortHandle)>>;
    let open: Arc<Open> = Arc::default();
    let mut next_id = 0u64;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of descriptors: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = next_id;
        next_id += 1;
        let (dns, registry) = (Arc::clone(&dns), Arc::clone(&open));
        let task = tokio::spawn(async move {
            let _ = tokio::time::timeout(TCP_LIFETIME, serve_tcp_client(stream, &dns)).await;
            registry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|(open_id, _)| *open_id != id);
        });
        let mut open = open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.push_back((id, task.abort_handle()));
        while open.len() > MAX_TCP_CLIENTS {
            if let Some((_, oldest)) = open.pop_front() {
                oldest.abort();
            }
        }
    }
}

async fn serve_tcp_client(mut stream: TcpStream, dns: &DnsEgress) -> io::Result<()> {
    loop {
        let query = match tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await {
            Ok(Ok(query)) => query,
            _ => return Ok(()),
        };
        let Some(reply) = answer(dns, &query, Transport::Tcp).await else {
            return Ok(());
        };
        write_framed(&mut stream, &reply).await?;
    }
}

async fn read_framed(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| io::Error::other("message too long"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// The reply to one client message, or `None` to stay silent (nothing
/// that looks like a DNS header).
async fn answer(dns: &DnsEgress, bytes: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let query = match message::parse_query(bytes) {
        Ok(query) => query,
        Err(rejection) => return message::reply(bytes, rejection.rcode),
    };
    let verdict = dns.judge(&query.name, &query.type_name());
    if verdict == Verdict::Refused {
        return message::reply(bytes, RCODE::Refused);
    }
    let Some((response, sent_id)) = forward(dns, bytes, transport).await else {
        return message::reply(bytes, RCODE::ServerFailure);
    };
    let Some(parsed) = message::parse_answer(&response, sent_id, &query) else {
        return message::reply(bytes, RCODE::ServerFailure);
    };
    if let Verdict::Allowed(rules) = verdict {
        match dns.learn(&rules, &parsed.addresses) {
            Ok(0) if !parsed.addresses.is_empty() => {
                // The rule went away while the query was out.
                return message::reply(bytes, RCODE::Refused);
            }
            Ok(_) => log_answer(&query, &parsed),
            // Reported (rate-limited) where the room ran out.
            Err(super::LearnError::RuleFull { .. } | super::LearnError::MapFull { .. }) => {
                return message::reply(bytes, RCODE::ServerFailure);
            }
            Err(error) => {
                tracing::error!(
                    name = %query.name,
                    "could not allow the addresses of {}: {error}; answered SERVFAIL",
                    query.name
                );
                return message::reply(bytes, RCODE::ServerFailure);
            }
        }
    }
    Some(message::with_id(&response, query.id))
}

fn log_answer(query: &Query, answer: &message::Answer) {
    if answer.addresses.is_empty() {
        return;
    }
    let addresses: Vec<String> = answer
        .addresses
        .iter()
        .map(|(addr, ttl)| format!("{addr} (ttl {ttl}s)"))
        .collect();
    tracing::debug!(
        name = %query.name,
        "allowed {} for {}{}",
        addresses.join(", "),
        query.name,
        if answer.aliases.is_empty() {
            String::new()
        } else {
            format!(" via {}", answer.aliases.join(" -> "))
        }
    );
}

fn random_id() -> u16 {
    let mut bytes = [0u8; 2];
    // SAFETY: getrandom writes at most the two bytes it is given.
    let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 2, 0) };
    if filled != 2 {
        // Never expected; the answer is still matched by its question.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return nanos as u16;
    }
    u16::from_ne_bytes(bytes)
}

/// Sends `query` (under a fresh ID) to each upstream in turn; returns the
/// first response and the ID it must carry.
async fn forward(dns: &DnsEgress, query: &[u8], transport: Transport) -> Option<(Vec<u8>, u16)> {
    for upstream in dns.upstreams() {
        let id = random_id();
        let outgoing = message::with_id(query, id);
        let response = match transport {
            Transport::Udp => {
                tokio::time::timeout(UDP_TIMEOUT, ask_udp(upstream, &outgoing, id)).await
            }
            Transport::Tcp => tokio::time::timeout(TCP_TIMEOUT, ask_tcp(upstream, &outgoing)).await,
        };
        match response {
            Ok(Ok(response)) => return Some((response, id)),
            Ok(Err(error)) => tracing::debug!("upstream {upstream}: {error}"),
            Err(_) => tracing::debug!("upstream {upstream}: no answer in time"),
        }
    }
    None
}

async fn ask_udp(upstream: SocketAddr, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buffer = vec![0u8; 65535];
    loop {
        let len = socket.recv(&mut buffer).await?;
        // Anything else on this port is not the answer (checked in full by
        // the caller); keep waiting for the one that is.
        if message::message_id(&buffer[..len]) == Some(id) {
            buffer.truncate(len);
            return Ok(buffer);
        }
    }
}

async fn ask_tcp(upstream: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    write_framed(&mut stream, query).await?;
    read_framed(&mut stream).await
}
