//! Replaces secret values (the frontend password, a job's `redactedValues`) in log output and commands.

use std::collections::BTreeMap;

/// Replaces every configured secret with its stand-in text.
///
/// Longer secrets are replaced first, so a secret that contains a shorter one is hidden whole.
#[derive(Clone, Default)]
pub struct Redactor {
    replacements: Vec<(String, String)>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} values)", self.replacements.len())
    }
}

impl Redactor {
    /// Builds a redactor from the frontend password and a job's `redactedValues` (secret → stand-in).
    pub fn new(frontend_password: &str, redacted_values: &BTreeMap<String, String>) -> Self {
        let mut replacements: Vec<(String, String)> = redacted_values
            .iter()
            .filter(|(secret, _)| !secret.is_empty())
            .map(|(secret, shown)| (secret.clone(), shown.clone()))
            .collect();
        if !frontend_password.is_empty() {
            replacements.push((frontend_password.to_string(), "SECRET_REMOVED".to_string()));
        }
        replacements.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Self { replacements }
    }

    /// Returns `text` with every secret replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (secret, shown) in &self.replacements {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), shown);
            }
        }
        out
    }

    /// Redacts each element of a command line.
    pub fn redact_all(&self, parts: &[String]) -> Vec<String> {
        parts.iter().map(|p| self.redact(p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_password_and_job_values_longest_first() {
        let values = BTreeMap::from([
            ("abc".to_string(), "${{ secrets.SHORT }}".to_string()),
            ("abcdef".to_string(), "${{ secrets.LONG }}".to_string()),
        ]);
        let r = Redactor::new("hunter2-password", &values);
        assert_eq!(
            r.redact("x abcdef y abc z hunter2-password"),
            "x ${{ secrets.LONG }} y ${{ secrets.SHORT }} z SECRET_REMOVED"
        );
    }

    #[test]
    fn empty_secrets_are_ignored() {
        let r = Redactor::new("", &BTreeMap::from([(String::new(), "x".to_string())]));
        assert_eq!(r.redact("unchanged"), "unchanged");
    }
}
