//! The control API (feature `control`): a daemon's processes, operated from outside over
//! JSON/HTTP, with a live event stream as server-sent events.
//!
//! [`ControlServer`] serves an injected [`ProcessService`] and [`EventBus`] on its own
//! listener (loopback by default). Every request needs `Authorization: Bearer <token>`; the
//! token is generated at construction from the kernel's random source, or given with
//! [`ControlServer::with_token`]. A request without it, or with another, is answered `401` and
//! nothing is done.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /processes` | every process's [`Info`](crate::Info), as a JSON array |
//! | `GET /processes/{id}` | that process's `Info` |
//! | `GET /processes/{id}/output?tail=N` | its captured output (`text/plain`), the last `N` lines with `tail` |
//! | `POST /processes/{id}/signal` `{"signal":"TERM"}` | sends the signal (a name, with or without `SIG`, or a number); answers the `Info` |
//! | `POST /processes/{id}/stop` `{"grace":"10s"}` or `{"grace":10}` | stops it (stop signal, then SIGKILL after the grace; its own grace period without a body), answers the `Info` once it is gone |
//! | `POST /processes/{id}/input` (raw bytes) | writes the body to its stdin; answers `{"id":..,"bytes":N}` |
//! | `GET /supervised` | every supervised process's [`SupervisedInfo`](crate::SupervisedInfo) (id `sup-N`, command, `state`, `attempts`, `restarts`, current `process_id` and `pid`, `uptime`, `last_exit`), as a JSON array, in start order; `[]` when no supervisor is wired ([`ControlServer::with_supervisor`]) |
//! | `GET /supervised/{id}` | that supervised process's `SupervisedInfo` |
//! | `GET /events[?process=ID]` | `text/event-stream`: one SSE event per [`ProcessEvent`](crate::ProcessEvent) (`event:` is its `type`, `data:` its JSON), and `event: lagged` with `{"missed":N}` when this client fell behind |
//!
//! Errors are JSON, `{"error":"..."}` naming the problem: `400` for a malformed body, a bad
//! signal, grace or `tail`; `401` for the token; `404` for an unknown route or process id;
//! `405` for a known path with another method; `409` when the process cannot do it now (not
//! running, stdin closed); `413` for a body over the limit ([`DEFAULT_BODY_LIMIT`]). Bad input
//! never causes a `500` or a panic.
//!
//! A slow `/events` client never slows the children: its subscription follows the bus's
//! [`Backpressure`](crate::Backpressure) policy like any other subscriber (with the default
//! policy a subscriber that stops reading holds output back for at most the stall, then
//! misses output events, and is told how many). A disconnected client's subscription is
//! dropped with its connection.
//!
//! # Unix socket
//! [`ControlServer::with_unix_socket`] serves on a unix socket instead of TCP (the other
//! transport; the bearer token is required all the same). Precisely:
//! - the socket's parent directory, when missing, is created (with any missing parents) with
//!   mode 0700; an existing directory is left as it is, so pick one only you can enter (under
//!   `$XDG_RUNTIME_DIR`, or a fresh one) for the directory to guard the socket too;
//! - the socket file is set to mode 0600 right after it is bound, before any connection is
//!   accepted: on Linux connecting needs write permission on the socket, so only its owner (and
//!   root) can connect;
//! - a socket file already at the path is tried: when a server answers (a live daemon), start
//!   fails with [`Error::Bind`] naming the path; when nobody does (a dead daemon left it) it is
//!   replaced. Anything that is not a socket is never removed (an [`Error::Bind`] too);
//! - stop (and drop) removes the socket file, unless another server has bound the path since.
//!
//! Its [`ControlEndpoint`] reads `unix:/path/to/control.sock` in the registry entry.
//!
//! # Publishing
//! Clients find the API through the registry entry: its [`DaemonEntry::control`] field holds
//! the endpoint ([`ControlEndpoint`]'s `Display`) and the token lies beside the entry at
//! [`token_path`] (mode 0600). Hand the server to the daemon
//! ([`DaemonService::set_control`](crate::DaemonService::set_control)) and the daemon does
//! both as steps of its start, and undoes them on stop; the `core-process` command line
//! (feature `cli`) does exactly that lookup. (Without a daemon, set the field and call
//! [`ControlServer::write_token_file`] yourself.)
//!
//! ```no_run
//! use std::sync::Arc;
//! use core_process::services::control::ControlServer;
//! use core_process::{Config, DaemonService, EventBus, ProcessService, SupervisorService};
//! use shaku::HasComponent;
//!
//! # #[tokio::main] async fn main() -> core_process::Result<()> {
//! let config = Config::from_file("agent.toml")?; // [daemon] register = { ... }, registry_dir
//! let module = config.module();
//! let processes: Arc<dyn ProcessService> = module.resolve();
//! let events: Arc<dyn EventBus> = module.resolve();
//! let supervisor: Arc<dyn SupervisorService> = module.resolve();
//! let control = ControlServer::new(processes, events)?
//!     .with_supervisor(supervisor)
//!     .with_unix_socket("/run/user/1000/agent/control.sock");
//! let daemon: Arc<dyn DaemonService> = module.resolve();
//! daemon.set_control(Arc::new(control));
//! daemon.start().await?; // ... health, control API, token file, registry entry
//! daemon.run(Box::pin(std::future::pending())).await?; // until SIGTERM/SIGINT
//! # Ok(()) }
//! ```

