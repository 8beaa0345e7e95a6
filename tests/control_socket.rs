//! The control socket against hostile or broken clients.
//!
//! Why this exists: the socket can confine and release processes and change
//! the policy, and it is shared by every client of one daemon. So it must
//! check who is connecting from the kernel's record of the peer (not from
//! anything the client says), and a client that sends an oversize, truncated,
//! malformed or stalled frame, skips the handshake or speaks another protocol
//! version must be told why and dropped — without making any other client
//! wait and without the daemon panicking. The frame decoder and the request
//! parser are also property-tested on arbitrary input (no kernel, no root).
//!
//! Kernel parts run as root; `AA_REQUIRE_KERNEL=1` turns a skip into a
//! failure.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aa_policyd::control::CONTROL_GROUP;
use aa_policyd::control::client::Client;
use aa_policyd::control::frame::{FrameDecoder, FrameError, MAX_FRAME, encode};
use aa_policyd::control::peer::group_id;
use aa_policyd::control::wire::{PROTOCOL_VERSION, Request, Response};
use proptest::prelude::*;
use proptest::test_runner::Config;
use support::daemon::{Daemon, policy_text};

/// The daemon's first-frame timeout (`server::REQUEST_TIMEOUT`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a raw client waits for any answer before the test fails.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);
/// The slowest status round trip tolerated while others misbehave.
const PROMPT: Duration = Duration::from_secs(1);
/// The unprivileged user of the refusal test (`nobody`).
const NOBODY: u32 = 65534;
/// How often the refused peer tries.
const ATTEMPTS: usize = 50;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A client speaking raw frames, so it can misbehave.
struct Raw {
    stream: UnixStream,
    decoder: FrameDecoder,
}

/// What a raw client read.
#[derive(Debug)]
enum Answer {
    Response(Response),
    Closed,
}

impl Raw {
    fn connect(socket: &Path) -> Raw {
        let stream = UnixStream::connect(socket).expect("connect a raw client");
        stream
            .set_read_timeout(Some(ANSWER_LIMIT))
            .expect("set read timeout");
        stream
            .set_write_timeout(Some(ANSWER_LIMIT))
            .expect("set write timeout");
        Raw {
            stream,
            decoder: FrameDecoder::default(),
        }
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send raw bytes");
    }

    fn send(&mut self, request: &Request) {
        let json = serde_json::to_vec(request).expect("serialize request");
        self.send_bytes(&encode(&json));
    }

    /// The next response, or `Closed` when the daemon hung up (EOF, or
    /// ECONNRESET when it closed with bytes of ours unread).
    fn read(&mut self) -> Answer {
        let mut chunk = [0u8; 8192];
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    let response = serde_json::from_slice(&frame).unwrap_or_else(|e| {
                        panic!(
                            "the daemon sent a frame that is not a response ({e}): {:?}",
                            String::from_utf8_lossy(&frame)
                        )
                    });
                    return Answer::Response(response);
                }
                Ok(None) => {}
                Err(e) => panic!("the daemon sent a bad frame: {e}"),
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    assert_eq!(
                        self.decoder.pending(),
                        0,
                        "the daemon closed in the middle of a response frame"
                    );
                    return Answer::Closed;
                }
                Ok(n) => self.decoder.push(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Answer::Closed,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("the daemon neither answered nor hung up within {ANSWER_LIMIT:?}")
                }
                Err(e) => panic!("reading from the daemon: {e}"),
            }
        }
    }

    fn hello(&mut self) {
        self.send(&Request::Hello {
            version: PROTOCOL_VERSION,
        });
        match self.read() {
            Answer::Response(Response::Hello { version, .. }) => {
                assert_eq!(version, PROTOCOL_VERSION)
            }
            other => panic!("expected a hello reply, got {other:?}"),
        }
    }

    /// Reads one error response and returns its message.
    fn error(&mut self) -> String {
        match self.read() {
            Answer::Response(Response::Error { message }) => message,
            other => panic!("expected an error response, got {other:?}"),
        }
    }

    fn assert_closed(&mut self, case: &str) {
        match self.read() {
            Answer::Closed => {}
            Answer::Response(response) => {
                panic!("{case}: expected the connection to be closed, got {response:?}")
            }
        }
    }
}

/// A well-behaved client asking for status in a loop on one connection,
/// timing every round trip, until stopped (also when the test panics).
struct Pinger {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Pings>>,
}

/// What the pinger saw: round trips, and the error that stopped it early.
type Pings = (Vec<Duration>, Option<String>);

