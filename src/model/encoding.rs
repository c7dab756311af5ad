//! String forms byte-exact with Effect (SPEC §2), and the validation of the
//! string-level arguments of the eight calls (SPEC §6).
//!
//! - `RunnerAddress`: `host:port`, parsed on the LAST `:`.
//! - `ShardId`: `group:id`, parsed on the LAST `:`.
//! - `Runner`: JSON with keys in the order `address` (`host`, `port`),
//!   `groups`, `weight`, as Effect's `Runner.encodeSync` writes it.
//!
//! Numbers are accepted only in their canonical form (no sign on ports, no
//! leading zeros), so one value has exactly one string form and the strings
//! can be used as keys.

use std::fmt;

use serde_json::Value;

use super::{Runner, RunnerAddress, ShardId};
use crate::error::{Error, Result};
use crate::limits;

impl fmt::Display for RunnerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.group, self.id)
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

/// Whether `digits` is a canonical decimal: non-empty ASCII digits, no leading zero.
fn is_canonical_decimal(digits: &str) -> bool {
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'))
}

impl RunnerAddress {
    /// Parses `host:port` on the last `:`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the field `address` when it is empty,
    /// longer than 255 bytes, has no `:`, an empty host, or a port that is not
    /// a canonical integer in `0..=65535`.
    pub fn parse(address: &str) -> Result<Self> {
        if address.is_empty() {
            return Err(invalid("address is empty".into()));
        }
        if address.len() > limits::ADDRESS_BYTES_MAX {
            return Err(invalid(format!(
                "address is {} bytes, more than the {} allowed",
                address.len(),
                limits::ADDRESS_BYTES_MAX
            )));
        }
        let Some((host, port)) = address.rsplit_once(':') else {
            return Err(invalid(format!("address {address:?} is not host:port")));
        };
        if host.is_empty() {
            return Err(invalid(format!("address {address:?} has an empty host")));
        }
        let port = parse_port(port)
            .ok_or_else(|| invalid(format!("address {address:?} has a port that is not an integer in 0..=65535")))?;
        Ok(RunnerAddress { host: host.to_owned(), port })
    }
}

fn parse_port(port: &str) -> Option<u16> {
    if !is_canonical_decimal(port) || port.len() > 5 {
        return None;
    }
    port.parse::<u16>().ok()
}

impl ShardId {
    /// Parses `group:id` on the last `:`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the field `shard_id` when it is empty,
    /// longer than 255 bytes, has no `:`, or an id that is not a canonical integer.
    pub fn parse(shard_id: &str) -> Result<Self> {
        let (group, id) = split_shard_id(shard_id)?;
        let id = id.parse::<i64>().map_err(|_| invalid(format!("shard_id {shard_id:?} has an id out of range")))?;
        debug_assert!(id.to_string().len() <= 20, "split_shard_id admits only i64 ids");
        Ok(ShardId { group: group.to_owned(), id })
    }
}

/// Checks a shard id's string form without allocating; returns `(group, id digits)`.
///
/// # Errors
/// As [`ShardId::parse`].
pub fn split_shard_id(shard_id: &str) -> Result<(&str, &str)> {
    if shard_id.is_empty() {
        return Err(invalid("shard_id is empty".into()));
    }
    if shard_id.len() > limits::SHARD_ID_BYTES_MAX {
        return Err(invalid(format!(
            "shard_id is {} bytes, more than the {} allowed",
            shard_id.len(),
            limits::SHARD_ID_BYTES_MAX
        )));
    }
    let Some((group, id)) = shard_id.rsplit_once(':') else {
        return Err(invalid(format!("shard_id {shard_id:?} is not group:integer")));
    };
    let digits = id.strip_prefix('-').unwrap_or(id);
    if !is_canonical_decimal(digits) || id == "-0" || id.parse::<i64>().is_err() {
        return Err(invalid(format!("shard_id {shard_id:?} is not group:integer (a 64-bit integer id)")));
    }
    Ok((group, id))
}

