//! Memory and walltime strings: parsing (what users type) and the shared `HH:MM:SS` format
//! (what each batch system writes is its module's, in [`crate::systems`]). The rules are
//! documented in `templates/README.md`.

use thiserror::Error;

/// A memory or walltime string that cannot be understood. Each message names the input
/// and shows a valid example.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnitError {
    #[error("unknown unit `{unit}` in memory `{input}`; use e.g. 28GB or 28GiB")]
    UnknownUnit { unit: String, input: String },
    #[error("invalid memory `{input}`: {reason}; use e.g. 28GB, 28GiB or 1.5 GB")]
    BadMemory { input: String, reason: &'static str },
    #[error("invalid walltime `{input}`: {reason}; use e.g. 02:00:00, 1-12:00:00 or 90 (minutes)")]
    BadWalltime { input: String, reason: &'static str },
}

const KI: u64 = 1024;

/// The multiplier of a memory unit (case-insensitive). As in dask, `k`/`kb`, `m`/`mb`, `g`/`gb`,
/// `t`/`tb`, `p`/`pb` are decimal (powers of 1000); `ki`/`kib` … `pi`/`pib` are binary.
fn unit_multiplier(unit: &str) -> Option<u64> {
    let u = unit.to_ascii_lowercase();
    let (stem, binary) = match u.strip_suffix("ib").or_else(|| u.strip_suffix('i')) {
        Some(stem) => (stem, true),
        None => (u.strip_suffix('b').unwrap_or(&u), false),
    };
    let power = match stem {
        "" if !binary => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        _ => return None,
    };
    Some(if binary { KI } else { 1000 }.pow(power))
}

/// Parses a memory size into bytes: a non-negative decimal number, optional spaces, and an
/// optional unit (`28GB`, `28GiB`, `500MB`, `1.5 GB`, `100000`, `28gb`). Fractions of a byte are
/// truncated, as in dask. Zero is refused.
pub fn parse_memory(input: &str) -> Result<u64, UnitError> {
    let bad = |reason| UnitError::BadMemory { input: input.to_string(), reason };
    let s = input.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim_start());
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let frac = frac.trim_end_matches('0');
    if int.is_empty() && frac.is_empty() {
        return Err(bad("it does not start with a number"));
    }
    if frac.contains('.') {
        return Err(bad("the number has more than one decimal point"));
    }
    let multiplier = unit_multiplier(unit)
        .ok_or_else(|| UnitError::UnknownUnit { unit: unit.to_string(), input: input.to_string() })?;
    // Exact arithmetic: bytes = floor(digits * multiplier / 10^frac_len).
    let digits: String = format!("{int}{frac}");
    let too_large = || bad("it is too large");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(too_large());
    }
    let mantissa: u128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| too_large())? };
    let scaled = mantissa.checked_mul(u128::from(multiplier)).ok_or_else(too_large)?;
    let bytes = scaled / 10u128.pow(frac.len().min(38) as u32);
    let bytes = u64::try_from(bytes).map_err(|_| too_large())?;
    if bytes == 0 {
        return Err(bad("it must be at least one byte"));
    }
    Ok(bytes)
}

