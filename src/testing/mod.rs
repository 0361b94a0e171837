//! Test doubles for host applications (feature `testing`). They spawn nothing, touch no file
//! and bind no port; each is a cheap `Clone` over shared state, so a test keeps a handle
//! after giving one to a module and asserts on it afterwards.
//!
//! - [`FakeModule`]: a [`ProcessModule`](crate::ProcessModule) with every service replaced by
//!   its fake, and the fakes handed back. The shortest way: nothing real can be reached from
//!   it, so no child can be started by mistake.
//! - [`FakeProcessService`]: scripted runs ([`FakeOutcome`]) chosen by [`Match`] on the whole
//!   command line; publishes the real service's events on the module's bus.
//! - [`ProcessController`]: a [`Process`](crate::Process) whose life the test drives, for
//!   hand-written or `mockall` mocks of [`ProcessService`](crate::ProcessService).
//! - [`RecordingEventBus`]: records every event it carries.
//! - Daemon fakes: [`MemoryRegistry`], [`FakePidLock`], [`FakeHealthService`] (with a shared
//!   [`CallLog`]), and [`http_get`] for asserting on a real health server.
//!
//! ```
//! use std::sync::Arc;
//! use core_process::testing::{FakeModule, FakeOutcome};
//! use core_process::{ProcessService, RunOptions, Stream};
//! use shaku::HasComponent;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let fakes = FakeModule::new();
//! fakes.process().script("make", FakeOutcome::exit(2).stderr("no rule\n"));
//! let service: Arc<dyn ProcessService> = fakes.module().resolve();
//!
//! let err = service.run(RunOptions::new("make").arg("all")).await.unwrap_err();
//! assert_eq!(err.exit_code(), Some(2));
//! assert_eq!(fakes.bus().lines("fake-1", Stream::Stderr), ["no rule"]);
//! fakes.process().assert_all_used();
//! # }
//! ```

mod daemon;
mod event_bus;
mod module;
mod process;

pub use daemon::*;
pub use event_bus::RecordingEventBus;
pub use module::FakeModule;
pub use process::{FakeOutcome, FakeProcessService, Match, ProcessController, Request};