/// Checks a cluster id: 1 to [`limits::CLUSTER_ID_BYTES_MAX`] bytes of
/// ASCII letters, digits and `-` (it travels in request metadata).
///
/// # Errors
/// [`Error::InvalidArgument`] naming the problem.
pub fn validate_cluster_id(cluster_id: &str) -> Result<()> {
    let valid = !cluster_id.is_empty()
        && cluster_id.len() <= limits::CLUSTER_ID_BYTES_MAX
        && cluster_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "cluster_id {cluster_id:?} must be 1 to {} ASCII letters, digits or '-'",
            limits::CLUSTER_ID_BYTES_MAX
        )))
    }
}

/// Checks the address argument of a call.
///
/// # Errors
/// As [`RunnerAddress::parse`].
pub fn validate_address(address: &str) -> Result<()> {
    RunnerAddress::parse(address).map(|_| ())
}

/// Checks a list of shard ids: count, then each id.
///
/// # Errors
/// [`Error::InvalidArgument`] when `require_non_empty` and the list is empty,
/// when it has more than 10,000 ids, or when an id is malformed.
pub fn validate_shard_ids(shard_ids: &[impl AsRef<str>], require_non_empty: bool) -> Result<()> {
    if require_non_empty && shard_ids.is_empty() {
        return Err(invalid("shard_ids is empty; acquire needs at least one".into()));
    }
    if shard_ids.len() > limits::SHARD_IDS_PER_CALL_MAX {
        return Err(invalid(format!(
            "shard_ids has {} ids, more than the {} allowed in one call",
            shard_ids.len(),
            limits::SHARD_IDS_PER_CALL_MAX
        )));
    }
    shard_ids.iter().try_for_each(|shard_id| split_shard_id(shard_id.as_ref()).map(|_| ()))
}

/// Checks a runner JSON against the address it is registered under: a JSON
/// object of at most 16 KiB whose `address` is `{host, port}` equal to `address`.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `runner` and what is wrong with it.
pub fn validate_runner_json(address: &RunnerAddress, runner_json: &str) -> Result<()> {
    if runner_json.len() > limits::RUNNER_JSON_BYTES_MAX {
        return Err(invalid(format!(
            "runner is {} bytes of JSON, more than the {} allowed",
            runner_json.len(),
            limits::RUNNER_JSON_BYTES_MAX
        )));
    }
    let probe: AddressMember = serde_json::from_str(runner_json).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => invalid("runner is not a JSON object".into()),
        _ => invalid(format!("runner is not valid JSON: {e}")),
    })?;
    let runner_address = probe
        .0
        .as_ref()
        .and_then(address_from_json)
        .ok_or_else(|| invalid("runner.address is not an object {host: string, port: integer}".into()))?;
    if &runner_address != address {
        return Err(invalid(format!("runner.address {runner_address} does not match the address argument {address}")));
    }
    Ok(())
}

/// The `address` member of a JSON object, read without building the rest:
/// the other members are parsed for syntax and skipped. Validation runs on
/// every register, on the leader twice (at the edge and in `apply`) and once
/// on each follower, and a `Value` of the whole runner costs an allocation
/// per key, string and array. As with `Value`, the last `address` counts.
struct AddressMember(Option<Value>);

