//! The daemon side of the control socket.
//!
//! Why this exists: it turns frames from many clients into `Command`s for
//! the one reconcile loop, without letting any client hold up another:
//! every connection is its own task, every read and write has a timeout, a
//! malformed or oversize frame ends only that connection, and `status` is
//! served from the published snapshot without queueing behind a reload.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::timeout;

use super::CONTROL_GROUP;
use super::frame::{FrameDecoder, FrameError, MAX_FRAME, read_frame, write_frame};
use super::peer::{Peer, group_id, peer_pidfd};
use super::wire::{
    PROTOCOL_VERSION, Request, Response, StatusReport, WireEvent, WireRuleSet, delta_from_wire,
};
use crate::events::DenialCounter;
use crate::loader::kernel::MarkReader;
use crate::reconcile::Command;

/// How long a client may take to send one whole frame.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may stay silent between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a refused client may take to send its hello before it is told.
const REFUSAL_GRACE: Duration = Duration::from_millis(500);
/// How long the reconcile loop may take to answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections served at once, at most; more are told so and closed.
const MAX_CONNECTIONS: usize = 256;
/// Descriptors always left free for reloads, confines and the probes'
/// readers, whatever the clients do: a connection is served only while
/// this many (and the refusals' own) stay below the open-file limit.
const DESCRIPTOR_RESERVE: u64 = 64;
/// Refusals waiting for a hello at once; beyond this, excess connections
/// are closed without a reason rather than hold more descriptors.
const MAX_REFUSING: usize = 32;

/// Whether one more connection may be served: fewer than
/// `MAX_CONNECTIONS`, and the descriptors open now leave the reserve free
/// under the limit in force (an operator may lower it on a running daemon
/// with `prlimit`, and confined processes hold descriptors too).
fn room_for_a_connection(serving: usize) -> bool {
    if serving >= MAX_CONNECTIONS {
        return false;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return false;
    }
    // Unreadable (out of descriptors itself) means no room.
    let Ok(open) = std::fs::read_dir("/proc/self/fd").map(Iterator::count) else {
        return false;
    };
    open as u64 + DESCRIPTOR_RESERVE + MAX_REFUSING as u64 <= limit.rlim_cur
}

/// What every connection needs.
pub struct ServerContext {
    pub commands: mpsc::UnboundedSender<Command>,
    pub status: Arc<ArcSwap<StatusReport>>,
    pub events: broadcast::Sender<WireEvent>,
    pub group: Option<u32>,
    /// Tells whether a peer is confined (it may not use the socket).
    pub marks: MarkReader,
    /// Connections being served now.
    pub connections: AtomicUsize,
    /// Denials the event reader has counted.
    pub denials: Arc<DenialCounter>,
    /// DNS-aware egress, for the learned-address count.
    pub dns: Arc<crate::dns::DnsEgress>,
}

/// Counts one served (or refused) connection for as long as it lives.
struct Served<'a>(&'a AtomicUsize);

