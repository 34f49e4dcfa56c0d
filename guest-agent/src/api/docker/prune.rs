//! The filters of the prune endpoints, as dockerd 20.10 takes them: `until` (a timestamp, Unix
//! seconds or a Go duration back from now: objects created before it go), `label` and
//! `label!` (`key` or `key=value`); per endpoint also `dangling` (images) and `all` (volumes).
//! An unknown key is refused, as dockerd refuses it.

use std::collections::BTreeMap;

use serde_json::Value;

use super::containers::filter_values;
use super::{ApiError, Query};

/// What a prune request keeps out.
#[derive(Debug, Default)]
pub struct PruneFilter {
    /// Unix seconds: only what was created before goes.
    pub until: Option<i64>,
    pub labels: Vec<String>,
    pub not_labels: Vec<String>,
    pub filters: Value,
}

/// Whether `labels` have `want`: a key, or `key=value`.
pub(super) fn label_matches(labels: &BTreeMap<String, String>, want: &str) -> bool {
    match want.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
        None => labels.contains_key(want),
    }
}

/// `until`'s value in Unix seconds.
fn until_of(s: &str) -> Option<i64> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Some(ns) = berth_runtime::model::go_duration(s)
        && s.chars().last().is_some_and(|c| c.is_ascii_alphabetic())
    {
        return Some(now - ns / 1_000_000_000);
    }
    if let Ok(n) = s.split('.').next().unwrap_or(s).parse::<i64>() {
        return Some(n);
    }
    if let Some(t) = berth_runtime::model::parse_time(s) {
        return Some(t.unix_timestamp());
    }
    let date = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &date).ok().map(|d| d.midnight().assume_utc().unix_timestamp())
}

impl PruneFilter {
    /// Parses `filters`, allowing `allowed` keys besides `until`, `label` and `label!`.
    pub fn parse(q: &Query, allowed: &[&str]) -> Result<PruneFilter, ApiError> {
        let filters = super::filters(q)?;
        if let Some(map) = filters.as_object() {
            for key in map.keys() {
                if !["until", "label", "label!"].contains(&key.as_str()) && !allowed.contains(&key.as_str()) {
                    return Err(ApiError::invalid(format!("Invalid filter '{key}'")));
                }
            }
        }
        let until = match filter_values(&filters, "until").first() {
            Some(u) => Some(until_of(u).ok_or_else(|| ApiError::invalid(format!("invalid filter 'until={u}'")))?),
            None => None,
        };
        Ok(PruneFilter {
            until,
            labels: filter_values(&filters, "label"),
            not_labels: filter_values(&filters, "label!"),
            filters,
        })
    }

    /// Whether an object created at `created` (RFC 3339) with `labels` may be pruned.
    pub fn selects(&self, created: &str, labels: &BTreeMap<String, String>) -> bool {
        if let Some(until) = self.until {
            let t = berth_runtime::model::parse_time(created).map(|t| t.unix_timestamp()).unwrap_or(0);
            if t >= until {
                return false;
            }
        }
        self.labels.iter().all(|l| label_matches(labels, l))
            && !self.not_labels.iter().any(|l| label_matches(labels, l))
    }

    /// A boolean filter (`dangling`, `all`): `Some(true)` for `true`/`1`.
    pub fn flag(&self, key: &str) -> Option<bool> {
        filter_values(&self.filters, key).first().map(|v| v == "true" || v == "1")
    }
}
