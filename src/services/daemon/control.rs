//! The control API a daemon serves and publishes ([`DaemonService::set_control`], feature
//! `control`): start, token file, stop. Without the feature there is no control API, and
//! [`Control`] has no value, so the steps that use it compile to nothing.
//!
//! [`DaemonService::set_control`]: super::DaemonService

use std::path::Path;

use crate::error::Result;
use crate::services::registry::DaemonEntry;

/// The control API a daemon serves.
#[cfg(feature = "control")]
pub(super) type Control = std::sync::Arc<crate::services::control::ControlServer>;

/// No control API without the feature: a type without values.
#[cfg(not(feature = "control"))]
#[derive(Clone)]
pub(super) enum Control {}

/// Starts `control`, if any; returns its endpoint for [`DaemonEntry::control`].
pub(super) async fn start(control: Option<&Control>) -> Result<Option<String>> {
    let Some(control) = control else {
        return Ok(None);
    };
    #[cfg(feature = "control")]
    {
        control
            .start()
            .await
            .map(|endpoint| Some(endpoint.to_string()))
    }
    #[cfg(not(feature = "control"))]
    match *control {}
}

/// Writes `control`'s token, if any, beside `entry` in registry directory `dir` (mode 0600;
/// removed by [`stop`]).
pub(super) fn write_token(
    control: Option<&Control>,
    dir: &Path,
    entry: &DaemonEntry,
) -> Result<()> {
    let Some(control) = control else {
        return Ok(());
    };
    #[cfg(feature = "control")]
    {
        // Before the registry's first write, its directory may not be there yet.
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(dir)
            .map_err(|e| crate::error::Error::io("creating registry directory", dir, e))?;
        control.write_token_file(&crate::services::control::token_path(dir, entry)?)
    }
    #[cfg(not(feature = "control"))]
    {
        let _ = (dir, entry);
        match *control {}
    }
}

/// Stops `control`, if any, which removes its token file and unix socket file.
pub(super) async fn stop(control: Option<&Control>) -> Result<()> {
    let Some(control) = control else {
        return Ok(());
    };
    #[cfg(feature = "control")]
    {
        control.stop().await
    }
    #[cfg(not(feature = "control"))]
    match *control {}
}
