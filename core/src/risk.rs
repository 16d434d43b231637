//! The risk categories, lowest to highest.

use std::fmt;

/// What a statement can do, ordered from harmless to dangerous.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Risk {
    /// Settings, transaction control, DISCARD, LISTEN, DEALLOCATE, CLOSE.
    Session,
    /// Reads that involve no sensitive column.
    Read,
    /// Reads that reference a column labelled sensitive.
    SensitiveRead,
    /// Data changes, row locks, sequence advances.
    Write,
    /// Schema changes.
    Ddl,
    /// Grants, roles, ownership, row security, security labels.
    Privilege,
    /// Server administration: files, programs, databases, extensions, maintenance.
    Admin,
}

impl Risk {
    /// Every category, lowest first.
    pub const ALL: [Risk; 7] = [
        Risk::Session,
        Risk::Read,
        Risk::SensitiveRead,
        Risk::Write,
        Risk::Ddl,
        Risk::Privilege,
        Risk::Admin,
    ];

    /// The SQL-facing name (`sensitive_read`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Session => "session",
            Risk::Read => "read",
            Risk::SensitiveRead => "sensitive_read",
            Risk::Write => "write",
            Risk::Ddl => "ddl",
            Risk::Privilege => "privilege",
            Risk::Admin => "admin",
        }
    }

    /// Parse the SQL-facing name.
    pub fn parse(name: &str) -> Option<Risk> {
        Risk::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(name.trim()))
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_ordered_lowest_to_highest() {
        let mut sorted = Risk::ALL;
        sorted.sort();
        assert_eq!(sorted, Risk::ALL);
        assert!(Risk::Write < Risk::Ddl && Risk::Ddl < Risk::Privilege);
    }

    #[test]
    fn names_round_trip() {
        for r in Risk::ALL {
            assert_eq!(Risk::parse(r.as_str()), Some(r));
        }
        assert_eq!(Risk::parse("WRITE"), Some(Risk::Write));
        assert_eq!(Risk::parse("delete"), None);
    }
}
