//! Where a value comes from (defaults < TOML file < environment < flags) and the
//! parsers that name the key a bad value came from.

use std::path::Path;

use super::ConfigError;

/// One raw value and where it came from, so errors name the key the operator wrote.
pub(super) struct Raw {
    pub(super) key: String,
    pub(super) value: String,
}

/// Collects raw values layer by layer, then validates them.
pub(super) struct Layers<'a> {
    pub(super) file: Option<&'a Path>,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
}

impl Layers<'_> {
    /// Env var wins over the file value, which wins over nothing.
    pub(super) fn pick(
        &self,
        env_key: &str,
        file_key: &str,
        file_value: Option<String>,
    ) -> Option<Raw> {
        if let Some(v) = (self.env)(env_key) {
            return Some(Raw {
                key: env_key.to_owned(),
                value: v,
            });
        }
        file_value.map(|value| Raw {
            key: format!(
                "{file_key} in {}",
                self.file
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
            value,
        })
    }
}

pub(super) fn toml_scalar(v: Option<toml::Value>) -> Option<String> {
    v.map(|v| match v {
        toml::Value::String(s) => s,
        other => other.to_string(),
    })
}

pub(super) fn err(key: &str, problem: impl Into<String>, expected: &str) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        problem: problem.into(),
        expected: expected.to_owned(),
    }
}

pub(super) fn parse_num<T>(
    raw: Option<Raw>,
    default: T,
    min: T,
    max: T,
    expected: &str,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + Copy,
{
    let Some(raw) = raw else { return Ok(default) };
    let v: T = raw.value.trim().parse().map_err(|_| {
        err(
            &raw.key,
            format!("{:?} is not a whole number", raw.value),
            expected,
        )
    })?;
    if v < min || v > max {
        return Err(err(
            &raw.key,
            format!("{} is out of range", raw.value),
            expected,
        ));
    }
    Ok(v)
}

/// A comma-separated list of CIDR ranges (empty when unset).
pub(super) fn parse_cidrs(
    raw: Option<Raw>,
    expected: &str,
) -> Result<Vec<crate::net::Cidr>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    raw.value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            crate::net::Cidr::parse(part).ok_or_else(|| {
                err(
                    &raw.key,
                    format!("{part:?} is not an address range"),
                    expected,
                )
            })
        })
        .collect()
}

pub(super) fn parse_bool(raw: Option<Raw>, default: bool) -> Result<bool, ConfigError> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(err(
            &raw.key,
            format!("{:?} is not a yes/no value", raw.value),
            "true or false",
        )),
    }
}