impl Pinger {
    fn start(socket: PathBuf) -> Pinger {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut round_trips = Vec::new();
            let mut client = match Client::connect(&socket) {
                Ok(client) => client,
                Err(e) => return (round_trips, Some(format!("connect: {e}"))),
            };
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                match client.request(&Request::Status) {
                    Ok(Response::Status(_)) => round_trips.push(started.elapsed()),
                    Ok(other) => return (round_trips, Some(format!("unexpected {other:?}"))),
                    Err(e) => return (round_trips, Some(e.to_string())),
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (round_trips, None)
        });
        Pinger {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the loop and asserts every round trip was answered promptly.
    fn finish(mut self, at_least: usize) {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("not finished yet");
        let (mut round_trips, error) = thread.join().expect("pinger thread panicked");
        assert_eq!(error, None, "the well-behaved client failed");
        round_trips.sort();
        let slowest = round_trips.last().copied().unwrap_or_default();
        eprintln!(
            "status round trips: {} answered, median {:?}, slowest {:?}",
            round_trips.len(),
            round_trips
                .get(round_trips.len() / 2)
                .copied()
                .unwrap_or_default(),
            slowest
        );
        assert!(
            round_trips.len() >= at_least,
            "only {} status answers while others misbehaved (wanted {at_least})",
            round_trips.len()
        );
        assert!(
            slowest < PROMPT,
            "a status round trip took {slowest:?} while others misbehaved"
        );
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn assert_serves_and_never_panicked(daemon: &Daemon) {
    let started = Instant::now();
    let status = daemon.status();
    assert!(
        started.elapsed() < PROMPT,
        "a fresh connection's status took {:?}",
        started.elapsed()
    );
    assert_eq!(status.generation, 1);
    let log = daemon.log();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

// ---------------------------------------------------------------------------
// Peer credentials
// ---------------------------------------------------------------------------

#[test]
fn a_peer_that_is_neither_root_nor_in_the_group_is_refused_by_its_credentials() {
    let Some(daemon) = Daemon::start("peer_refused", &policy_text("kcmp"), &[]) else {
        return;
    };
    assert_ne!(
        group_id(CONTROL_GROUP),
        Some(NOBODY),
        "group {CONTROL_GROUP} must not be uid {NOBODY}'s group for this test"
    );
    let meta = std::fs::metadata(&daemon.socket).expect("stat the socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "socket file mode");
    assert_eq!(meta.uid(), 0, "socket owner");

    // Past the file-mode layer, so that the credential check is what refuses.
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666))
        .expect("chmod 0666 the socket");
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o711))
        .expect("let uid 65534 reach the socket's directory");

    // The refusal races the client's hello: the daemon sends it and closes
    // as soon as it has read the credentials. A hello written after that
    // close fails with EPIPE, although the refusal is already readable in
    // the client's receive buffer; the client must still report the reason.
    // Ask several times so a client that loses it then is caught.
    let expected = format!(
        "permission denied: uid {NOBODY} is neither root nor a member of group {CONTROL_GROUP}"
    );
    let mut failures = Vec::new();
    for _ in 0..ATTEMPTS {
        let output = Command::new("setpriv")
            .arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .arg(env!("CARGO_BIN_EXE_aa-policyd"))
            .arg("status")
            .arg("--socket")
            .arg(&daemon.socket)
            .env_remove("JOURNAL_STREAM")
            .output()
            .expect("run setpriv");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.stdout.is_empty(), "a refused peer got a status");
        if output.status.code() != Some(1) || !stderr.contains(&expected) {
            failures.push(format!(
                "exit {:?}: {}",
                output.status.code(),
                stderr.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ATTEMPTS} refused `status` calls did not say why:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        daemon.log().contains("refused a control connection"),
        "the daemon logs the refusal"
    );
    assert_serves_and_never_panicked(&daemon);
}

/// A process of ours that a request from elsewhere must not touch.
fn bystander() -> support::Plain {
    support::Plain(
        Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("start a bystander"),
    )
}

/// A client in a nested PID namespace (a container with the socket mounted
/// in) names processes by numbers that mean other processes to the daemon:
/// asked from there to confine a host process's number, the daemon would
/// confine that bystander. Refused, and nothing is confined.
#[test]
fn confine_and_release_from_another_pid_namespace_are_refused() {
    let Some(daemon) = Daemon::start("pid_namespace", &policy_text("kcmp"), &[]) else {
        return;
    };
    let bystander = bystander();
    let host_pid = bystander.0.id();
    for verb in ["confine", "release"] {
        let output = Command::new("unshare")
            .args(["--fork", "--pid", "--mount-proc"])
            .arg(env!("CARGO_BIN_EXE_aa-policyd"))
            .arg(verb)
            .arg("--socket")
            .arg(&daemon.socket)
            .arg(host_pid.to_string())
            .env_remove("JOURNAL_STREAM")
            .output()
            .expect("run unshare");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{verb}: {stderr}");
        assert!(stderr.contains("another PID namespace"), "{verb}: {stderr}");
    }
    assert!(
        !daemon.status().confined.contains(&host_pid),
        "the bystander was confined"
    );
    // From the daemon's own namespace the same request works.
    let output = Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .args(["confine", "--socket"])
        .arg(&daemon.socket)
        .arg(host_pid.to_string())
        .output()
        .expect("confine from the host");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(daemon.status().confined.contains(&host_pid));
    assert_serves_and_never_panicked(&daemon);
}

/// Speaks to the socket on a connection made by a child that then exits
/// and is reaped: the daemon's record of the peer then names a dead
/// process, which has no mark and no PID namespace left to show. Prints
/// each answer (or why there was none) on a line.
const REAPED_CONNECTOR: &str = r#"
import json, os, socket, struct, sys, time
path, verb, pid, tries = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def frame(s, obj):
    body = json.dumps(obj).encode()
    s.sendall(struct.pack(">I", len(body)) + body)
def answer(s):
    head = s.recv(4, socket.MSG_WAITALL)
    body = s.recv(struct.unpack(">I", head)[0], socket.MSG_WAITALL)
    return json.loads(body)
for _ in range(tries):
    s = socket.socket(socket.AF_UNIX)
    child = os.fork()
    if child == 0:
        s.connect(path)
        os._exit(0)
    os.waitpid(child, 0)
    time.sleep(0.05)
    try:
        frame(s, {"request": "hello", "version": 1})
        answer(s)
        frame(s, {"request": verb, "pid": pid if pid else os.getpid()})
        print(answer(s).get("response"), flush=True)
    except Exception as e:
        print("no answer:", type(e).__name__, flush=True)
    s.close()
"#;

/// A socket outlives the process that connected it. From a nested PID
/// namespace, a connector that exits before the request used to pass the
/// namespace check (its pidfd reads `NSpid: -1`) and confined a host
/// process by its number.
#[test]
fn a_connection_whose_connector_was_reaped_cannot_confine_across_namespaces() {
    let Some(daemon) = Daemon::start("reaped_connector", &policy_text("kcmp"), &[]) else {
        return;
    };
    let bystander = bystander();
    let host_pid = bystander.0.id();
    let output = Command::new("unshare")
        .args([
            "--fork",
            "--pid",
            "--mount-proc",
            "python3",
            "-c",
            REAPED_CONNECTOR,
        ])
        .arg(&daemon.socket)
        .args(["confine", &host_pid.to_string(), "5"])
        .output()
        .expect("run the connector");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().count(),
        5,
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!stdout.contains("done"), "{stdout}");
    assert!(
        !daemon.status().confined.contains(&host_pid),
        "the bystander was confined"
    );
    assert_serves_and_never_panicked(&daemon);
}

/// The same trick from inside: a confined process has a child connect,
/// reaps it, and asks on the child's connection to release itself.
#[test]
fn a_confined_process_cannot_release_itself_through_a_reaped_childs_connection() {
    let Some(daemon) = Daemon::start("reaped_self_release", &policy_text("kcmp"), &[]) else {
        return;
    };
    let output = Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .args(["exec", "--socket"])
        .arg(&daemon.socket)
        .args(["--", "python3", "-c", REAPED_CONNECTOR])
        .arg(&daemon.socket)
        .args(["release", "0", "40"])
        .env_remove("JOURNAL_STREAM")
        .output()
        .expect("run the confined connector");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().count(),
        40,
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !stdout.contains("done"),
        "a confined process released itself: {stdout}"
    );
    assert_serves_and_never_panicked(&daemon);
}

