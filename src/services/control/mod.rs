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
//! Clients find the API through the registry: set [`DaemonEntry::control`] to the bound
//! address and write the token with [`ControlServer::write_token_file`] to
//! [`token_path`] (beside the entry, mode 0600). The `core-process` command line
//! (feature `cli`) does exactly that lookup.
//!
//! ```no_run
//! # async fn demo(processes: std::sync::Arc<dyn core_process::ProcessService>,
//! #               events: std::sync::Arc<dyn core_process::EventBus>) -> core_process::Result<()> {
//! use core_process::services::control::{ControlServer, token_path};
//! use core_process::{DaemonEntry, FileRegistry};
//!
//! let control = ControlServer::new(processes, events)?;
//! let addr = control.start().await?;
//! let mut entry = DaemonEntry::new("myapp", "server");
//! entry.control = addr.to_string();
//! control.write_token_file(&token_path(&FileRegistry::default_dir(), &entry)?)?;
//! // ... register `entry` (DaemonOptions::registry_entry) and run the daemon ...
//! control.stop().await?;
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

/// The control API server (see the [module documentation](self)).
///
/// Nothing binds before [`start`](Self::start); dropping it stops the server at once.
pub struct ControlServer {
    addr: SocketAddr,
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
            addr: DEFAULT_CONTROL_ADDR,
            body_limit: DEFAULT_BODY_LIMIT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            shared: Arc::new(server::Shared {
                processes,
                events,
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
        self.addr = addr;
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

    /// The bound address, while serving.
    pub fn addr(&self) -> Option<SocketAddr> {
        lock(&self.running).as_ref().map(server::Running::addr)
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

    /// Binds the listener and serves on a task; returns the bound address.
    ///
    /// # Errors
    /// [`Error::Bind`] when the address cannot be bound; [`Error::AlreadyStarted`] while
    /// serving.
    pub async fn start(&self) -> Result<SocketAddr> {
        let mut running = lock(&self.running);
        if let Some(r) = running.as_ref() {
            return Err(Error::AlreadyStarted {
                component: "ControlServer".into(),
                detail: format!("serving on {}", r.addr()),
            });
        }
        let r = server::serve(self.addr, self.shared.clone())?;
        let addr = r.addr();
        *running = Some(r);
        Ok(addr)
    }

    /// Stops serving: ends the `/events` streams, waits up to the stop timeout for other
    /// requests, then closes what is left, and removes the token file it wrote. A no-op when
    /// not serving.
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
            .field("addr", &self.addr)
            .field("bound", &self.addr())
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Lifecycle for ControlServer {
    fn name(&self) -> &str {
        "ControlServer"
    }

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