impl Drop for Served<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another daemon is already listening on {0}")]
    InUse(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// The right to serve on one socket path, held for the daemon's life: an
/// exclusive lock on `<socket>.lock`, taken before anything else is created,
/// so a second daemon pointed at the same path is refused without touching
/// the first one's socket or creating pins of its own.
pub struct SocketClaim {
    path: PathBuf,
    _lock: std::fs::File,
    /// (device, inode) of the socket this daemon bound, once bound.
    bound: Option<(u64, u64)>,
}

impl SocketClaim {
    /// Takes the claim, or says another daemon has the path.
    pub fn take(path: &Path) -> Result<SocketClaim, BindError> {
        let io = |context: String| move |source| BindError::Io { context, source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(format!("opening {}", Path::new(&lock_path).display())))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(BindError::InUse(path.display().to_string()));
        }
        // A daemon that predates the lock file still answers on the socket.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(path.display().to_string()));
        }
        Ok(SocketClaim {
            path: path.to_owned(),
            _lock: lock,
            bound: None,
        })
    }

    /// Binds the socket (a leftover file is stale: nobody holds the claim),
    /// sets mode 0660 and group `aa-policy` when that group exists.
    pub fn bind(&mut self) -> Result<(UnixListener, Option<u32>), BindError> {
        let path = self.path.clone();
        let io = |context: String| move |source| BindError::Io { context, source };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("removing stale socket {}", path.display()))(e)),
        }
        let listener =
            UnixListener::bind(&path).map_err(io(format!("binding {}", path.display())))?;
        let metadata = std::fs::metadata(&path).map_err(io(format!("stat {}", path.display())))?;
        self.bound = Some((metadata.dev(), metadata.ino()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
            .map_err(io(format!("chmod 0660 {}", path.display())))?;
        let group = group_id(CONTROL_GROUP);
        if let Some(gid) = group {
            std::os::unix::fs::chown(&path, Some(0), Some(gid))
                .map_err(io(format!("chown root:{CONTROL_GROUP} {}", path.display())))?;
        }
        Ok((listener, group))
    }
}

