//! Logging setup and the facts an executor reports about itself (OS, architecture, git version, metrics).

use tracing_subscriber::fmt;

use crate::{
    config::{Config, LogFormat},
    context::Deps,
};

/// The product's own build version (reported separately from EXECUTOR_REPORTED_VERSION).
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Installs the global tracing subscriber from SRC_LOG_LEVEL / SRC_LOG_FORMAT. `RUST_LOG`, when
/// set, replaces the level with full filter syntax; a malformed one is a startup error naming it.
pub fn init_logging(config: &Config) -> Result<(), String> {
    let rust_log = std::env::var(crate::logging::FINE_GRAINED_FILTER_VARIABLE).ok();
    let filter = crate::logging::filter(&config.log_level, rust_log.as_deref())?;
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // Ignore "already set": tests may build several executors in one process.
    let _ = match config.log_format {
        LogFormat::Json => builder.json().event_format(crate::logging::FlatJson).try_init(),
        LogFormat::Condensed => builder.compact().with_ansi(false).try_init(),
        LogFormat::Console => builder.try_init(),
    };
    Ok(())
}

/// Static facts about this executor, sent in heartbeats.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    pub os: String,
    pub architecture: String,
    pub git_version: String,
    pub slots: std::sync::Arc<crate::slots::Slots>,
}

impl SystemInfo {
    /// Gathers OS, architecture (Go's names, which the frontend shows) and `git version`.
    pub async fn gather(slots: std::sync::Arc<crate::slots::Slots>) -> Self {
        Self {
            os: std::env::consts::OS.to_string(),
            architecture: go_arch(std::env::consts::ARCH).to_string(),
            git_version: git_version().await.unwrap_or_default(),
            slots,
        }
    }

    /// The Prometheus text sent in heartbeats and served on /metrics.
    pub fn metrics_text(&self, deps: &Deps) -> String {
        let nfr = deps.nfr.snapshot(jiff::Timestamp::now());
        deps.metrics.render(self.slots.max(), self.slots.running(), &nfr)
    }
}

fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64",
        other => other,
    }
}

/// `git version 2.47.3` → `2.47.3`; empty when git is missing (the image ships it).
async fn git_version() -> Option<String> {
    let out = tokio::process::Command::new("git")
        .arg("version")
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("git version ")
        .map(|v| v.split_whitespace().next().unwrap_or(v).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_use_go_names() {
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
    }

    #[tokio::test]
    async fn git_version_is_read_from_git() {
        let v = git_version().await.expect("git is installed on build machines");
        assert!(v.chars().next().is_some_and(|c| c.is_ascii_digit()), "{v}");
    }
}