mod server;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::lifecycle::Lifecycle;
use crate::services::event_bus::EventBus;
use crate::services::process::ProcessService;
use crate::services::registry::DaemonEntry;
use crate::services::supervise::SupervisorService;
use crate::sync::lock;
use crate::sys;

/// The default address of the control API: loopback, any free port.
pub const DEFAULT_CONTROL_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

/// The largest request body the control API reads (64 KiB); a larger one is answered `413`.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// How long [`ControlServer::stop`] waits for open requests before it closes them.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest grace a `stop` request may ask for (one hour).
pub const MAX_GRACE: Duration = Duration::from_secs(3600);

/// Where a control API serves: a TCP address or a unix socket.
///
/// Its `Display` is what [`DaemonEntry::control`] records and `FromStr` reads back: the
/// address (`127.0.0.1:9091`), or `unix:` and the socket's path (`unix:/run/app/control.sock`).
///
/// ```
/// use core_process::services::control::ControlEndpoint;
///
/// let unix: ControlEndpoint = "unix:/run/app/control.sock".parse().unwrap();
/// assert_eq!(unix, ControlEndpoint::Unix("/run/app/control.sock".into()));
/// assert_eq!(unix.to_string(), "unix:/run/app/control.sock");
/// let tcp: ControlEndpoint = "127.0.0.1:9091".parse().unwrap();
/// assert_eq!(tcp.to_string(), "127.0.0.1:9091");
/// assert!("localhost".parse::<ControlEndpoint>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlEndpoint {
    /// A TCP address (loopback by default).
    Tcp(SocketAddr),
    /// A unix socket's path.
    Unix(PathBuf),
}

/// The prefix of a unix socket endpoint in [`DaemonEntry::control`].
const UNIX_PREFIX: &str = "unix:";

impl std::fmt::Display for ControlEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlEndpoint::Tcp(addr) => write!(f, "{addr}"),
            ControlEndpoint::Unix(path) => write!(f, "{UNIX_PREFIX}{}", path.display()),
        }
    }
}

impl std::str::FromStr for ControlEndpoint {
    type Err = Error;