impl Drop for SocketClaim {
    /// Removes the socket, if it is still the one this daemon bound.
    fn drop(&mut self) {
        let ours =
            std::fs::metadata(&self.path).is_ok_and(|m| Some((m.dev(), m.ino())) == self.bound);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Accepts connections forever.
pub async fn serve(listener: UnixListener, context: Arc<ServerContext>) {
    let refusing = Arc::new(AtomicUsize::new(0));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let context = Arc::clone(&context);
                let serving = context.connections.fetch_add(1, Ordering::SeqCst);
                if !room_for_a_connection(serving) {
                    context.connections.fetch_sub(1, Ordering::SeqCst);
                    if refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSING {
                        refusing.fetch_sub(1, Ordering::SeqCst);
                        continue;
                    }
                    let refusing = Arc::clone(&refusing);
                    tokio::spawn(async move {
                        let _refusal = Served(&refusing);
                        refuse_busy(stream, serving).await;
                    });
                    continue;
                }
                tokio::spawn(async move {
                    let _served = Served(&context.connections);
                    if let Err(error) = handle(stream, &context).await {
                        tracing::debug!("control connection ended: {error}");
                    }
                });
            }
            Err(error) => {
                tracing::warn!("accepting a control connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Tells a client over the connection limit why, then closes.
async fn refuse_busy(stream: UnixStream, serving: usize) {
    let (mut reader, mut writer) = stream.into_split();
    let mut decoder = FrameDecoder::default();
    // Read its hello first, so it sees the reason rather than EPIPE.
    let _ = timeout(REFUSAL_GRACE, read_frame(&mut reader, &mut decoder)).await;
    let message = format!(
        "the daemon is serving {serving} connections, as many as its descriptors allow; try again shortly"
    );
    let _ = send(&mut writer, &error(message)).await;
}

async fn send(
    writer: &mut (impl AsyncWriteExt + Unpin),
    response: &Response,
) -> Result<(), String> {
    let mut bytes = serde_json::to_vec(response).map_err(|e| e.to_string())?;
    if bytes.len() > MAX_FRAME {
        // Say so rather than close: the client learns why it got nothing.
        let message = format!(
            "the response is {} bytes, over the {MAX_FRAME}-byte frame limit (the rule set in force is too large to send in one frame)",
            bytes.len()
        );
        bytes = serde_json::to_vec(&error(message)).map_err(|e| e.to_string())?;
    }
    match timeout(REQUEST_TIMEOUT, write_frame(writer, &bytes)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("client did not read its response in time".into()),
    }
}

fn error(message: impl Into<String>) -> Response {
    Response::Error {
        message: message.into(),
    }
}

async fn ask<T>(
    context: &ServerContext,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, String> {
    let (reply, answer) = oneshot::channel();
    context
        .commands
        .send(make(reply))
        .map_err(|_| "the daemon is shutting down".to_owned())?;
    match timeout(COMMAND_TIMEOUT, answer).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err("the daemon is shutting down".into()),
        Err(_) => Err("the daemon did not answer in time".into()),
    }
}

enum ReadError {
    Timeout,
    Frame(FrameError),
}

/// Reads one request frame: the connection may stay silent for `idle`, but
/// once a frame's first byte has arrived the whole frame must follow within
/// `REQUEST_TIMEOUT`, so a half-sent frame cannot hold a connection long.
async fn read_request(
    reader: &mut (impl AsyncRead + Unpin),
    decoder: &mut FrameDecoder,
    idle: Duration,
) -> Result<Option<Vec<u8>>, ReadError> {
    if decoder.pending() == 0 {
        let mut chunk = [0u8; 8192];
        match timeout(idle, reader.read(&mut chunk)).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(Err(e)) => return Err(ReadError::Frame(FrameError::Io(e))),
            Ok(Ok(0)) => return Ok(None),
            Ok(Ok(n)) => decoder.push(&chunk[..n]),
        }
    }
    match timeout(REQUEST_TIMEOUT, read_frame(reader, decoder)).await {
        Err(_) => Err(ReadError::Timeout),
        Ok(result) => result.map_err(ReadError::Frame),
    }
}

const CONFINED_PEER: &str = "permission denied: a confined process (or one that cannot be checked) may not use the control socket";

/// Whether the peer behind `pidfd` is confined; fails closed (a peer that
/// cannot be told apart counts as confined).
/// Whether the peer must be treated as confined: it is, or it cannot be
/// checked — no pidfd, or the process that connected has exited. A
/// socket outlives the process that connected it, and the pidfd of a
/// reaped process finds no mark; a confined process could otherwise have
/// a child connect, reap it, and speak on the child's socket unchecked.
fn peer_confined(pidfd: Option<&OwnedFd>, context: &ServerContext) -> bool {
    pidfd.is_none_or(|pidfd| context.marks.is_marked_or_unknown(pidfd))
}

/// Whether `peer` may confine or release `pid`: the number must mean the
/// same process to both (one PID namespace), and the process must be one
/// the peer may manage.
fn peer_may_act_on(peer: &Peer, pidfd: Option<&OwnedFd>, pid: u32) -> Result<(), String> {
    let pidfd = pidfd.ok_or("refused: the client's process cannot be identified")?;
    super::peer::pid_namespace_is_ours(pidfd)?;
    peer.may_manage(pid)
}

async fn handle(stream: UnixStream, context: &ServerContext) -> Result<(), String> {
    let peer = Peer::of(&stream).map_err(|e| format!("reading peer credentials: {e}"))?;
    // Held for the connection's life: the process may be confined after it
    // connected, so it is checked again at every request.
    let pidfd = peer_pidfd(&stream, &peer).ok();
    let refused = if !peer.authorized(context.group) {
        Some(format!(
            "permission denied: uid {} is neither root nor a member of group {CONTROL_GROUP}",
            peer.uid
        ))
    } else if peer_confined(pidfd.as_ref(), context) {
        Some(CONFINED_PEER.to_owned())
    } else {
        None
    };
    let (mut reader, mut writer) = stream.into_split();
    let mut decoder = FrameDecoder::default();
    if let Some(message) = refused {
        tracing::warn!(
            uid = peer.uid,
            pid = peer.pid,
            "refused a control connection from uid {} (pid {:?}): {message}",
            peer.uid,
            peer.pid
        );
        // Take the client's first frame before answering: a client whose
        // hello arrives after we closed would see EPIPE, not the reason.
        let _ = timeout(REFUSAL_GRACE, read_frame(&mut reader, &mut decoder)).await;
        return send(&mut writer, &error(message)).await;
    }
    let mut first = true;
    loop {
        let idle = if first { REQUEST_TIMEOUT } else { IDLE_TIMEOUT };
        let frame = match read_request(&mut reader, &mut decoder, idle).await {
            Err(ReadError::Timeout) => {
                return send(&mut writer, &error("timed out waiting for a request")).await;
            }
            Err(ReadError::Frame(e)) => {
                return send(&mut writer, &error(format!("bad frame: {e}"))).await;
            }
            Ok(None) => return Ok(()),
            Ok(Some(frame)) => frame,
        };
        let request: Request = match serde_json::from_slice(&frame) {
            Ok(request) => request,
            Err(e) => return send(&mut writer, &error(format!("invalid request: {e}"))).await,
        };
        if first {
            first = false;
            match request {
                Request::Hello { version } if version == PROTOCOL_VERSION => {
                    let hello = Response::Hello {
                        version: PROTOCOL_VERSION,
                        daemon: env!("CARGO_PKG_VERSION").to_owned(),
                    };
                    send(&mut writer, &hello).await?;
                    continue;
                }
                Request::Hello { version } => {
                    let message = format!(
                        "protocol version {version} is not supported (this daemon speaks {PROTOCOL_VERSION})"
                    );
                    return send(&mut writer, &error(message)).await;
                }
                _ => return send(&mut writer, &error("the first request must be hello")).await,
            }
        }
        if peer_confined(pidfd.as_ref(), context) {
            tracing::warn!(
                pid = peer.pid,
                "refused a request from a process confined after it connected"
            );
            return send(&mut writer, &error(CONFINED_PEER)).await;
        }
        let response = match request {
            Request::Hello { .. } => error("hello was already done"),
            Request::Status => {
                let mut report = StatusReport::clone(&context.status.load());
                report.denials = context.denials.snapshot();
                report.learned_addresses = context.dns.learned() as u64;
                (report.dns_map_writes, report.dns_answers) = context.dns.counters();
                Response::Status(Box::new(report))
            }
            Request::Confine { pid } => match peer_may_act_on(&peer, pidfd.as_ref(), pid) {
                Err(e) => error(e),
                Ok(()) => match ask(context, |reply| Command::Confine { pid, reply }).await {
                    Ok(Ok(())) => Response::Done,
                    Ok(Err(e)) | Err(e) => error(e),
                },
            },
            Request::Release { pid } => match peer_may_act_on(&peer, pidfd.as_ref(), pid) {
                Err(e) => error(e),
                Ok(()) => match ask(context, |reply| Command::Release { pid, reply }).await {
                    Ok(Ok(())) => Response::Done,
                    Ok(Err(e)) | Err(e) => error(e),
                },
            },
            Request::Applied => match ask(context, |reply| Command::Applied { reply }).await {
                Ok(Ok((generation, rules))) => Response::Applied {
                    generation,
                    rules: WireRuleSet::from(&rules),
                },
                Ok(Err(e)) | Err(e) => error(e),
            },
            Request::ApplyDelta {
                ops,
                source,
                base_generation,
            } => match delta_from_wire(&ops) {
                Err(e) => error(format!("invalid delta: {e}")),
                Ok(delta) => match ask(context, |reply| Command::ApplyRemote {
                    delta,
                    source,
                    base_generation,
                    reply,
                })
                .await
                {
                    Ok(Ok(record)) => Response::Reload(record),
                    Ok(Err(e)) | Err(e) => error(e),
                },
            },
            Request::Subscribe => {
                send(&mut writer, &Response::Done).await?;
                return stream_events(&mut writer, context.events.subscribe()).await;
            }
        };
        send(&mut writer, &response).await?;
    }
}

async fn stream_events(
    writer: &mut (impl AsyncWriteExt + Unpin),
    mut events: broadcast::Receiver<WireEvent>,
) -> Result<(), String> {
    loop {
        match events.recv().await {
            Ok(event) => send(writer, &Response::Event(event)).await?,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                send(
                    writer,
                    &error(format!(
                        "{missed} events were dropped for this slow subscriber"
                    )),
                )
                .await?;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}