// ---------------------------------------------------------------------------
// Misbehaving clients
// ---------------------------------------------------------------------------

#[test]
fn misbehaving_clients_are_told_why_and_dropped_while_others_are_served_promptly() {
    let Some(daemon) = Daemon::start("misbehaving", &policy_text("kcmp"), &[]) else {
        return;
    };
    let pinger = Pinger::start(daemon.socket.clone());

    // A client that sends half of its first frame and then stalls, socket
    // open. Everything below happens while it stalls.
    let mut staller = Raw::connect(&daemon.socket);
    let hello = serde_json::to_vec(&Request::Hello {
        version: PROTOCOL_VERSION,
    })
    .expect("serialize hello");
    let hello_frame = encode(&hello);
    staller.send_bytes(&hello_frame[..hello_frame.len() / 2]);
    let stalled_at = Instant::now();

    // An oversize length header after the handshake.
    let mut oversize = Raw::connect(&daemon.socket);
    oversize.hello();
    oversize.send_bytes(&(MAX_FRAME as u32 + 1).to_be_bytes());
    let message = oversize.error();
    assert!(
        message.contains(&format!("{} bytes", MAX_FRAME + 1))
            && message.contains(&format!("{MAX_FRAME}-byte limit")),
        "{message}"
    );
    oversize.assert_closed("oversize frame");

    // An oversize length header as the very first frame.
    let mut oversize_first = Raw::connect(&daemon.socket);
    oversize_first.send_bytes(&u32::MAX.to_be_bytes());
    let message = oversize_first.error();
    assert!(
        message.contains(&format!("{MAX_FRAME}-byte limit")),
        "{message}"
    );
    oversize_first.assert_closed("oversize first frame");

    // A truncated frame: the header promises 100 bytes, 10 come, then EOF.
    let mut truncated = Raw::connect(&daemon.socket);
    truncated.hello();
    let mut bytes = 100u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(b"{\"request\"");
    truncated.send_bytes(&bytes);
    truncated
        .stream
        .shutdown(Shutdown::Write)
        .expect("shut down the write half");
    let message = truncated.error();
    assert!(
        message.contains("connection closed in the middle of a frame"),
        "{message}"
    );
    truncated.assert_closed("truncated frame");

    // Garbage JSON in a well-formed frame.
    let mut garbage = Raw::connect(&daemon.socket);
    garbage.hello();
    garbage.send_bytes(&encode(b"{\"request\": status, \xff\xfe"));
    let message = garbage.error();
    assert!(message.starts_with("invalid request"), "{message}");
    garbage.assert_closed("garbage JSON");

    // Well-formed JSON that is no request.
    let mut unknown = Raw::connect(&daemon.socket);
    unknown.hello();
    unknown.send_bytes(&encode(br#"{"request":"format_disk"}"#));
    let message = unknown.error();
    assert!(message.starts_with("invalid request"), "{message}");
    unknown.assert_closed("unknown request");

    // Garbage as the very first frame.
    let mut garbage_first = Raw::connect(&daemon.socket);
    garbage_first.send_bytes(&encode(b"GET / HTTP/1.1\r\n\r\n"));
    let message = garbage_first.error();
    assert!(message.starts_with("invalid request"), "{message}");
    garbage_first.assert_closed("garbage first frame");

    // Skipping the handshake.
    let mut rude = Raw::connect(&daemon.socket);
    rude.send(&Request::Status);
    assert_eq!(rude.error(), "the first request must be hello");
    rude.assert_closed("no hello");

    // Another protocol version.
    let mut future = Raw::connect(&daemon.socket);
    future.send(&Request::Hello {
        version: PROTOCOL_VERSION + 1,
    });
    let message = future.error();
    assert!(
        message.contains(&format!(
            "protocol version {} is not supported",
            PROTOCOL_VERSION + 1
        )) && message.contains(&format!("speaks {PROTOCOL_VERSION}")),
        "{message}"
    );
    future.assert_closed("wrong version");

    // A second hello on an established connection is refused, not fatal.
    let mut twice = Raw::connect(&daemon.socket);
    twice.hello();
    twice.send(&Request::Hello {
        version: PROTOCOL_VERSION,
    });
    assert_eq!(twice.error(), "hello was already done");
    twice.send(&Request::Status);
    assert!(
        matches!(twice.read(), Answer::Response(Response::Status(_))),
        "the connection survives a second hello"
    );

    // Still stalled: a new client is served at once.
    assert!(
        stalled_at.elapsed() < REQUEST_TIMEOUT - Duration::from_millis(500),
        "the cases above took too long to overlap the stall ({:?})",
        stalled_at.elapsed()
    );
    assert_serves_and_never_panicked(&daemon);

    // The staller is told it timed out, after REQUEST_TIMEOUT, and dropped.
    let message = staller.error();
    let waited = stalled_at.elapsed();
    assert_eq!(message, "timed out waiting for a request");
    assert!(
        waited >= REQUEST_TIMEOUT - Duration::from_millis(100)
            && waited < REQUEST_TIMEOUT + Duration::from_secs(2),
        "the staller was answered after {waited:?}"
    );
    staller.assert_closed("stalled half frame");
    eprintln!("the staller was answered and dropped after {waited:?}");

    // About 5 s of status pings at ≤ 10 ms intervals.
    pinger.finish(50);
    assert_serves_and_never_panicked(&daemon);
}

/// `REQUEST_TIMEOUT` is documented as "how long a client may take to send
/// one whole frame"; `IDLE_TIMEOUT` as how long a connection "may stay silent
/// between requests". A half frame after the handshake is not silence
/// between requests, so it should be cut off after REQUEST_TIMEOUT too.
#[test]
fn a_half_frame_after_the_handshake_is_dropped_after_the_request_timeout() {
    let Some(daemon) = Daemon::start("stall_after_hello", &policy_text("kcmp"), &[]) else {
        return;
    };
    let pinger = Pinger::start(daemon.socket.clone());
    let mut staller = Raw::connect(&daemon.socket);
    staller.hello();
    let status = encode(&serde_json::to_vec(&Request::Status).expect("serialize status"));
    staller.send_bytes(&status[..status.len() / 2]);
    let stalled_at = Instant::now();

    let message = staller.error();
    let waited = stalled_at.elapsed();
    assert_eq!(message, "timed out waiting for a request");
    assert!(
        waited < REQUEST_TIMEOUT + Duration::from_secs(2),
        "a half frame was tolerated for {waited:?}"
    );
    staller.assert_closed("stalled half frame after hello");
    pinger.finish(50);
    assert_serves_and_never_panicked(&daemon);
}

// ---------------------------------------------------------------------------
// Properties of the frame decoder and the request parser (no kernel)
// ---------------------------------------------------------------------------

fn config() -> Config {
    Config {
        cases: 1000,
        ..Config::default()
    }
}

/// A length header that is small, at the limit, just over it, or anything.
fn header() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => 0u32..200,
        1 => Just(MAX_FRAME as u32),
        1 => Just(MAX_FRAME as u32 + 1),
        1 => (MAX_FRAME as u32 - 8)..=(MAX_FRAME as u32 + 8),
        2 => any::<u32>(),
    ]
    .prop_map(|len| len.to_be_bytes().to_vec())
}

