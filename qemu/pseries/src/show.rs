//! Report formatting: values in hex, an absent value as `none` (no `Some(...)` in the report).

use core::fmt;

/// An optional value printed in hex (`0x..`), or `none`.
pub struct Hex<T>(pub Option<T>);

impl<T: fmt::LowerHex> fmt::Display for Hex<T> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.0 {
            Some(value) => write!(f, "{value:#x}"),
            None => f.write_str("none"),
        }
    }
}

/// An hypervisor answer: a status below zero in decimal (`-4`), anything else in hex.
pub struct Answer(pub i64);

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.0 < 0 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{:#x}", self.0)
        }
    }
}
