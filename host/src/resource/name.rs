//! Names of tenants, buses, rules, queues, targets and plugins.

/// What a valid name looks like, for error messages.
pub const NAME_RULE: &str = "must be 1-64 characters of A-Z a-z 0-9 . _ - and not start with '.'";

/// Whether `name` is a valid resource name: 1–64 of `A-Z a-z 0-9 . _ -`,
/// not starting with `.` (names appear in URLs, file names and metric labels).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("orders-2024.v1_x"));
        assert!(!valid_name(""));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
