//! Version rules of the frontend: which payload version a dequeuing executor gets, and the
//! outdated/ahead badge of the Instances page.

use std::cmp::Ordering;

use jiff::civil::Date;

/// A parsed semantic version; build metadata is dropped because it does not take part in ordering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SemVer {
    major: u64,
    minor: u64,
    patch: u64,
    pre_release: Vec<String>,
}

impl SemVer {
    /// Parses leniently like the Go semver library the frontend uses: optional `v`, one to three
    /// numeric components, optional `-pre.release` and `+build`.
    pub(crate) fn parse(text: &str) -> Option<SemVer> {
        let text = text.strip_prefix('v').unwrap_or(text);
        let without_build = text.split_once('+').map_or(text, |(core, _)| core);
        let (core, pre) = match without_build.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (without_build, None),
        };
        let mut numbers = [0u64; 3];
        let parts: Vec<&str> = core.split('.').collect();
        if parts.is_empty() || parts.len() > 3 {
            return None;
        }
        for (slot, part) in numbers.iter_mut().zip(&parts) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            *slot = part.parse().ok()?;
        }
        let pre_release = match pre {
            Some(pre) => {
                let identifiers: Vec<String> = pre.split('.').map(str::to_owned).collect();
                let valid = |id: &String| {
                    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                };
                if !identifiers.iter().all(valid) {
                    return None;
                }
                identifiers
            }
            None => Vec::new(),
        };
        Some(SemVer {
            major: numbers[0],
            minor: numbers[1],
            patch: numbers[2],
            pre_release,
        })
    }

    /// The next minor release (`x.(y+1).0`), as Go semver's `IncMinor` computes it.
    fn next_minor(&self) -> SemVer {
        SemVer {
            major: self.major,
            minor: self.minor + 1,
            patch: 0,
            pre_release: Vec::new(),
        }
    }
}

impl PartialOrd for SemVer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SemVer {
    fn cmp(&self, other: &Self) -> Ordering {
        let core = (self.major, self.minor, self.patch).cmp(&(other.major, other.minor, other.patch));
        if core != Ordering::Equal {
            return core;
        }
        // A pre-release sorts before its release; identifiers compare numerically when both are numbers.
        match (self.pre_release.is_empty(), other.pre_release.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => {
                for (left, right) in self.pre_release.iter().zip(&other.pre_release) {
                    let ordering = match (left.parse::<u64>(), right.parse::<u64>()) {
                        (Ok(l), Ok(r)) => l.cmp(&r),
                        (Ok(_), Err(_)) => Ordering::Less,
                        (Err(_), Ok(_)) => Ordering::Greater,
                        (Err(_), Err(_)) => left.cmp(right),
                    };
                    if ordering != Ordering::Equal {
                        return ordering;
                    }
                }
                self.pre_release.len().cmp(&other.pre_release.len())
            }
        }
    }
}

/// Development builds never get a compatibility verdict and always get the newest payload.
pub(crate) fn is_dev_version(version: &str) -> bool {
    version == "dev" || version == "0.0.0+dev" || version.ends_with("+dev")
}

/// Build date of an insiders version `<build>_<YYYY-MM-DD>_<rest>`.
pub(crate) fn insiders_build_date(version: &str) -> Option<Date> {
    let mut parts = version.splitn(3, '_');
    let build = parts.next()?;
    let date = parts.next()?;
    parts.next()?;
    if build.is_empty() || !build.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    date.parse().ok()
}

/// First version that understands the version-2 payload (base64 files, `dockerAuthConfig`).
const V2_MIN_VERSION: (u64, u64, u64) = (4, 3, 0);

/// Whether an executor reporting `version` gets the version-2 job payload.
///
/// # Errors
/// Returns a message naming the version when it is neither semver, dev nor an insiders build.
pub(crate) fn supports_v2_payload(version: &str) -> Result<bool, String> {
    if version.is_empty() {
        return Ok(false);
    }
    if is_dev_version(version) {
        return Ok(true);
    }
    if let Some(date) = insiders_build_date(version) {
        return Ok(date >= jiff::civil::date(2022, 11, 24));
    }
    match SemVer::parse(version) {
        // `>= 4.3.0-0` admits every pre-release of 4.3.0, so only the numeric core matters.
        Some(parsed) => Ok((parsed.major, parsed.minor, parsed.patch) >= V2_MIN_VERSION),
        None => Err(format!(
            "failed to check version {version:?}: not a semantic version"
        )),
    }
}

