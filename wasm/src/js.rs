//! Small helpers to build and read plain JS objects.

use js_sys::{Object, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};

/// A plain object built field by field.
pub struct Obj(Object);

impl Obj {
    pub fn new() -> Obj {
        Obj(Object::new())
    }

    pub fn set(self, key: &str, value: impl Into<JsValue>) -> Obj {
        // Setting a property on a fresh plain object cannot fail.
        let _ = Reflect::set(&self.0, &JsValue::from_str(key), &value.into());
        self
    }

    pub fn set_opt<T: Into<JsValue>>(self, key: &str, value: Option<T>) -> Obj {
        match value {
            Some(v) => self.set(key, v),
            None => self,
        }
    }

    pub fn bytes(self, key: &str, value: &[u8]) -> Obj {
        self.set(key, Uint8Array::from(value))
    }

    pub fn into<T: JsCast>(self) -> T {
        self.0.unchecked_into()
    }
}

/// A field of a caller's options object; `undefined` and `null` read as `None`.
pub fn field(options: &JsValue, key: &str) -> Option<JsValue> {
    if !options.is_object() {
        return None;
    }
    Reflect::get(options, &JsValue::from_str(key)).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

/// Why a caller's options are refused: a `TypeError` naming the field.
pub fn bad_option(key: &str, expected: &str) -> JsValue {
    js_sys::TypeError::new(&format!("option `{key}` must be {expected}")).into()
}

pub fn string(options: &JsValue, key: &str) -> Result<Option<String>, JsValue> {
    field(options, key).map(|v| v.as_string().ok_or_else(|| bad_option(key, "a string"))).transpose()
}

/// A whole number in `range`.
pub fn number(options: &JsValue, key: &str, range: std::ops::RangeInclusive<u64>) -> Result<Option<u64>, JsValue> {
    let expected = || bad_option(key, &format!("a whole number from {} to {}", range.start(), range.end()));
    field(options, key)
        .map(|v| {
            let n = v.as_f64().ok_or_else(expected)?;
            let whole = n.fract() == 0.0 && n >= *range.start() as f64 && n <= *range.end() as f64;
            if whole {
                Ok(n as u64)
            } else {
                Err(expected())
            }
        })
        .transpose()
}

pub fn bytes(options: &JsValue, key: &str) -> Result<Option<Vec<u8>>, JsValue> {
    field(options, key)
        .map(|v| v.dyn_into::<Uint8Array>().map(|a| a.to_vec()).map_err(|_| bad_option(key, "a Uint8Array")))
        .transpose()
}
