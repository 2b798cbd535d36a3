//! A directory under the system temp dir that is removed when its guard is dropped.

use std::{
    io,
    path::{Path, PathBuf},
};

/// Owns a fresh, uniquely named temporary directory; `Drop` removes it with everything inside.
#[derive(Debug)]
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<temp dir>/<prefix>-<uuid>`.
    pub(crate) fn new(prefix: &str) -> io::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "could not remove temporary directory");
        }
    }
}
