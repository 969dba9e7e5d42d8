//! Explicit decoding of Redis replies: each function accepts exactly the reply shapes its command
//! can produce and says what it got otherwise. Nothing here infers a shape from the data.

use redis::Value;

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) | Value::SimpleString(_) | Value::VerbatimString { .. } => "a string",
        Value::Array(_) | Value::Set(_) => "an array",
        Value::Map(_) => "a map",
        _ => "another reply type",
    }
}

/// A bulk or simple string; nil is `None`.
pub(crate) fn optional_text(value: Value) -> Result<Option<String>, String> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| "a string that is not UTF-8".to_owned()),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => Ok(Some(text)),
        other => Err(format!("expected a string or nil, got {}", describe(&other))),
    }
}

/// A bulk string as bytes (binary records, ids); nil is `None`.
pub(crate) fn optional_bytes(value: Value) -> Result<Option<Vec<u8>>, String> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => Ok(Some(bytes)),
        Value::SimpleString(text) => Ok(Some(text.into_bytes())),
        other => Err(format!("expected a string or nil, got {}", describe(&other))),
    }
}

/// A string that must be present.
pub(crate) fn text(value: Value) -> Result<String, String> {
    optional_text(value)?.ok_or_else(|| "expected a string, got nil".to_owned())
}

/// An array of exactly `len` entries (HMGET's reply).
pub(crate) fn array_of(value: Value, len: usize) -> Result<Vec<Value>, String> {
    match value {
        Value::Array(items) if items.len() == len => Ok(items),
        Value::Array(items) => Err(format!("expected {len} entries, got {}", items.len())),
        other => Err(format!("expected an array, got {}", describe(&other))),
    }
}

/// An array of strings (LRANGE's, ZRANGE's reply).
pub(crate) fn texts(value: Value) -> Result<Vec<String>, String> {
    match value {
        Value::Array(items) | Value::Set(items) => items.into_iter().map(text).collect(),
        other => Err(format!("expected an array of strings, got {}", describe(&other))),
    }
}

/// A non-negative integer (LLEN's reply).
pub(crate) fn count(value: Value) -> Result<u64, String> {
    match value {
        Value::Int(n) => u64::try_from(n).map_err(|_| format!("expected a count, got {n}")),
        other => Err(format!("expected an integer, got {}", describe(&other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn each_shape_is_accepted_only_where_it_belongs() {
        assert_eq!(optional_text(Value::Nil), Ok(None));
        assert_eq!(optional_text(bulk("x")), Ok(Some("x".into())));
        assert!(optional_text(Value::Array(vec![bulk("x")])).is_err_and(|e| e.contains("got an array")));
        assert_eq!(
            texts(Value::Array(vec![bulk("a"), bulk("b")])),
            Ok(vec!["a".into(), "b".into()])
        );
        // The shape that used to be misread: a two-entry list is two strings, whatever they hold.
        assert_eq!(
            texts(Value::Array(vec![bulk("{\"a\":1}"), bulk("{\"a\":2}")])).map(|t| t.len()),
            Ok(2)
        );
        assert!(texts(bulk("a")).is_err_and(|e| e.contains("got a string")));
        assert!(texts(Value::Array(vec![Value::Nil])).is_err_and(|e| e.contains("got nil")));
        assert_eq!(count(Value::Int(3)), Ok(3));
        assert!(count(Value::Int(-1)).is_err());
        assert!(array_of(Value::Array(vec![Value::Nil]), 2).is_err_and(|e| e.contains("expected 2 entries, got 1")));
        assert!(optional_text(Value::BulkString(vec![0xff])).is_err_and(|e| e.contains("UTF-8")));
    }
}