    /// # Errors
    /// [`Error::InvalidName`] when the text is neither `unix:PATH` (with a path) nor an
    /// `IP:PORT` address.
    fn from_str(text: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidName {
            what: "control endpoint",
            name: format!("{text:?}"),
            reason,
        };
        match text.strip_prefix(UNIX_PREFIX) {
            Some("") => Err(invalid("`unix:` names no socket path")),
            Some(path) => Ok(ControlEndpoint::Unix(PathBuf::from(path))),
            None => text
                .parse()
                .map(ControlEndpoint::Tcp)
                .map_err(|_| invalid("expected IP:PORT or unix:PATH")),
        }
    }
}

/// The control API server (see the [module documentation](self)).
///
/// Nothing binds before [`start`](Self::start); dropping it stops the server at once.
pub struct ControlServer {
    endpoint: ControlEndpoint,
    body_limit: usize,
    stop_timeout: Duration,
    shared: Arc<server::Shared>,
    running: Mutex<Option<server::Running>>,
    /// The token file written by [`write_token_file`](Self::write_token_file): removed on stop.
    token_file: Mutex<Option<PathBuf>>,
}

impl ControlServer {
    /// A server over `processes` and `events`, with a fresh random token, to bind
    /// [`DEFAULT_CONTROL_ADDR`].
    ///
    /// # Errors
    /// [`Error::Io`] when the kernel's random source cannot be read.
    pub fn new(processes: Arc<dyn ProcessService>, events: Arc<dyn EventBus>) -> Result<Self> {
        Ok(ControlServer {
            endpoint: ControlEndpoint::Tcp(DEFAULT_CONTROL_ADDR),
            body_limit: DEFAULT_BODY_LIMIT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            shared: Arc::new(server::Shared {
                processes,
                events,
                supervisor: None,
                token: generate_token()?,
                body_limit: DEFAULT_BODY_LIMIT,
                closing: tokio_util::sync::CancellationToken::new(),
            }),
            running: Mutex::new(None),
            token_file: Mutex::new(None),
        })
    }

    /// Binds `addr` instead of loopback. Anyone who can reach it and holds the token
    /// controls the daemon's processes: prefer loopback.
    pub fn with_addr(mut self, addr: SocketAddr) -> Self {
        self.endpoint = ControlEndpoint::Tcp(addr);
        self
    }

