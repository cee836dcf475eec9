//! `numeric` patterns: `=`, `<`, `<=`, `>`, `>=` and two-sided ranges over JSON numbers.
//!
//! Numbers are compared by value as IEEE 754 doubles (like event-ruler), so `3`, `3.0`
//! and `3e0` are equal. For the rule-set index a double is mapped to a `u64` whose
//! unsigned order is the numeric order ([`sortable`]); an exclusive bound then becomes
//! the neighbouring integer, so every range is a closed integer interval.

use serde_json::Value;

/// One end of a range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Bound {
    pub(crate) value: f64,
    pub(crate) inclusive: bool,
}

/// A validated numeric condition; a missing end is unbounded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Range {
    pub(crate) lower: Option<Bound>,
    pub(crate) upper: Option<Bound>,
}

/// A numeric-expression error: the offending element's index (if any) and the reason.
pub(crate) type RangeError = (Option<usize>, String);

impl Range {
    /// Parses the array of a `numeric` expression, e.g. `[">", 0, "<=", 5]`.
    ///
    /// Accepted shapes: `["=", n]`; a lower bound (`>`/`>=`) optionally followed by an
    /// upper bound (`<`/`<=`); or an upper bound alone. The lower bound must be less
    /// than the upper bound.
    pub(crate) fn parse(items: &[Value]) -> Result<Self, RangeError> {
        if items.is_empty() {
            return Err((None, "numeric expression must not be empty".into()));
        }
        let op = |i: usize| -> Result<&str, RangeError> {
            match items.get(i) {
                Some(Value::String(s)) if matches!(s.as_str(), "=" | "<" | "<=" | ">" | ">=") => {
                    Ok(s.as_str())
                }
                Some(other) => Err((
                    Some(i),
                    format!("unrecognized numeric operator {other}: expected =, <, <=, > or >="),
                )),
                None => Err((None, "numeric expression is missing an operator".into())),
            }
        };
        let number = |i: usize, op: &str| -> Result<f64, RangeError> {
            match items.get(i) {
                Some(Value::Number(n)) => n
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .map(normalize)
                    .ok_or_else(|| (Some(i), format!("value of {op} is not a finite number"))),
                Some(_) => Err((Some(i), format!("value of {op} must be a number"))),
                None => Err((None, format!("operator {op} is missing its number"))),
            }
        };
        let first = op(0)?;
        let value = number(1, first)?;
        let (range, used) = match first {
            "=" => {
                let b = Some(Bound {
                    value,
                    inclusive: true,
                });
                (Self { lower: b, upper: b }, 2)
            }
            "<" | "<=" => (
                Self {
                    lower: None,
                    upper: Some(Bound {
                        value,
                        inclusive: first == "<=",
                    }),
                },
                2,
            ),
            _ => {
                let lower = Some(Bound {
                    value,
                    inclusive: first == ">=",
                });
                if items.len() <= 2 {
                    (Self { lower, upper: None }, 2)
                } else {
                    let second = op(2)?;
                    if !matches!(second, "<" | "<=") {
                        return Err((
                            Some(2),
                            format!(
                                "bad numeric range: a lower bound must be followed by < or <=, not {second}"
                            ),
                        ));
                    }
                    let top = number(3, second)?;
                    if value >= top {
                        return Err((
                            Some(3),
                            format!(
                                "bad numeric range: lower bound {value} must be less than upper bound {top}"
                            ),
                        ));
                    }
                    let upper = Some(Bound {
                        value: top,
                        inclusive: second == "<=",
                    });
                    (Self { lower, upper }, 4)
                }
            }
        };
        if items.len() > used {
            return Err((Some(used), "too many elements in numeric expression".into()));
        }
        Ok(range)
    }

