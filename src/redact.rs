//! Replaces secret values (the frontend password, a job's token and `redactedValues`) in log output,
//! commands and failure messages, including the forms a shell trace prints them in.
//!
//! Rules, for each secret with its stand-in:
//! - the secret itself is replaced wherever it appears, whatever its length (as configured);
//! - a secret that spans lines is also replaced line by line, since output is redacted one line at
//!   a time: each line, trimmed, is a secret of its own unless it is under [`MIN_LINE_LEN`] bytes,
//!   has no letter or digit (`{`, `},`), or is PEM armour (`-----BEGIN …-----`, `-----END …-----`):
//!   those are too short or too common to be secret, and hiding them would hide ordinary output;
//! - every value above is also replaced in the forms `bash -x` traces it in: inside single quotes
//!   (`'` written `'\''`) and ANSI-C quoted (`$'…'`, used when the value has control characters),
//!   with non-ASCII bytes as they are (UTF-8 locale) or in octal (C locale).

use std::collections::BTreeMap;

/// The shortest line of a multi-line secret that is redacted on its own.
pub const MIN_LINE_LEN: usize = 4;

/// The stand-in for the frontend password and the job token.
const SECRET_REMOVED: &str = "SECRET_REMOVED";

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
        let mut redactor = Self::default();
        for (secret, shown) in redacted_values {
            redactor.add(secret, shown);
        }
        redactor.add(frontend_password, SECRET_REMOVED);
        redactor.sort();
        redactor
    }

    /// Also redacts the job's token: steps get it to fetch files and could print it.
    pub fn with_job_token(mut self, token: &str) -> Self {
        self.add(token, SECRET_REMOVED);
        self.sort();
        self
    }

    /// Adds every form of `secret` (see the module rules); empty secrets are ignored.
    fn add(&mut self, secret: &str, shown: &str) {
        if secret.is_empty() {
            return;
        }
        let mut sources = vec![secret.to_string()];
        if secret.contains('\n') {
            sources.extend(
                secret
                    .lines()
                    .map(str::trim)
                    .filter(|l| line_is_secret(l))
                    .map(String::from),
            );
        }
        for source in sources {
            for form in traced_forms(&source) {
                if !self.replacements.iter().any(|(s, _)| *s == form) {
                    self.replacements.push((form, shown.to_string()));
                }
            }
        }
    }

    /// Longest first, so a secret containing another is replaced whole; ties in a fixed order.
    fn sort(&mut self) {
        self.replacements
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
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

/// Whether a trimmed line of a multi-line secret is redacted on its own.
fn line_is_secret(line: &str) -> bool {
    let armour = line.starts_with("-----") && line.ends_with("-----");
    line.len() >= MIN_LINE_LEN && !armour && line.chars().any(char::is_alphanumeric)
}

/// `value` as it is, and as the body of bash's single-quoted and ANSI-C quoted trace words.
fn traced_forms(value: &str) -> Vec<String> {
    let mut forms = vec![
        value.to_string(),
        value.replace('\'', r"'\''"),
        ansi_c_body(value, false),
        ansi_c_body(value, true),
    ];
    forms.sort();
    forms.dedup();
    forms
}

/// The text bash puts between `$'` and `'` for `value` (its `ansic_quote`): named escapes for
/// the usual control characters, `\\` and `\'`, three-digit octal for other unprintable bytes and,
/// when `octal_non_ascii` (the C locale), for every byte of a non-ASCII character.
fn ansi_c_body(value: &str, octal_non_ascii: bool) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\x1b' => out.push_str(r"\E"),
            '\x07' => out.push_str(r"\a"),
            '\x0b' => out.push_str(r"\v"),
            '\x08' => out.push_str(r"\b"),
            '\x0c' => out.push_str(r"\f"),
            '\n' => out.push_str(r"\n"),
            '\r' => out.push_str(r"\r"),
            '\t' => out.push_str(r"\t"),
            '\\' => out.push_str(r"\\"),
            '\'' => out.push_str(r"\'"),
            c if c.is_ascii_control() => out.push_str(&format!("\\{:03o}", c as u32)),
            c if !c.is_ascii() && octal_non_ascii => {
                let mut buf = [0u8; 4];
                for byte in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{byte:03o}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compares without printing either side: the input holds a secret.
    fn check(r: &Redactor, input: &str, expected: &str) {
        assert!(
            r.redact(input) == expected,
            "a secret form was not redacted as expected"
        );
    }

    #[test]
    fn replaces_password_and_job_values_longest_first() {
        let values = BTreeMap::from([
            ("abc".to_string(), "${{ secrets.SHORT }}".to_string()),
            ("abcdef".to_string(), "${{ secrets.LONG }}".to_string()),
        ]);
        let r = Redactor::new("hunter2-password", &values);
        check(
            &r,
            "x abcdef y abc z hunter2-password",
            "x ${{ secrets.LONG }} y ${{ secrets.SHORT }} z SECRET_REMOVED",
        );
    }

    #[test]
    fn empty_secrets_are_ignored() {
        let r = Redactor::new("", &BTreeMap::from([(String::new(), "x".to_string())]));
        check(&r, "unchanged", "unchanged");
    }

    const PEM: &str = "-----BEGIN FAKE KEY-----\nMIIBfakeLINEone+/=\nzzFAKElineTWO==\n-----END FAKE KEY-----";

    fn pem_redactor() -> Redactor {
        Redactor::new("", &BTreeMap::from([(PEM.to_string(), "[PEM]".to_string())]))
    }

    #[test]
    fn each_line_of_a_multi_line_secret_is_redacted() {
        let r = pem_redactor();
        check(&r, "MIIBfakeLINEone+/=", "[PEM]");
        check(&r, "  zzFAKElineTWO==\r", "  [PEM]\r");
        check(&r, &format!("key: {PEM}"), "key: [PEM]");
    }

    #[test]
    fn armour_short_and_symbol_lines_of_a_secret_are_not_secrets() {
        let secret = "-----BEGIN X-----\n{\nab\n},\nreal-secret-line\n-----END X-----";
        let r = Redactor::new("", &BTreeMap::from([(secret.to_string(), "[S]".to_string())]));
        for line in ["-----BEGIN X-----", "{", "ab", "},", "-----END X-----"] {
            check(&r, line, line);
        }
        check(&r, "real-secret-line", "[S]");
    }

    #[test]
    fn bash_single_quoted_trace_is_redacted() {
        let secret = "pa'ss wörd$x";
        let r = Redactor::new("", &BTreeMap::from([(secret.to_string(), "[Q]".to_string())]));
        // What `bash -x` prints for `echo "$S"`.
        check(&r, r"+ echo 'pa'\''ss wörd$x'", "+ echo '[Q]'");
        check(&r, secret, "[Q]");
    }

    #[test]
    fn bash_ansi_c_quoted_trace_is_redacted() {
        let secret = "a\x01b\x1bc\x7fd\re'f\\g\tö";
        let r = Redactor::new("", &BTreeMap::from([(secret.to_string(), "[C]".to_string())]));
        // What `bash -x` prints for `echo "$S"` in a UTF-8 and in the C locale.
        check(&r, r"+ echo $'a\001b\Ec\177d\re\'f\\g\tö'", "+ echo $'[C]'");
        check(
            &r,
            r"+ echo $'a\001b\Ec\177d\re\'f\\g\t\303\266'",
            "+ echo $'[C]'",
        );
    }

    #[test]
    fn lines_of_a_multi_line_secret_are_redacted_in_traced_forms() {
        let secret = "first line it's\nsecond\x01line";
        let r = Redactor::new("", &BTreeMap::from([(secret.to_string(), "[M]".to_string())]));
        check(&r, r"+ x='first line it'\''s", "+ x='[M]");
        check(&r, r"+ echo $'first line it\'s\nsecond\001line'", "+ echo $'[M]'");
        check(&r, r"second\001line'", "[M]'");
    }

    #[test]
    fn job_token_is_redacted() {
        let r = Redactor::new("", &BTreeMap::new()).with_job_token("tok-123456");
        check(
            &r,
            "curl -H 'Authorization: token-executor tok-123456'",
            "curl -H 'Authorization: token-executor SECRET_REMOVED'",
        );
        let none = Redactor::new("", &BTreeMap::new()).with_job_token("");
        check(&none, "unchanged", "unchanged");
    }
}
