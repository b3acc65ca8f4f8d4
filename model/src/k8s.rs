//! Kubernetes name and quantity rules (the subset AION's objects need).

/// RFC 1123 label: 1–63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: ≤ 253, dot-separated labels (each label's length is not limited
/// separately by Kubernetes beyond the overall rule, but each must be a valid label shape).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// IANA service name (container port names): 1–15 of `[a-z0-9-]`, at least one letter, no
/// leading/trailing `-`, no `--`.
pub fn is_iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// A parsed Kubernetes quantity: the number as written and its suffix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantity {
    /// Value in base units (approximate, f64), e.g. `500m` → 0.5, `1Ki` → 1024.
    pub value: f64,
}

/// `resource.ParseQuantity`: `<signedNumber><suffix>` where suffix is a binary SI suffix
/// (`Ki Mi Gi Ti Pi Ei`), a decimal SI suffix (`n u m "" k M G T P E`) or a decimal exponent
/// (`e3`, `E-2`). Returns None when Kubernetes would refuse it (`resource.MustParse` panics).
pub fn parse_quantity(s: &str) -> Option<Quantity> {
    let b = s.as_bytes();
    let mut i = 0;
    let neg = match b.first() {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let num_start = i;
    let mut int_digits = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
        int_digits += 1;
    }
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
            frac_digits += 1;
        }
    }
    if int_digits + frac_digits == 0 {
        return None;
    }
    let number: f64 = s[num_start..i].parse().ok()?;
    let suffix = &s[i..];
    let mult = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        _ => {
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            10f64.powi(exp.parse::<i32>().ok()?)
        }
    };
    let v = number * mult;
    Some(Quantity {
        value: if neg { -v } else { v },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(is_dns1123_label("data-sweeper-001"));
        assert!(!is_dns1123_label("Data-001"));
        assert!(!is_dns1123_label("a_b-001"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(!is_dns1123_label("-a"));
        assert!(is_dns1123_subdomain("edge.example.com"));
        assert!(!is_dns1123_subdomain("edge..com"));
    }

    #[test]
    fn svc_names() {
        assert!(is_iana_svc_name("ui-backend"));
        assert!(!is_iana_svc_name("ui-front-mobile-x"));
        assert!(!is_iana_svc_name("8080"));
        assert!(!is_iana_svc_name("a--b"));
    }

    #[test]
    fn quantities() {
        for ok in [
            "1", "500m", "64Mi", "1.5", ".5", "1.", "1e3", "1E-2", "2Gi", "+1", "0.1k",
        ] {
            assert!(parse_quantity(ok).is_some(), "{ok}");
        }
        for bad in ["", "abc", "1GB", "1 Gi", "Mi", "1e", "1.2.3", "1mi", "xxxx"] {
            assert!(parse_quantity(bad).is_none(), "{bad}");
        }
        assert_eq!(parse_quantity("500m").unwrap().value, 0.5);
        assert_eq!(parse_quantity("1Ki").unwrap().value, 1024.0);
        assert!(parse_quantity("-1").unwrap().value < 0.0);
    }
}
