//! The client side of the control socket, for the CLI and the remote
//! watcher: blocking, one request at a time, with timeouts.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::frame::{FrameDecoder, encode};
use super::wire::{PROTOCOL_VERSION, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no daemon answers on {path} ({source}); is `aa-policyd run` running?")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket: {0}")]
    Io(std::io::Error),
    #[error("control socket: {0}")]
    Protocol(String),
    #[error("the daemon says: {0}")]
    Daemon(String),
}

/// Not `#[from]`: that would also make the io error the `source`, and every
/// message would print it twice.
impl From<std::io::Error> for ClientError {
    fn from(error: std::io::Error) -> Self {
        ClientError::Io(error)
    }
}

pub struct Client {
    stream: UnixStream,
    decoder: FrameDecoder,
}

impl Client {
    /// Connects and performs the version handshake.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(90)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let mut client = Client {
            stream,
            decoder: FrameDecoder::default(),
        };
        match client.request(&Request::Hello {
            version: PROTOCOL_VERSION,
        })? {
            Response::Hello { .. } => Ok(client),
            other => Err(ClientError::Protocol(format!(
                "unexpected handshake reply {other:?}"
            ))),
        }
    }

    /// Sends one request and returns its response; a daemon error becomes
    /// `ClientError::Daemon`.
    pub fn request(&mut self, request: &Request) -> Result<Response, ClientError> {
        let bytes =
            serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if bytes.len() > super::frame::MAX_FRAME {
            return Err(ClientError::Protocol(format!(
                "the request is {} bytes, over the {}-byte frame limit",
                bytes.len(),
                super::frame::MAX_FRAME
            )));
        }
        if let Err(write_error) = self.stream.write_all(&encode(&bytes)) {
            // The daemon may have answered and closed already (a refusal):
            // its reason is more useful than our EPIPE.
            return match self.next_response() {
                Err(ClientError::Daemon(reason)) => Err(ClientError::Daemon(reason)),
                _ => Err(ClientError::Io(write_error)),
            };
        }
        self.next_response()
    }

    /// Reads the next response (subscriptions send many).
    pub fn next_response(&mut self) -> Result<Response, ClientError> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(frame) = self
                .decoder
                .next_frame()
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                let response: Response = serde_json::from_slice(&frame)
                    .map_err(|e| ClientError::Protocol(format!("bad response: {e}")))?;
                return match response {
                    Response::Error { message } => Err(ClientError::Daemon(message)),
                    other => Ok(other),
                };
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(ClientError::Protocol(
                    "the daemon closed the connection".into(),
                ));
            }
            self.decoder.push(&chunk[..n]);
        }
    }

    /// Stops the read timeout (event subscriptions wait indefinitely).
    pub fn wait_forever(&mut self) -> Result<(), ClientError> {
        self.stream.set_read_timeout(None)?;
        Ok(())
    }
}
