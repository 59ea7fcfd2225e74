//! Checking a request field by field into a typed value. Each field's parse is a
//! [`Checked`]: its value, or the violations it found. [`All::all`] joins a tuple of them into
//! the tuple of values, or every violation of every field at once, so a handler never holds a
//! half-parsed request and never needs a "validated fields missing" branch.

use std::fmt::Display;

use crate::error::{AppError, ErrorCode, Violations};

/// The field violations of a request (field path, description), in the order they were
/// found; a field keeps its first one, as [`Violations::add`] does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Invalid(Vec<(String, String)>);

/// A field's parsed value, or why it did not parse.
pub type Checked<T> = Result<T, Invalid>;

impl Invalid {
    /// One violation.
    pub fn one(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self(vec![(field.into(), description.into())])
    }

    /// The violations, in order.
    pub fn violations(&self) -> &[(String, String)] {
        &self.0
    }

    /// Appends `other`'s violations, skipping fields already reported (the limits table
    /// checks every field first; a later check of an oversized field would only repeat it).
    fn merge(&mut self, other: Invalid) {
        for (field, description) in other.0 {
            if !self.0.iter().any(|(f, _)| *f == field) {
                self.0.push((field, description));
            }
        }
    }
}

impl From<Violations> for Invalid {
    fn from(v: Violations) -> Self {
        match v.finish() {
            Ok(()) => Self::default(),
            Err(e) => Self(e.violations),
        }
    }
}

impl From<Invalid> for AppError {
    /// `INVALID_ARGUMENT` with every violation, worded as [`Violations::finish`] words it.
    fn from(i: Invalid) -> Self {
        let summary = i.0.iter().map(|(f, d)| format!("{f}: {d}")).collect::<Vec<_>>().join("; ");
        let mut e = AppError::new(ErrorCode::InvalidArgument, format!("invalid request: {summary}"));
        e.violations = i.0;
        e
    }
}

impl From<Invalid> for tonic::Status {
    fn from(i: Invalid) -> Self {
        AppError::from(i).into()
    }
}

/// A parse result as one field's check: its error becomes the field's violation.
pub fn field<T, E: Display>(name: &str, r: Result<T, E>) -> Checked<T> {
    r.map_err(|e| Invalid::one(name, e.to_string()))
}

/// A rule on a field: `ok`, or the violation `description` on `name`.
pub fn rule(ok: bool, name: &str, description: impl FnOnce() -> String) -> Checked<()> {
    if ok { Ok(()) } else { Err(Invalid::one(name, description())) }
}

/// Runs checks that record into a collector and always produce a value (a page request, a
/// subscription spec): the value when nothing was recorded, the violations otherwise.
pub fn collecting<T>(f: impl FnOnce(&mut Violations) -> T) -> Checked<T> {
    let mut v = Violations::new();
    let value = f(&mut v);
    let invalid = Invalid::from(v);
    if invalid.0.is_empty() { Ok(value) } else { Err(invalid) }
}

/// A tuple of field checks joined into one.
pub trait All {
    /// The tuple of parsed values.
    type Out;
    /// Every value, or every violation of every field in tuple order.
    fn all(self) -> Checked<Self::Out>;
}

macro_rules! all_tuple {
    ($($t:ident $v:ident),+) => {
        impl<$($t),+> All for ($(Checked<$t>,)+) {
            type Out = ($($t,)+);
            fn all(self) -> Checked<Self::Out> {
                match self {
                    ($(Ok($v),)+) => Ok(($($v,)+)),
                    ($($v,)+) => {
                        let mut invalid = Invalid::default();
                        $(if let Err(e) = $v { invalid.merge(e); })+
                        Err(invalid)
                    }
                }
            }
        }
    };
}

all_tuple!(A a);
all_tuple!(A a, B b);
all_tuple!(A a, B b, C c);
all_tuple!(A a, B b, C c, D d);
all_tuple!(A a, B b, C c, D d, E e);
all_tuple!(A a, B b, C c, D d, E e, F f);
all_tuple!(A a, B b, C c, D d, E e, F f, G g);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_violation_in_order_and_first_per_field() {
        let r: Checked<((), u8, u8)> =
            (Err(Invalid::one("a", "too long")), field::<u8, _>("b", Err("bad")), Err(Invalid::one("a", "again")))
                .all();
        let e = AppError::from(r.unwrap_err());
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert_eq!(e.violations, vec![("a".into(), "too long".into()), ("b".into(), "bad".into())]);
        assert_eq!(e.message, "invalid request: a: too long; b: bad");
    }

    #[test]
    fn same_error_as_violations() {
        let mut v = Violations::new();
        v.add("x", "is required");
        v.add("y", "must be between 1 and 50");
        let old = v.finish().unwrap_err();
        let new = AppError::from(
            (rule(false, "x", || "is required".into()), rule(false, "y", || "must be between 1 and 50".into()))
                .all()
                .unwrap_err(),
        );
        assert_eq!((old.code, old.message, old.violations), (new.code, new.message, new.violations));
    }

    #[test]
    fn values_when_clean() {
        assert_eq!((Ok::<_, Invalid>(1), collecting(|_| "x")).all(), Ok((1, "x")));
        assert!(collecting(|v| v.add("p", "q")).is_err());
    }
}
