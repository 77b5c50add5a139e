//! What a stage that computes with numbers takes for one: a JSON number, or a string that
//! holds a decimal number, as producers that change a field's type write it.
//!
//! A string counts when it is a decimal number in full, with no spaces: an optional sign,
//! digits with an optional fraction, an optional exponent (`"100"`, `"-2.5"`, `".5"`, `"1e3"`,
//! which is 1000). `"NaN"`, `"Infinity"` and numbers too large for a double (`"1e999"`) are
//! not finite, and no stage computes with them; anything else (`"abc"`, `"0x10"`, `" 7"`,
//! `true`, an object) is not a number.

use serde_json::Value;

/// Why a value is not a number a stage can compute with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotANumber {
    /// Missing or null.
    Missing,
    /// A string that is no decimal number, a boolean, a list or an object.
    Type,
    /// `NaN`, an infinity, or a number beyond a double's range.
    NonFinite,
}

/// The value as a finite number (see the module's documentation).
pub fn number_of(value: Option<&Value>) -> Result<f64, NotANumber> {
    match value {
        None | Some(Value::Null) => Err(NotANumber::Missing),
        Some(Value::Number(number)) => number.as_f64().filter(|n| n.is_finite()).ok_or(NotANumber::NonFinite),
        Some(Value::String(text)) => number_in_text(text),
        Some(_) => Err(NotANumber::Type),
    }
}

/// A string as a finite number, when it is one.
pub fn number_in_text(text: &str) -> Result<f64, NotANumber> {
    // Rust's parser also takes "inf", "NaN" and "infinity" in any case: only digits make a
    // finite number, so these are told apart as not finite.
    match text.parse::<f64>() {
        Ok(number) if number.is_finite() => Ok(number),
        Ok(_) => Err(NotANumber::NonFinite),
        Err(_) => Err(NotANumber::Type),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_and_numeric_strings_are_numbers_and_nothing_else_is() {
        let cases: &[(Option<Value>, Result<f64, NotANumber>)] = &[
            (Some(json!(100)), Ok(100.0)),
            (Some(json!(-2.5)), Ok(-2.5)),
            (Some(json!("100")), Ok(100.0)),
            (Some(json!("1e3")), Ok(1000.0)),
            (Some(json!("7")), Ok(7.0)),
            (Some(json!("9")), Ok(9.0)),
            (Some(json!("-0.5")), Ok(-0.5)),
            (Some(json!(".5")), Ok(0.5)),
            (Some(json!("abc")), Err(NotANumber::Type)),
            (Some(json!("")), Err(NotANumber::Type)),
            (Some(json!(" 7")), Err(NotANumber::Type)),
            (Some(json!("0x10")), Err(NotANumber::Type)),
            (Some(json!("1,000")), Err(NotANumber::Type)),
            (Some(json!(true)), Err(NotANumber::Type)),
            (Some(json!([1])), Err(NotANumber::Type)),
            (Some(json!({"n": 1})), Err(NotANumber::Type)),
            (Some(json!("NaN")), Err(NotANumber::NonFinite)),
            (Some(json!("Infinity")), Err(NotANumber::NonFinite)),
            (Some(json!("-inf")), Err(NotANumber::NonFinite)),
            (Some(json!("1e999")), Err(NotANumber::NonFinite)),
            (Some(Value::Null), Err(NotANumber::Missing)),
            (None, Err(NotANumber::Missing)),
        ];
        for (value, want) in cases {
            assert_eq!(number_of(value.as_ref()), *want, "{value:?}");
        }
    }
}
