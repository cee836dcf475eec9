//! The key-values the rule or target gives the plugin.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::de::DeserializeOwned;

use crate::PluginError;

/// A plugin's configuration: string keys and values, as given by the rule
/// (filters, transformers) or the target (connectors). JSON values that are
/// not strings arrive in their JSON text form.
///
/// Every accessor that can fail returns [`PluginError::InvalidConfig`]
/// naming the key, so `?` reports a precise error to the user.
///
/// ```
/// use busbar_sdk::Config;
///
/// let config = Config::from_pairs([("threshold", "100"), ("field", "/total")]);
/// assert_eq!(config.get("field"), Some("/total"));
/// assert_eq!(config.parse::<u32>("threshold").unwrap(), Some(100));
/// assert!(config.require("missing").is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: BTreeMap<String, String>,
}

impl Config {
    /// A configuration with the given pairs; a later pair with the same key
    /// wins.
    ///
    /// ```
    /// let config = busbar_sdk::Config::from_pairs([("a", "1"), ("a", "2")]);
    /// assert_eq!(config.get("a"), Some("2"));
    /// ```
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            entries: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The value of `key`, if present.
    ///
    /// ```
    /// assert_eq!(busbar_sdk::Config::default().get("x"), None);
    /// ```
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// The value of `key`, which must be present and not empty.
    ///
    /// ```
    /// let config = busbar_sdk::Config::from_pairs([("url", ""), ("secret", "s")]);
    /// assert!(config.require("url").is_err());
    /// assert_eq!(config.require("secret").unwrap(), "s");
    /// ```
    pub fn require(&self, key: &str) -> Result<&str, PluginError> {
        match self.get(key) {
            Some(value) if !value.trim().is_empty() => Ok(value),
            Some(_) => Err(PluginError::invalid_config(format!(
                "`{key}` must not be empty"
            ))),
            None => Err(PluginError::invalid_config(format!("`{key}` is required"))),
        }
    }

    /// The value of `key` parsed as `T`, or `None` when absent.
    ///
    /// ```
    /// let config = busbar_sdk::Config::from_pairs([("n", "x")]);
    /// assert!(config.parse::<u8>("n").is_err());
    /// assert_eq!(config.parse::<u8>("m").unwrap(), None);
    /// ```
    pub fn parse<T>(&self, key: &str) -> Result<Option<T>, PluginError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.get(key)
            .map(|raw| {
                raw.trim().parse().map_err(|e| {
                    PluginError::invalid_config(format!("`{key}` = {raw:?} is invalid: {e}"))
                })
            })
            .transpose()
    }

    /// The value of `key` parsed as `T`, or `default` when absent.
    ///
    /// ```
    /// let config = busbar_sdk::Config::from_pairs([("n", "3")]);
    /// assert_eq!(config.parse_or("n", 1u8).unwrap(), 3);
    /// assert_eq!(config.parse_or("m", 1u8).unwrap(), 1);
    /// ```
    pub fn parse_or<T>(&self, key: &str, default: T) -> Result<T, PluginError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        Ok(self.parse(key)?.unwrap_or(default))
    }

    /// The value of `key`, which must be present, parsed as `T`.
    ///
    /// ```
    /// let config = busbar_sdk::Config::from_pairs([("n", "3")]);
    /// assert_eq!(config.require_parsed::<u8>("n").unwrap(), 3);
    /// assert!(config.require_parsed::<u8>("m").is_err());
    /// ```
    pub fn require_parsed<T>(&self, key: &str) -> Result<T, PluginError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.require(key)?;
        self.parse(key)?
            .ok_or_else(|| PluginError::invalid_config(format!("`{key}` is required")))
    }

    /// The value of `key` parsed as JSON into `T`, or `None` when absent.
    ///
    /// ```
    /// let config = busbar_sdk::Config::from_pairs([("fields", r#"["email", "phone"]"#)]);
    /// let fields: Vec<String> = config.json("fields").unwrap().unwrap();
    /// assert_eq!(fields, ["email", "phone"]);
    /// ```
    pub fn json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, PluginError> {
        self.get(key)
            .map(|raw| {
                serde_json::from_str(raw).map_err(|e| {
                    PluginError::invalid_config(format!("`{key}` is not the expected JSON: {e}"))
                })
            })
            .transpose()
    }

    /// Every (key, value) pair, sorted by key.
    ///
    /// ```
    /// let config = busbar_sdk::Config::from_pairs([("b", "2"), ("a", "1")]);
    /// let keys: Vec<&str> = config.iter().map(|(k, _)| k).collect();
    /// assert_eq!(keys, ["a", "b"]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of keys.
    ///
    /// ```
    /// assert_eq!(busbar_sdk::Config::from_pairs([("a", "1")]).len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no keys.
    ///
    /// ```
    /// assert!(busbar_sdk::Config::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Config {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::from_pairs(iter)
    }
}
