//! Golden vectors recorded from the Go implementation, in `core/tests/vectors`
//! (see its README).

use std::path::PathBuf;

use serde_json::Value;

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("vectors")
}

/// Parses one vector file; panics with the path when it is missing.
pub fn load(name: &str) -> Value {
    let path = dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read golden vectors at {}: {e} (they are part of the repository: is the checkout whole?)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

pub fn hex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex field is a string")).expect("valid hex")
}

pub fn u64_of(v: &Value) -> u64 {
    v.as_u64().expect("unsigned integer field")
}
