//! Sender names and profile links from `users.get`, cached.
//!
//! Lookups from concurrent requests are gathered into one call (up to
//! [`IDS_PER_CALL`] ids), so a burst of messages from many people costs a
//! few calls, not one each, and stays under the rate limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leadgate_connector::Inbound;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::api::{ApiError, VkApi};
use crate::event::vk_fields;

/// users.get takes up to 1000 ids; fewer keeps answers small.
const IDS_PER_CALL: usize = 200;
/// Names change rarely; a day-old one is fine on a lead.
const CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
const CACHE_MAX: usize = 100_000;
/// After an authorization failure, how long callback lookups stay off
/// instead of repeating a call that cannot succeed.
const AUTH_PAUSE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: Option<String>,
    pub url: String,
}

impl Profile {
    fn from_user(user: &Value) -> Option<(i64, Profile)> {
        let id = user.get("id")?.as_i64()?;
        let part = |k: &str| {
            user.get(k)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let name = match (part("first_name"), part("last_name")) {
            (Some(f), Some(l)) => Some(format!("{f} {l}")),
            (Some(one), None) | (None, Some(one)) => Some(one.to_owned()),
            (None, None) => None,
        };
        let url = match part("screen_name") {
            Some(screen) => format!("https://vk.com/{screen}"),
            None => format!("https://vk.com/id{id}"),
        };
        Some((id, Profile { name, url }))
    }

    /// Put the name and link on an item from this user.
    pub fn apply(&self, inbound: &mut Inbound) {
        if inbound.sender.name.is_none() {
            inbound.sender.name = self.name.clone();
        }
        inbound
            .fields
            .insert(vk_fields::PROFILE_URL.into(), self.url.clone());
    }
}

type Answer = Result<HashMap<i64, Profile>, ApiError>;

struct Lookup {
    ids: Vec<i64>,
    reply: oneshot::Sender<Answer>,
}

/// A handle to one channel's lookup task; the task ends with the last
/// handle.
#[derive(Clone)]
pub struct Profiles {
    tx: mpsc::Sender<Lookup>,
}

impl Profiles {
    /// Start the lookup task (needs a Tokio runtime).
    pub fn spawn(api: Arc<VkApi>) -> Profiles {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(serve(api, rx));
        Profiles { tx }
    }

    /// Profiles of these users. An error is the API's (after retries of
    /// 6/10); callers decide whether to go on without names.
    pub async fn lookup(&self, ids: Vec<i64>) -> Answer {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Lookup { ids, reply })
            .await
            .map_err(|_| ApiError::Network("name lookup stopped".into()))?;
        answer
            .await
            .map_err(|_| ApiError::Network("name lookup stopped".into()))?
    }
}

struct Cache {
    entries: HashMap<i64, (Profile, Instant)>,
}

impl Cache {
    fn get(&self, id: i64) -> Option<&Profile> {
        self.entries
            .get(&id)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(p, _)| p)
    }

    fn put(&mut self, id: i64, profile: Profile) {
        if self.entries.len() >= CACHE_MAX {
            self.entries.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            if self.entries.len() >= CACHE_MAX {
                self.entries.clear();
            }
        }
        self.entries.insert(id, (profile, Instant::now()));
    }
}

async fn serve(api: Arc<VkApi>, mut rx: mpsc::Receiver<Lookup>) {
    let mut cache = Cache {
        entries: HashMap::new(),
    };
    let mut auth_failed: Option<(Instant, ApiError)> = None;
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let mut missing: Vec<i64> = waiting
            .iter()
            .flat_map(|l| l.ids.iter().copied())
            .filter(|id| cache.get(*id).is_none())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let mut failure = None;
        if let Some((at, e)) = &auth_failed {
            if at.elapsed() < AUTH_PAUSE {
                failure = (!missing.is_empty()).then(|| e.clone());
            } else {
                auth_failed = None;
            }
        }
        if failure.is_none() {
            for chunk in missing.chunks(IDS_PER_CALL) {
                match fetch(&api, chunk).await {
                    Ok(found) => {
                        for (id, p) in found {
                            cache.put(id, p);
                        }
                    }
                    Err(e) => {
                        if e.is_auth() {
                            auth_failed = Some((Instant::now(), e.clone()));
                        }
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        for lookup in waiting {
            let known: HashMap<i64, Profile> = lookup
                .ids
                .iter()
                .filter_map(|id| Some((*id, cache.get(*id)?.clone())))
                .collect();
            let answer = match &failure {
                Some(e) if known.len() < lookup.ids.len() => Err(e.clone()),
                _ => Ok(known),
            };
            let _ = lookup.reply.send(answer);
        }
    }
}

async fn fetch(api: &VkApi, ids: &[i64]) -> Result<Vec<(i64, Profile)>, ApiError> {
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let response = api
        .call(
            "users.get",
            &[("user_ids", list), ("fields", "screen_name".into())],
        )
        .await?;
    let users = response
        .as_array()
        .ok_or_else(|| ApiError::Malformed("users.get: `response` is not an array".into()))?;
    Ok(users.iter().filter_map(Profile::from_user).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_links_from_users_get() {
        let answer: Value = serde_json::from_str(
            r#"[{"id": 700000001, "first_name": "Фёдор", "last_name": "Белов", "can_access_closed": true, "is_closed": false},
                {"id": 5, "first_name": "", "last_name": "", "screen_name": "durov"}]"#,
        )
        .unwrap();
        let list = answer.as_array().unwrap();
        let (id, p) = Profile::from_user(&list[0]).unwrap();
        assert_eq!(id, 700000001);
        assert_eq!(p.name.as_deref(), Some("Фёдор Белов"));
        assert_eq!(p.url, "https://vk.com/id700000001");
        let (_, p) = Profile::from_user(&list[1]).unwrap();
        assert_eq!(p.name, None);
        assert_eq!(p.url, "https://vk.com/durov");
        assert!(Profile::from_user(&serde_json::json!({"first_name": "x"})).is_none());
    }
}
