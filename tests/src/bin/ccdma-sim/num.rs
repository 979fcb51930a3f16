//! The one number parser of the CLI: sizes, addresses, counts.
//!
//! Grammar (case-insensitive, `_` allowed between digits):
//!
//! ```text
//! number = ( "0x" HEXDIGITS | DECDIGITS ) [ unit ]
//! unit   = ( "k" | "m" | "g" | "t" ) [ "ib" ]           powers of 1024 (`KB`, `GB`, ... are refused:
//!                                                        ambiguous)
//!        | "b"                                           bytes, decimal numbers only
//! ```
//!
//! The digits are taken first and the unit is what follows them, so `0x1b` is 27 (the `b` is a hex
//! digit) and `0xb` is 11; a hex number cannot carry a bare `b` unit.

/// Parse `1500`, `64K`, `4MiB`, `6G`, `0x800000`, `0x10M`, `1_000`.
pub fn parse_number(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (radix, body) = match t.strip_prefix("0x") {
        Some(rest) => (16, rest),
        None => (10, t.as_str()),
    };
    let digits_end = body.find(|c: char| !(c.is_digit(radix) || c == '_')).unwrap_or(body.len());
    let (digits, unit) = body.split_at(digits_end);
    let clean = digits.replace('_', "");
    if clean.is_empty() || digits.starts_with('_') {
        return Err(format!("`{s}` is not a number (decimal or 0x hex, optional K/M/G/T)"));
    }
    let shift = match unit.trim_start() {
        "" => 0,
        "b" if radix == 10 => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        u @ ("kb" | "mb" | "gb" | "tb") => {
            let p = &u[..1];
            return Err(format!(
                "`{s}`: `{u}` is ambiguous (powers of 1000 or 1024?): write `{}{}` or `{}{}iB` (powers of 1024)",
                digits,
                p.to_ascii_uppercase(),
                digits,
                p.to_ascii_uppercase()
            ));
        }
        u => return Err(format!("`{s}`: unknown unit `{u}` (K, M, G, T, as KiB too; B)")),
    };
    let value = u64::from_str_radix(&clean, radix).map_err(|_| format!("`{s}` overflows 64 bits"))?;
    value.checked_mul(1 << shift).ok_or_else(|| format!("`{s}` overflows 64 bits"))
}

/// [`parse_number`] into a `u32` (counts such as `--rounds`).
pub fn parse_u32(s: &str) -> Result<u32, String> {
    let v = parse_number(s)?;
    u32::try_from(v).map_err(|_| format!("`{s}` is larger than {}", u32::MAX))
}

/// `ADDR:SIZE` (pools, reserved ranges).
pub fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (addr, size) = s.split_once(':').ok_or_else(|| format!("`{s}`: expected ADDR:SIZE"))?;
    Ok((parse_number(addr)?, parse_number(size)?))
}

/// `4 KiB`, `1500 B`, `16 MiB`, `1.50 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            return if bytes % size == 0 {
                format!("{} {unit}", bytes / size)
            } else {
                format!("{:.2} {unit}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes} B")
}

/// A size as given, in units only when exact: `4 KiB`, `1500 B`.
pub fn size_label(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// `v` in hex with `_` every 4 digits, zero-padded to 8 digits below 4 GiB and to 16 above
/// (`0x0080_0000`, `0x0000_0008_0000_0000`): long addresses read at a glance.
pub fn grouped_hex(v: u64) -> String {
    let digits = if v > u64::from(u32::MAX) { 16 } else { 8 };
    let raw = format!("{v:0digits$x}");
    let groups: Vec<&str> = raw.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap_or("?")).collect();
    format!("0x{}", groups.join("_"))
}

