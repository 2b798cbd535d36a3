//! Kubernetes resource quantities (`500m`, `12Gi`, `1e3`): grammar checks and approximate values.

/// What the quantity checks need to know about a valid quantity.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct QuantityShape {
    pub(crate) negative: bool,
    pub(crate) zero: bool,
}

const BINARY_SUFFIXES: [(&str, i32); 6] = [
    ("Ki", 10),
    ("Mi", 20),
    ("Gi", 30),
    ("Ti", 40),
    ("Pi", 50),
    ("Ei", 60),
];
const DECIMAL_SUFFIXES: [(&str, i32); 9] = [
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];

/// Splits a quantity into its number and suffix after checking Kubernetes' grammar:
/// `<sign>?<digits>[.<digits>]<suffix>` with suffix empty, a binary SI suffix (Ki…Ei), a decimal SI
/// suffix (n, u, m, k, M, G, T, P, E) or an exponent (`e`/`E` and a signed integer).
fn split_quantity(text: &str) -> Result<(&str, &str), String> {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let int_len = unsigned.bytes().take_while(u8::is_ascii_digit).count();
    let mut number_len = int_len;
    let mut fraction_len = 0;
    if unsigned[int_len..].starts_with('.') {
        fraction_len = unsigned[int_len + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        number_len += 1 + fraction_len;
    }
    if int_len + fraction_len == 0 {
        return Err("it does not start with a number".to_owned());
    }
    let sign_len = text.len() - unsigned.len();
    let (number, suffix) = text.split_at(sign_len + number_len);
    let known_suffix = suffix.is_empty()
        || BINARY_SUFFIXES
            .iter()
            .chain(&DECIMAL_SUFFIXES)
            .any(|(name, _)| *name == suffix)
        || suffix
            .strip_prefix(['e', 'E'])
            .map(|exponent| exponent.strip_prefix(['+', '-']).unwrap_or(exponent))
            .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
    if !known_suffix {
        return Err(format!(
            "unknown suffix {suffix:?} (expected Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E or an exponent like e3)"
        ));
    }
    Ok((number, suffix))
}

/// Checks a quantity's grammar and tells its sign and whether it is zero.
pub(crate) fn parse_quantity(text: &str) -> Result<QuantityShape, String> {
    let (number, _) = split_quantity(text)?;
    Ok(QuantityShape {
        negative: number.starts_with('-'),
        zero: number.bytes().all(|b| !b.is_ascii_digit() || b == b'0'),
    })
}

/// Approximate value of a valid quantity, precise enough to compare a request with a limit.
pub(crate) fn quantity_value(text: &str) -> Option<f64> {
    let (number, suffix) = split_quantity(text).ok()?;
    let mantissa: f64 = number.parse().ok()?;
    let scale = if let Some((_, power)) = BINARY_SUFFIXES.iter().find(|(name, _)| *name == suffix) {
        2f64.powi(*power)
    } else if let Some((_, power)) = DECIMAL_SUFFIXES.iter().find(|(name, _)| *name == suffix) {
        10f64.powi(*power)
    } else if suffix.is_empty() {
        1.0
    } else {
        10f64.powi(suffix[1..].parse().ok()?)
    };
    Some(mantissa * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_quantities() {
        let shape = |negative, zero| Ok(QuantityShape { negative, zero });
        for (text, expected) in [
            ("1", shape(false, false)),
            ("500m", shape(false, false)),
            ("1.5", shape(false, false)),
            (".5", shape(false, false)),
            ("5.", shape(false, false)),
            ("12Gi", shape(false, false)),
            ("1Ei", shape(false, false)),
            ("100n", shape(false, false)),
            ("3u", shape(false, false)),
            ("4k", shape(false, false)),
            ("2E", shape(false, false)),
            ("1e3", shape(false, false)),
            ("1E-3", shape(false, false)),
            ("+1e+3", shape(false, false)),
            ("-1", shape(true, false)),
            ("0", shape(false, true)),
            ("0.000Mi", shape(false, true)),
            ("-0", shape(true, true)),
        ] {
            assert_eq!(parse_quantity(text), expected, "{text}");
        }
        for text in [
            "", "Gi", "-", ".", "1 Gi", "1gi", "1KB", "1K", "1e", "1e1.5", "1.2.3", "1Gi ", " 1", "１",
        ] {
            assert!(parse_quantity(text).is_err(), "{text:?}");
        }
        assert_eq!(quantity_value("1Gi"), Some(1_073_741_824.0));
        assert_eq!(quantity_value("500m"), Some(0.5));
        assert_eq!(quantity_value("2e3"), Some(2000.0));
        assert_eq!(quantity_value("1G"), Some(1e9));
    }
}