/// Parses a walltime into seconds. Accepted: `HH:MM:SS` (hours unbounded, e.g. `48:00:00`),
/// `D-HH:MM:SS` (hours < 24), and a whole number of minutes (`90`). Two fields (`MM:SS` or
/// `HH:MM`?) are refused as ambiguous between batch systems. Zero is refused.
pub fn parse_walltime(input: &str) -> Result<u64, UnitError> {
    let bad = |reason| UnitError::BadWalltime { input: input.to_string(), reason };
    let num = |s: &str, what| -> Result<u64, UnitError> {
        if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(what));
        }
        s.parse().map_err(|_| bad(what))
    };
    let s = input.trim();
    let (days, clock) = match s.split_once('-') {
        Some((d, rest)) => (Some(num(d, "the days before `-` are not a number")?), rest),
        None => (None, s),
    };
    let fields: Vec<&str> = clock.split(':').collect();
    let seconds = match (days, fields.as_slice()) {
        (None, [minutes]) => num(minutes, "expected HH:MM:SS, D-HH:MM:SS or minutes")? * 60,
        (_, [h, m, sec]) => {
            let (h, m, sec) = (
                num(h, "hours are not a number")?,
                num(m, "minutes are not a number")?,
                num(sec, "seconds are not a number")?,
            );
            if m >= 60 || sec >= 60 {
                return Err(bad("minutes and seconds must be below 60"));
            }
            if days.is_some() && h >= 24 {
                return Err(bad("hours must be below 24 after a day count"));
            }
            // At most 12 digits per field: no overflow.
            days.unwrap_or(0) * 86_400 + h * 3600 + m * 60 + sec
        }
        (None, [_, _]) => return Err(bad("two fields are ambiguous (MM:SS or HH:MM?)")),
        _ => return Err(bad("expected HH:MM:SS, D-HH:MM:SS or minutes")),
    };
    if seconds == 0 {
        return Err(bad("it must be longer than zero"));
    }
    Ok(seconds)
}

/// `HH:MM:SS` with hours unbounded and at least two digits: 5400 → `01:30:00`, 2 days → `48:00:00`.
pub fn format_walltime(seconds: u64) -> String {
    format!("{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GI: u64 = KI * KI * KI;

    #[test]
    fn memory_examples() {
        for (s, n) in [
            ("28GB", 28_000_000_000),
            ("28 GB", 28_000_000_000),
            ("28gb", 28_000_000_000),
            ("28G", 28_000_000_000),
            ("28GiB", 28 * GI),
            ("28gi", 28 * GI),
            ("500MB", 500_000_000),
            ("1.5 GB", 1_500_000_000),
            (".5kB", 500),
            ("100000", 100_000),
            ("100000B", 100_000),
            (" 2TiB ", 2 * GI * KI),
        ] {
            assert_eq!(parse_memory(s), Ok(n), "{s}");
        }
        let e = parse_memory("28 gigs").unwrap_err();
        assert_eq!(e.to_string(), "unknown unit `gigs` in memory `28 gigs`; use e.g. 28GB or 28GiB");
        for s in ["", "GB", "1.2.3GB", "0GB", "0.1B", "-1GB", "1e9", "99999999999PB", "١٢GB"] {
            assert!(parse_memory(s).is_err(), "{s}");
        }
    }

    #[test]
    fn walltime_examples() {
        for (s, n) in [("02:00:00", 7200), ("48:00:00", 172_800), ("1-12:00:00", 129_600), ("90", 5400), ("0:0:1", 1)] {
            assert_eq!(parse_walltime(s), Ok(n), "{s}");
        }
        for s in ["", "1:30", "00:00:00", "0", "1:60:00", "1-24:00:00", "1-90", "2h", "-1", "1:2:3:4", "+5"] {
            assert!(parse_walltime(s).is_err(), "{s}");
        }
        let e = parse_walltime("2h").unwrap_err().to_string();
        assert!(e.contains("`2h`") && e.contains("02:00:00"), "{e}");
        assert_eq!(format_walltime(5400), "01:30:00");
        assert_eq!(format_walltime(360_000), "100:00:00");
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = parse_memory(&s);
            let _ = parse_walltime(&s);
        }

        #[test]
        fn parsers_never_panic_on_unit_like_input(s in "[0-9.: -]{0,20}[a-zA-Z]{0,4}") {
            let _ = parse_memory(&s);
            let _ = parse_walltime(&s);
        }

        #[test]
        fn memory_round_trips(n in 1u64..u64::MAX / 2) {
            prop_assert_eq!(parse_memory(&n.to_string()), Ok(n));
            prop_assert_eq!(parse_memory(&format!("{n} B")), Ok(n));
        }

        #[test]
        fn walltime_round_trips(s in 1u64..10_000_000_000) {
            prop_assert_eq!(parse_walltime(&format_walltime(s)), Ok(s));
        }
    }
}