/// `text` with every `0x` number of more than 4 digits written by [`grouped_hex`].
pub fn group_hex_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("0x") {
        out.push_str(&rest[..at]);
        let digits = rest[at + 2..].bytes().take_while(u8::is_ascii_hexdigit).count();
        let word = &rest[at..at + 2 + digits];
        match u64::from_str_radix(&word[2..], 16) {
            Ok(v) if digits > 4 => out.push_str(&grouped_hex(v)),
            _ => out.push_str(word),
        }
        rest = &rest[at + 2 + digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_with_and_without_units() {
        assert_eq!(parse_number("0"), Ok(0));
        assert_eq!(parse_number("1500"), Ok(1500));
        assert_eq!(parse_number("1500B"), Ok(1500));
        assert_eq!(parse_number("1_000"), Ok(1000));
        assert_eq!(parse_number(" 64 "), Ok(64));
        for (s, v) in [("64k", 64 << 10), ("64K", 64 << 10), ("64KiB", 64 << 10)] {
            assert_eq!(parse_number(s), Ok(v), "{s}");
        }
        assert_eq!(parse_number("4M"), Ok(4 << 20));
        assert_eq!(parse_number("4MiB"), Ok(4 << 20));
        assert_eq!(parse_number("6G"), Ok(6 << 30));
        assert_eq!(parse_number("64G"), Ok(64 << 30));
        assert_eq!(parse_number("2T"), Ok(2 << 40));
        assert_eq!(parse_number("4 MiB"), Ok(4 << 20));
    }

    #[test]
    fn hex_digits_are_never_taken_for_units() {
        assert_eq!(parse_number("0x800000"), Ok(0x80_0000));
        assert_eq!(parse_number("0X800000"), Ok(0x80_0000));
        assert_eq!(parse_number("0x1b"), Ok(0x1b));
        assert_eq!(parse_number("0x1B"), Ok(0x1b));
        assert_eq!(parse_number("0xb"), Ok(11));
        assert_eq!(parse_number("0xB"), Ok(11));
        assert_eq!(parse_number("0xdeadbeef"), Ok(0xdead_beef));
        assert_eq!(parse_number("0x1_0000_0000"), Ok(1 << 32));
        assert_eq!(parse_number("0x10M"), Ok(16 << 20));
        assert_eq!(parse_number("0x10MiB"), Ok(16 << 20));
        assert_eq!(parse_number("0xffffffffffffffff"), Ok(u64::MAX));
    }

    #[test]
    fn refusals() {
        for bad in
            ["", "x", "0x", "K", "12Q", "1.5M", "-1", "1e3", "0x_1", "_1", "4MM", "4Mib2", "4 K B", "0xg"]
        {
            assert!(parse_number(bad).is_err(), "`{bad}` should be refused");
        }
        // Overflow, with and without a unit.
        assert!(parse_number("18446744073709551616").is_err());
        assert!(parse_number("0x1_0000_0000_0000_0000").is_err());
        assert!(parse_number("0xffffffffffffffffK").is_err());
        assert!(parse_number("16777216T").is_err());
        assert_eq!(parse_number("16777215T"), Ok(16_777_215 << 40));
        // Decimal-looking units are refused, not read as powers of 1024.
        for bad in ["64kb", "6GB", "4MB", "1TB"] {
            assert!(parse_number(bad).unwrap_err().contains("ambiguous"), "{bad}");
        }
        // Error texts quote the input.
        assert!(parse_number("12Q").unwrap_err().contains("`12Q`"));
    }

    #[test]
    fn counts_and_ranges() {
        assert_eq!(parse_u32("4"), Ok(4));
        assert_eq!(parse_u32("0x10"), Ok(16));
        assert!(parse_u32("4G").is_err());
        assert_eq!(parse_range("0x800000:4M"), Ok((0x80_0000, 4 << 20)));
        assert_eq!(parse_range("0:1M"), Ok((0, 1 << 20)));
        assert!(parse_range("0x800000").is_err());
        assert!(parse_range("0x800000:").is_err());
    }

    #[test]
    fn labels() {
        assert_eq!(human(1500), "1.46 KiB");
        assert_eq!(human(4 << 20), "4 MiB");
        assert_eq!(human(64), "64 B");
        assert_eq!(size_label(1500), "1500 B");
        assert_eq!(size_label(256 << 10), "256 KiB");
    }
}