impl<'de> serde::Deserialize<'de> for AddressMember {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
            type Value = AddressMember;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<AddressMember, A::Error> {
                let mut address = None;
                while let Some(IsAddressKey(is_address)) = map.next_key()? {
                    if is_address {
                        address = Some(map.next_value::<Value>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(AddressMember(address))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Whether a member name is `address`; compares in place, without a copy.
struct IsAddressKey(bool);

impl<'de> serde::Deserialize<'de> for IsAddressKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = IsAddressKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> std::result::Result<IsAddressKey, E> {
                Ok(IsAddressKey(name == "address"))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

fn address_from_json(value: &Value) -> Option<RunnerAddress> {
    let host = value.get("host")?.as_str()?;
    let port = u16::try_from(value.get("port")?.as_u64()?).ok()?;
    Some(RunnerAddress::new(host, port))
}

impl Runner {
    /// Effect's JSON encoding: `{"address":{"host":"h","port":1},"groups":["a"],"weight":1}`.
    pub fn to_json(&self) -> String {
        let host = Value::String(self.address.host.clone());
        let groups = Value::Array(self.groups.iter().cloned().map(Value::String).collect());
        format!(
            "{{\"address\":{{\"host\":{host},\"port\":{}}},\"groups\":{groups},\"weight\":{}}}",
            self.address.port,
            format_js_number(self.weight)
        )
    }

    /// Decodes Effect's JSON encoding of a runner.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the JSON is not a runner: missing or
    /// mistyped `address`, `groups` or `weight`, or a weight that is not finite.
    pub fn from_json(runner_json: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(runner_json).map_err(|e| invalid(format!("runner is not valid JSON: {e}")))?;
        let address = value
            .get("address")
            .and_then(address_from_json)
            .ok_or_else(|| invalid("runner.address is not an object {host: string, port: integer}".into()))?;
        let groups = value
            .get("groups")
            .and_then(Value::as_array)
            .and_then(|groups| groups.iter().map(|g| g.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| invalid("runner.groups is not an array of strings".into()))?;
        let weight = value
            .get("weight")
            .and_then(Value::as_f64)
            .filter(|w| w.is_finite())
            .ok_or_else(|| invalid("runner.weight is not a finite number".into()))?;
        Ok(Runner { address, groups, weight })
    }
}

/// Formats a finite number as JavaScript's `String(n)` does for the values
/// that matter here: integers without a fraction, others in shortest form.
fn format_js_number(n: f64) -> String {
    const JS_INTEGER_DIGITS_MAX: f64 = 1e21;
    if n == 0.0 {
        return "0".into(); // also -0, which JavaScript prints as 0
    }
    if n.fract() == 0.0 && n.abs() < JS_INTEGER_DIGITS_MAX {
        return format!("{n:.0}");
    }
    // serde_json prints the shortest round-tripping form, as JavaScript does.
    Value::from(n).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_encodes_with_effect_key_order() {
        let runner = Runner { address: RunnerAddress::new("h", 1), groups: vec!["a".into(), "b".into()], weight: 2.0 };
        assert_eq!(runner.to_json(), r#"{"address":{"host":"h","port":1},"groups":["a","b"],"weight":2}"#);
    }

    #[test]
    fn runner_round_trips() {
        for json in [
            r#"{"address":{"host":"h","port":1},"groups":["default"],"weight":1}"#,
            r#"{"address":{"host":"10.0.0.1","port":65535},"groups":[],"weight":0.5}"#,
            r#"{"address":{"host":"we\"ird\n","port":0},"groups":["a:b"],"weight":1.25}"#,
        ] {
            let runner = Runner::from_json(json).unwrap();
            assert_eq!(runner.to_json(), json);
        }
    }

    #[test]
    fn runner_rejects_non_runners() {
        for json in [
            r#"[]"#,
            r#"{"groups":[],"weight":1}"#,
            r#"{"address":{"host":"h","port":1},"groups":[1],"weight":1}"#,
            "nope",
        ] {
            assert!(matches!(Runner::from_json(json), Err(Error::InvalidArgument(_))), "{json}");
        }
    }

    #[test]
    fn address_parses_on_last_colon() {
        assert_eq!(RunnerAddress::parse("::1:8080").unwrap(), RunnerAddress::new("::1", 8080));
        assert_eq!(RunnerAddress::parse("h:0").unwrap().to_string(), "h:0");
        assert_eq!(RunnerAddress::new("a:b", 7).to_string(), "a:b:7");
    }

    #[test]
    fn address_rejects_malformed() {
        let long = format!("{}:1", "h".repeat(300));
        for bad in ["", "host", ":80", "h:", "h:65536", "h:-1", "h:08", "h:+8", "h:1x", long.as_str()] {
            let err = RunnerAddress::parse(bad).unwrap_err();
            assert!(err.to_string().contains("address"), "{bad}: {err}");
        }
    }

    #[test]
    fn shard_id_parses_on_last_colon() {
        assert_eq!(ShardId::parse("default:12").unwrap(), ShardId::new("default", 12));
        assert_eq!(ShardId::parse("a:b:3").unwrap(), ShardId::new("a:b", 3));
        assert_eq!(ShardId::parse(":3").unwrap().to_string(), ":3");
        assert_eq!(ShardId::parse("g:-4").unwrap().to_string(), "g:-4");
    }

    #[test]
    fn shard_id_rejects_malformed() {
        for bad in ["", "g", "g:", "g:x", "g:01", "g:-0", "g:1.5", "g:99999999999999999999", "g:9999999999999999999"] {
            assert!(split_shard_id(bad).is_err(), "{bad}");
            let err = ShardId::parse(bad).unwrap_err();
            assert!(err.to_string().contains("shard_id"), "{bad}: {err}");
        }
    }

    #[test]
    fn runner_json_must_match_address() {
        let address = RunnerAddress::new("h", 1);
        assert!(validate_runner_json(&address, r#"{"address":{"host":"h","port":1}}"#).is_ok());
        let err = validate_runner_json(&address, r#"{"address":{"host":"h","port":2}}"#).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        let err = validate_runner_json(&address, "[1]").unwrap_err();
        assert!(err.to_string().contains("not a JSON object"), "{err}");
    }

    /// The check before `AddressMember`: a `Value` of the whole runner.
    fn validate_runner_json_by_value(address: &RunnerAddress, runner_json: &str) -> bool {
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(runner_json) else { return false };
        object.get("address").and_then(address_from_json).is_some_and(|found| &found == address)
    }

    #[test]
    fn runner_json_check_agrees_with_a_whole_value_parse() {
        let address = RunnerAddress::new("h", 1);
        let fixed = [
            r#"{"address":{"host":"h","port":1},"groups":["default"],"weight":1}"#,
            r#"{"groups":[{"address":{"host":"h","port":1}}],"address":{"port":1,"host":"h","x":[]}}"#,
            r#"{"address":{"host":"x","port":1},"address":{"host":"h","port":1}}"#,
            r#"{"address":{"host":"h","port":1},"address":{"host":"x","port":1}}"#,
            r#"{"addr\u0065ss":{"host":"\u0068","port":1}}"#,
            r#"{"address":{"host":"h","port":1.0}}"#,
            r#"{"address":{"host":"h","port":65537}}"#,
            r#"{"address":{"host":"h","port":1}} x"#,
            r#"{"address":{"host":"h","port":1},}"#,
            r#"{"address":null}"#,
            r#"{"address":[]}"#,
            r#"{"address":{"host":"h","port":1}"#,
            r#" {"address" : {"host" : "h" , "port" : 1} } "#,
            "[1]",
            "[1",
            "null",
            "nope",
            "",
            "\"address\"",
        ];
        for json in fixed {
            let expected = validate_runner_json_by_value(&address, json);
            assert_eq!(validate_runner_json(&address, json).is_ok(), expected, "{json}");
        }
    }

    proptest::proptest! {
        #[test]
        fn runner_json_check_agrees_on_arbitrary_text(
            json in r#"[{}\[\]",:a-z0-9 .\\-]{0,40}"#,
            prefix in proptest::sample::select(vec!["", "{\"address\":{\"host\":\"h\",\"port\":1}", "{\"address\":", "{"]),
        ) {
            let json = format!("{prefix}{json}");
            let address = RunnerAddress::new("h", 1);
            proptest::prop_assert_eq!(
                validate_runner_json(&address, &json).is_ok(),
                validate_runner_json_by_value(&address, &json),
                "{}", json
            );
        }
    }

    #[test]
    fn js_numbers() {
        assert_eq!(format_js_number(1.0), "1");
        assert_eq!(format_js_number(-0.0), "0");
        assert_eq!(format_js_number(0.1), "0.1");
        assert_eq!(format_js_number(1e20), "100000000000000000000");
    }
}
