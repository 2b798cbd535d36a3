//! Parsing of Kubernetes resource quantities ("500m", "1.5", "16Gi") into integers for admission arithmetic.

/// A quantity string that is not a valid Kubernetes quantity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid quantity {0:?}")]
pub struct InvalidQuantity(pub String);

/// Parses a quantity into its value scaled by `scale` (1000 for millicores, 1 for bytes), rounded up
/// as the kubelet does (`MilliValue`/`Value` round towards +infinity).
pub fn parse_scaled(text: &str, scale: f64) -> Result<i64, InvalidQuantity> {
    let invalid = || InvalidQuantity(text.to_string());
    let trimmed = text.trim();
    let number_end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(number_end);
    if number.is_empty() {
        return Err(invalid());
    }
    let mantissa: f64 = number.parse().map_err(|_| invalid())?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: i32 = exponent[1..].parse().map_err(|_| invalid())?;
            10f64.powi(power)
        }
        _ => return Err(invalid()),
    };
    let value = mantissa * multiplier * scale;
    // NB: subtract a tiny epsilon before ceil so that exact values ("0.1" * 1000) do not round up
    // because of binary floating point noise.
    Ok((value - value.abs() * 1e-12).ceil() as i64)
}

/// CPU quantity in millicores.
pub fn millicores(text: &str) -> Result<i64, InvalidQuantity> {
    parse_scaled(text, 1000.0)
}

/// Quantity in whole units (bytes for memory and storage, a count for pods).
pub fn units(text: &str) -> Result<i64, InvalidQuantity> {
    parse_scaled(text, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_become_millicores() {
        assert_eq!(millicores("4"), Ok(4000));
        assert_eq!(millicores("500m"), Ok(500));
        assert_eq!(millicores("0.1"), Ok(100));
        assert_eq!(millicores("1.5"), Ok(1500));
        assert_eq!(millicores("100u"), Ok(1));
    }

    #[test]
    fn memory_quantities_become_bytes() {
        assert_eq!(units("16Gi"), Ok(16 * 1024 * 1024 * 1024));
        assert_eq!(units("128Mi"), Ok(128 * 1024 * 1024));
        assert_eq!(units("1G"), Ok(1_000_000_000));
        assert_eq!(units("1e3"), Ok(1000));
        assert_eq!(units("123"), Ok(123));
    }

    #[test]
    fn garbage_is_rejected_with_the_text() {
        assert_eq!(units("lots"), Err(InvalidQuantity("lots".into())));
        assert_eq!(units("1Xi"), Err(InvalidQuantity("1Xi".into())));
        assert!(units("").is_err());
    }
}