    /// Whether `x` lies in the range.
    pub(crate) fn contains(&self, x: f64) -> bool {
        let x = normalize(x);
        let above = self.lower.is_none_or(|b| {
            if b.inclusive {
                x >= b.value
            } else {
                x > b.value
            }
        });
        let below = self.upper.is_none_or(|b| {
            if b.inclusive {
                x <= b.value
            } else {
                x < b.value
            }
        });
        above && below
    }

    /// The range as a closed interval of [`sortable`] keys, or `None` if it is empty.
    pub(crate) fn key_interval(&self) -> Option<(u64, u64)> {
        let first = match self.lower {
            None => 0,
            Some(b) if b.inclusive => sortable(b.value),
            Some(b) => sortable(b.value).checked_add(1)?,
        };
        let last = match self.upper {
            None => u64::MAX,
            Some(b) if b.inclusive => sortable(b.value),
            Some(b) => sortable(b.value).checked_sub(1)?,
        };
        (first <= last).then_some((first, last))
    }
}

/// Folds `-0.0` into `0.0` so that equal numbers have one representation.
pub(crate) fn normalize(x: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x }
}

/// Maps a finite double to a `u64` with the same order (after [`normalize`]).
pub(crate) fn sortable(x: f64) -> u64 {
    let bits = normalize(x).to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn range(v: Value) -> Result<Range, RangeError> {
        Range::parse(v.as_array().unwrap())
    }

    #[test]
    fn shapes() {
        let r = range(json!([">", 0, "<=", 5])).unwrap();
        assert!(!r.contains(0.0));
        assert!(r.contains(0.1));
        assert!(r.contains(5.0));
        assert!(!r.contains(5.01));
        let eq = range(json!(["=", 3.018e2])).unwrap();
        assert!(eq.contains(301.8));
        assert!(!eq.contains(301.80001));
        let lt = range(json!(["<", -1])).unwrap();
        assert!(lt.contains(-1e300));
        assert!(!lt.contains(-1.0));
        let ge = range(json!([">=", 10])).unwrap();
        assert!(ge.contains(10.0));
        assert!(!ge.contains(9.999));
    }

    #[test]
    fn zero_signs_are_equal() {
        let r = range(json!(["=", 0])).unwrap();
        assert!(r.contains(-0.0));
        assert_eq!(sortable(-0.0), sortable(0.0));
    }

    #[test]
    fn sortable_preserves_order() {
        let xs = [-1e308, -5.5, -1.0, -1e-300, 0.0, 1e-300, 1.0, 2.5, 1e308];
        for pair in xs.windows(2) {
            assert!(sortable(pair[0]) < sortable(pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn key_intervals() {
        let r = range(json!([">", 1, "<", 2])).unwrap();
        let (a, b) = r.key_interval().unwrap();
        assert!(a > sortable(1.0) && a <= sortable(1.0000001));
        assert!(b < sortable(2.0));
        assert_eq!(
            range(json!([">=", 1])).unwrap().key_interval(),
            Some((sortable(1.0), u64::MAX))
        );
    }

    #[test]
    fn invalid() {
        let cases = [
            (json!([]), "empty"),
            (json!([">", 5, "<", 1]), "less than"),
            (json!([">", 5, "<", 5]), "less than"),
            (json!([">", 1, ">", 2]), "followed by"),
            (json!(["<", 1, ">", 0]), "too many"),
            (json!(["=", "1"]), "must be a number"),
            (json!(["==", 1]), "unrecognized"),
            (json!([">"]), "missing"),
            (json!([">", 1, "<"]), "missing"),
            (json!([1, ">"]), "unrecognized"),
            (json!(["=", 1, "=", 1]), "too many"),
            (json!([">", 0, "<", 1, 2]), "too many"),
        ];
        for (v, want) in cases {
            let err = range(v.clone()).unwrap_err();
            assert!(err.1.contains(want), "{v}: {err:?}");
        }
        assert_eq!(range(json!([">", 5, "<", 1])).unwrap_err().0, Some(3));
    }
}