/// Arbitrary bytes, or arbitrary bytes interleaved with plausible headers
/// (pure noise almost always starts with an oversize length).
fn hostile_stream() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        prop::collection::vec(
            prop_oneof![header(), prop::collection::vec(any::<u8>(), 0..300)],
            0..12
        )
        .prop_map(|parts| parts.concat()),
    ]
}

/// Split points for feeding `bytes` in chunks (may be empty chunks).
fn chunks<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in cuts {
        pieces.push(&bytes[start..cut]);
        start = cut;
    }
    pieces.push(&bytes[start..]);
    pieces
}

/// One of `names`, or a few random identifier characters.
fn name_or_noise(names: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(names).prop_map(str::to_owned),
        1 => "[a-z_]{0,12}",
    ]
    .boxed()
}

/// A JSON value a request field might (not) accept.
fn field_value() -> BoxedStrategy<String> {
    prop_oneof![
        prop::sample::select(
            &[
                "null",
                "-1",
                "4294967296",
                "1e400",
                "\"\\ud800\"",
                "[{\"op\":\"set_mode\",\"mode\":\"audit\"}]",
                "[{\"op\":\"set_syscalls\",\"syscalls\":{\"arch\":\"x86_64\",\"numbers\":[9999]}}]",
                "{\"policy_path\":1,\"sha256\":[],\"text\":{}}",
            ][..]
        )
        .prop_map(str::to_owned),
        any::<i64>().prop_map(|n| n.to_string()),
        "\"[^\"\\\\]{0,16}\"",
        (0usize..300).prop_map(|depth| "[".repeat(depth) + &"]".repeat(depth)),
        (0usize..300).prop_map(|depth| "{\"a\":".repeat(depth)),
    ]
    .boxed()
}