/// Relation of an executor's version to the instance version (§5.3 of the reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compatibility {
    UpToDate,
    Outdated,
    VersionAhead,
}

/// How far apart two insiders builds may be before one counts as outdated/ahead.
const INSIDERS_TOLERANCE_DAYS: i64 = 35;

/// Computes the badge, or `None` when no verdict applies (dev builds, one-sided insiders builds,
/// or an unparseable version, which makes the real frontend's field error out).
pub(crate) fn compatibility(executor_version: &str, instance_version: &str) -> Option<Compatibility> {
    if is_dev_version(executor_version) || is_dev_version(instance_version) {
        return None;
    }
    match (
        insiders_build_date(executor_version),
        insiders_build_date(instance_version),
    ) {
        (Some(executor_date), Some(instance_date)) => {
            let days = (executor_date - instance_date).get_days() as i64;
            return Some(if days > INSIDERS_TOLERANCE_DAYS {
                Compatibility::VersionAhead
            } else if days < -INSIDERS_TOLERANCE_DAYS {
                Compatibility::Outdated
            } else {
                Compatibility::UpToDate
            });
        }
        (None, None) => {}
        _ => return None,
    }
    let executor = semver_of(executor_version)?;
    let instance = semver_of(instance_version)?;
    Some(if instance > executor.next_minor() {
        Compatibility::Outdated
    } else if executor > instance.next_minor() {
        Compatibility::VersionAhead
    } else {
        Compatibility::UpToDate
    })
}

/// Daily builds (`6.0.1234_...`) carry a semver prefix before the first underscore.
fn semver_of(version: &str) -> Option<SemVer> {
    SemVer::parse(version).or_else(|| SemVer::parse(version.split('_').next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_version_follows_the_frontend_rule() {
        assert_eq!(supports_v2_payload(""), Ok(false));
        assert_eq!(supports_v2_payload("4.2.9"), Ok(false));
        assert_eq!(supports_v2_payload("4.3.0-rc.1"), Ok(true));
        assert_eq!(supports_v2_payload("6.0.0"), Ok(true));
        assert_eq!(supports_v2_payload("v5.1"), Ok(true));
        assert_eq!(supports_v2_payload("dev"), Ok(true));
        assert_eq!(supports_v2_payload("0.0.0+dev"), Ok(true));
        assert_eq!(supports_v2_payload("123_2022-11-24_abcdef"), Ok(true));
        assert_eq!(supports_v2_payload("123_2022-11-23_abcdef"), Ok(false));
        assert!(supports_v2_payload("not a version").is_err());
        assert!(supports_v2_payload("1.2.3.4").is_err());
    }

    #[test]
    fn badge_compares_minor_versions_against_the_instance() {
        assert_eq!(compatibility("6.0.0", "6.0.0"), Some(Compatibility::UpToDate));
        assert_eq!(compatibility("5.11.0", "6.0.0"), Some(Compatibility::Outdated));
        assert_eq!(compatibility("5.5.0", "5.6.0"), Some(Compatibility::UpToDate));
        // "+1 minor" means x.(y+1).0, so any patch release of the next minor is already ahead of it.
        assert_eq!(compatibility("5.5.0", "5.6.3"), Some(Compatibility::Outdated));
        assert_eq!(compatibility("5.4.0", "5.6.0"), Some(Compatibility::Outdated));
        assert_eq!(compatibility("6.1.0", "6.0.0"), Some(Compatibility::UpToDate));
        assert_eq!(compatibility("6.2.0", "6.0.0"), Some(Compatibility::VersionAhead));
        assert_eq!(compatibility("0.0.0+dev", "6.0.0"), None);
        assert_eq!(
            compatibility("1_2024-01-01_abc", "2_2024-03-01_abc"),
            Some(Compatibility::Outdated)
        );
        assert_eq!(
            compatibility("1_2024-03-01_abc", "2_2024-03-20_abc"),
            Some(Compatibility::UpToDate)
        );
        assert_eq!(compatibility("1_2024-06-01_abc", "2024-03-20"), None);
        assert_eq!(compatibility("garbage", "6.0.0"), None);
    }

    #[test]
    fn pre_releases_sort_before_their_release() {
        let order = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0",
        ];
        let parsed: Vec<SemVer> = order.iter().filter_map(|v| SemVer::parse(v)).collect();
        assert_eq!(parsed.len(), order.len());
        assert!(parsed.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