    /// Serves on a unix socket at `path` instead of TCP (see [Unix socket](self#unix-socket)):
    /// only this user can connect, and the token is still required.
    pub fn with_unix_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.endpoint = ControlEndpoint::Unix(path.into());
        self
    }

    /// Serves on `endpoint`: [`with_addr`](Self::with_addr) or
    /// [`with_unix_socket`](Self::with_unix_socket).
    pub fn with_endpoint(mut self, endpoint: ControlEndpoint) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// Lists `supervisor`'s processes on `GET /supervised` (empty without one).
    pub fn with_supervisor(mut self, supervisor: Arc<dyn SupervisorService>) -> Self {
        self.shared_mut().supervisor = Some(supervisor);
        self
    }

    /// Uses `token` (from configuration) instead of the generated one.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] when `token` is shorter than 16 bytes or holds characters
    /// outside visible ASCII (it travels in a header).
    pub fn with_token(mut self, token: impl Into<String>) -> Result<Self> {
        let token = token.into();
        if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidOptions {
                command: "control API".into(),
                reason: "the token must be at least 16 visible ASCII characters".into(),
            });
        }
        self.shared_mut().token = token;
        Ok(self)
    }

    /// Sets the largest request body read (default [`DEFAULT_BODY_LIMIT`]).
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self.shared_mut().body_limit = bytes;
        self
    }

    /// Sets how long [`stop`](Self::stop) waits for open requests (default
    /// [`DEFAULT_STOP_TIMEOUT`]). Open `/events` streams end at once on stop.
    pub fn with_stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    fn shared_mut(&mut self) -> &mut server::Shared {
        // Only the builders call this, before start: nothing else holds the Arc yet.
        Arc::get_mut(&mut self.shared).expect("configured before start")
    }

    /// The bearer token clients must send.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The largest request body read.
    pub fn body_limit(&self) -> usize {
        self.body_limit
    }

    /// The bound TCP address, while serving on TCP.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self.endpoint()? {
            ControlEndpoint::Tcp(addr) => Some(addr),
            ControlEndpoint::Unix(_) => None,
        }
    }

    /// Where it serves (with the real port when port 0 was asked for), while serving: what
    /// goes into [`DaemonEntry::control`] (its `Display`).
    pub fn endpoint(&self) -> Option<ControlEndpoint> {
        lock(&self.running).as_ref().map(|r| r.endpoint().clone())
    }

    /// Writes the token to `path`, readable and writable by this user only (mode 0600),
    /// replacing what was there. [`stop`](Self::stop) removes the file.
    ///
    /// # Errors
    /// [`Error::Io`] naming `path` when it cannot be written.
    pub fn write_token_file(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("replacing control token file", path, e)),
        }
        let mut file = sys::open_options(0o600)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io("creating control token file", path, e))?;
        file.write_all(self.token().as_bytes())
            .map_err(|e| Error::io("writing control token file", path, e))?;
        *lock(&self.token_file) = Some(path.to_path_buf());
        Ok(())
    }

    /// Binds the listener and serves on a task; returns where it serves.
    ///
    /// # Errors
    /// [`Error::Bind`] naming the address or socket path when it cannot be bound: for a unix
    /// socket also when a live server already listens on it, or the path holds something
    /// other than a socket; [`Error::AlreadyStarted`] while serving.
    pub async fn start(&self) -> Result<ControlEndpoint> {
        let mut running = lock(&self.running);
        if let Some(r) = running.as_ref() {
            return Err(Error::AlreadyStarted {
                component: "ControlServer".into(),
                detail: format!("serving on {}", r.endpoint()),
            });
        }
        let r = server::serve(&self.endpoint, self.shared.clone())?;
        let endpoint = r.endpoint().clone();
        *running = Some(r);
        Ok(endpoint)
    }

    /// Stops serving: ends the `/events` streams, waits up to the stop timeout for other
    /// requests, then closes what is left, and removes the token file it wrote and its unix
    /// socket file (when that is still the one it bound). A no-op when not serving.
    ///
    /// # Errors
    /// None today; the signature leaves room.
    pub async fn stop(&self) -> Result<()> {
        if let Some(path) = lock(&self.token_file).take()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the control token file");
        }
        let Some(r) = lock(&self.running).take() else {
            return Ok(());
        };
        r.stop(self.stop_timeout).await;
        Ok(())
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(r) = lock(&self.running).take() {
            r.abort();
        }
    }
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("endpoint", &self.endpoint)
            .field("bound", &self.endpoint())
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Lifecycle for ControlServer {
    /// Stops the server (see [`ControlServer::stop`]). Starting does nothing: the host starts
    /// it, so that it can publish the address.
    async fn on_stop(&self) -> Result<()> {
        self.stop().await
    }
}

/// Where the control token of `entry` lives in registry directory `dir`:
/// `{code}-{daemon}.token`, beside the entry's `{code}-{daemon}.json`.
///
/// # Errors
/// [`Error::InvalidName`] as [`DaemonEntry::file_name`].
pub fn token_path(dir: &Path, entry: &DaemonEntry) -> Result<PathBuf> {
    let name = entry.file_name()?;
    let stem = name.strip_suffix(".json").unwrap_or(&name);
    Ok(dir.join(format!("{stem}.token")))
}

/// 32 random bytes from the kernel, as 64 hex digits.
fn generate_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    sys::random_bytes(&mut bytes)
        .map_err(|e| Error::io("reading the kernel random source", "getrandom(2)", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn the_token_file_sits_beside_the_entry() {
        let entry = DaemonEntry::new("myapp", "server");
        assert_eq!(
            token_path(Path::new("/r"), &entry).unwrap(),
            Path::new("/r/myapp-server.token")
        );
        assert!(token_path(Path::new("/r"), &DaemonEntry::new("../x", "y")).is_err());
    }
}
