//! Engine events, as dockerd's `/events` streams them: what happened to which object
//! (`container start`, `image pull`, `volume create`, ...), kept in a short ring for `since`
//! queries and fanned out live to subscribers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::broadcast;

/// One event.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// `container`, `image`, `volume` or `network`.
    #[serde(rename = "Type")]
    pub kind: &'static str,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: Actor,
    pub scope: &'static str,
    pub time: i64,
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Actor {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

const KEEP: usize = 1024;

/// The event log and its live subscribers.
#[derive(Debug)]
pub struct Events {
    recent: Mutex<VecDeque<Event>>,
    live: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events { recent: Mutex::new(VecDeque::with_capacity(KEEP)), live: broadcast::channel(KEEP).0 }
    }
}

impl Events {
    /// Records an event about `id` with `attributes`.
    pub fn emit(&self, kind: &'static str, action: &str, id: &str, attributes: &[(&str, &str)]) {
        let now = time::OffsetDateTime::now_utc();
        let nanos = now.unix_timestamp_nanos() as i64;
        let event = Event {
            kind,
            action: action.to_owned(),
            actor: Actor {
                id: id.to_owned(),
                attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            },
            scope: "local",
            time: nanos / 1_000_000_000,
            time_nano: nanos,
        };
        let mut recent = self.recent.lock().expect("events lock");
        if recent.len() == KEEP {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        drop(recent);
        let _ = self.live.send(event);
    }

    /// How many clients follow the stream now.
    pub fn listeners(&self) -> usize {
        self.live.receiver_count()
    }

    /// Subscribes, and returns the kept events at or after `since_nanos` (for `--since`).
    pub fn subscribe(&self, since_nanos: Option<i64>) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let recent = self.recent.lock().expect("events lock");
        let rx = self.live.subscribe();
        let past = match since_nanos {
            Some(s) => recent.iter().filter(|e| e.time_nano >= s).cloned().collect(),
            None => vec![],
        };
        (past, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_events_are_replayed_from_since() {
        let e = Events::default();
        e.emit("container", "create", "abc", &[("name", "x")]);
        let (past, mut rx) = e.subscribe(Some(0));
        assert_eq!(past.len(), 1);
        assert_eq!(past[0].actor.attributes["name"], "x");
        e.emit("container", "start", "abc", &[]);
        assert_eq!(rx.try_recv().unwrap().action, "start");
        assert!(e.subscribe(None).0.is_empty());
    }
}