/// JSON-ish text: the characters JSON is made of, or an object shaped like a
/// request with plausible and implausible names and values.
fn jsonish() -> impl Strategy<Value = String> {
    const REQUESTS: &[&str] = &[
        "hello",
        "status",
        "confine",
        "release",
        "applied",
        "apply_delta",
        "subscribe",
    ];
    const FIELDS: &[&str] = &["version", "pid", "ops", "source", "op", "request"];
    prop_oneof![
        "[\\{\\}\\[\\]\":,0-9a-z_ .eE+\\\\-]{0,120}",
        (
            name_or_noise(REQUESTS),
            prop::collection::vec((name_or_noise(FIELDS), field_value()), 0..4),
        )
            .prop_map(|(name, fields)| {
                let mut text = format!("{{\"request\":\"{name}\"");
                for (key, value) in fields {
                    text.push_str(&format!(",\"{key}\":{value}"));
                }
                text.push('}');
                text
            }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_decoder_never_panics_nor_yields_a_frame_over_the_limit(
        bytes in hostile_stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut decoder = FrameDecoder::default();
        let mut pushed = 0usize;
        let mut taken = 0usize;
        let mut refused = false;
        for chunk in chunks(&bytes, &cuts) {
            decoder.push(chunk);
            pushed += chunk.len();
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        prop_assert!(!refused, "a frame after a refusal");
                        prop_assert!(frame.len() <= MAX_FRAME);
                        taken += 4 + frame.len();
                    }
                    Ok(None) => break,
                    Err(FrameError::TooLarge(len)) => {
                        prop_assert!(len > MAX_FRAME, "refused a {len}-byte frame");
                        refused = true;
                        break;
                    }
                    Err(other) => prop_assert!(false, "unexpected decoder error {other}"),
                }
            }
            prop_assert_eq!(decoder.pending(), pushed - taken, "bytes were lost or invented");
        }
    }

    #[test]
    fn encoded_payloads_come_back_identical_and_in_order_however_they_are_split(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4096), 0..8),
        cuts in prop::collection::vec(any::<usize>(), 0..24),
    ) {
        let bytes: Vec<u8> = payloads.iter().flat_map(|p| encode(p)).collect();
        let mut decoder = FrameDecoder::default();
        let mut decoded = Vec::new();
        for chunk in chunks(&bytes, &cuts) {
            decoder.push(chunk);
            while let Some(frame) = decoder.next_frame().expect("frames under the limit") {
                decoded.push(frame);
            }
        }
        prop_assert_eq!(decoder.pending(), 0);
        prop_assert_eq!(decoded, payloads);
    }

    #[test]
    fn parsing_arbitrary_bytes_as_a_request_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = serde_json::from_slice::<Request>(&bytes);
        let _ = serde_json::from_slice::<Response>(&bytes);
    }

    #[test]
    fn parsing_jsonish_text_as_a_request_never_panics(text in jsonish()) {
        if let Ok(request) = serde_json::from_str::<Request>(&text) {
            // Whatever parses re-serializes to something that parses the same.
            let again = serde_json::to_vec(&request).expect("serialize a parsed request");
            let back: Request = serde_json::from_slice(&again).expect("reparse");
            prop_assert_eq!(back, request);
        }
        let _ = serde_json::from_str::<Response>(&text);
    }

    #[test]
    fn simple_requests_survive_a_round_trip_through_a_frame(
        version in any::<u32>(),
        pid in any::<u32>(),
        which in 0u8..6,
    ) {
        let request = match which {
            0 => Request::Hello { version },
            1 => Request::Status,
            2 => Request::Confine { pid },
            3 => Request::Release { pid },
            4 => Request::Applied,
            _ => Request::Subscribe,
        };
        let bytes = encode(&serde_json::to_vec(&request).expect("serialize"));
        let mut decoder = FrameDecoder::default();
        decoder.push(&bytes);
        let frame = decoder.next_frame().expect("valid frame").expect("complete frame");
        prop_assert_eq!(serde_json::from_slice::<Request>(&frame).expect("parse"), request);
    }
}

#[test]
fn a_frame_of_exactly_the_limit_is_accepted_and_one_byte_more_is_refused() {
    let payload = vec![b'x'; MAX_FRAME];
    let mut decoder = FrameDecoder::default();
    decoder.push(&encode(&payload));
    let frame = decoder
        .next_frame()
        .expect("a frame at the limit is accepted")
        .expect("complete frame");
    assert_eq!(frame.len(), MAX_FRAME);
    assert_eq!(decoder.pending(), 0);

    let mut decoder = FrameDecoder::default();
    decoder.push(&(MAX_FRAME as u32 + 1).to_be_bytes());
    assert!(
        matches!(decoder.next_frame(), Err(FrameError::TooLarge(n)) if n == MAX_FRAME + 1),
        "refused from the header alone"
    );
}
